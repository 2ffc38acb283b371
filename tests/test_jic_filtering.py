"""lib/jic/filtering.py: alpha/beta filtering on a crafted 3-author example with hand-computed deviations; author pairing."""
import math
from collections import Counter

import numpy as np
import pytest

from lib.jic.filtering import alpha_beta_filter, author_profiles, grid, pair_authors

# Each entry's first four traits share one value v (tenths); trait N is constant and so ignored.
# v: A = 8, 8, 8, 0 (last is an outlier); B = 5, 5, 5; C = 9, 9.
# Global mean 57/9, population SD sqrt(612)/9, so one tenth = 9/sqrt(612) z-units.
V = [8, 8, 8, 0, 5, 5, 5, 9, 9]
IDS = ["A"] * 4 + ["B"] * 3 + ["C"] * 2
P = np.array([[v / 10] * 4 + [0.5] for v in V])
SD = math.sqrt(612) / 9  # in tenths
# alpha deviations: A's normal entries |8 - 6| / SD = 0.728, A's outlier 6 / SD = 2.18, B and C 0.
# beta deviations after alpha=1 (A mean 8): A 15/sqrt(612) = 0.606, B 12/sqrt(612) = 0.485, C 24/sqrt(612) = 0.970.
# beta deviation of A without alpha (A mean 6): 3/sqrt(612) = 0.121.


def mask(*idx):
    m = np.zeros(len(V), dtype=bool)
    m[list(idx)] = True
    return m.tolist()


def test_no_filtering_keeps_everything():
    keep, st = alpha_beta_filter(IDS, P, alpha=None, beta=0.0)
    assert keep.all() and st["n_authors_out"] == 3 and st["constant_traits"] == [4]
    assert alpha_beta_filter(IDS, P, alpha=math.inf, beta=0.0)[0].all()


def test_alpha_drops_only_the_outlier():
    keep, st = alpha_beta_filter(IDS, P, alpha=1.0, beta=0.0)
    assert keep.tolist() == mask(0, 1, 2, 4, 5, 6, 7, 8)
    assert st["reasons"] == Counter({"alpha": 1})
    assert st["author_deviation"]["A"] == pytest.approx(15 / math.sqrt(612))
    assert st["author_deviation"]["B"] == pytest.approx(12 / math.sqrt(612))
    assert st["author_deviation"]["C"] == pytest.approx(24 / math.sqrt(612))


def test_alpha_then_beta():
    keep, st = alpha_beta_filter(IDS, P, alpha=1.0, beta=0.5)
    assert keep.tolist() == mask(0, 1, 2, 7, 8)
    assert st["reasons"] == Counter({"alpha": 1, "beta": 3})
    assert (st["n_entries_in"], st["n_entries_out"], st["n_authors_in"], st["n_authors_out"]) == (9, 5, 3, 2)
    keep, _ = alpha_beta_filter(IDS, P, alpha=1.0, beta=0.8)
    assert keep.tolist() == mask(7, 8)


def test_beta_without_alpha_uses_all_entries():
    keep, st = alpha_beta_filter(IDS, P, alpha=None, beta=0.5)
    assert keep.tolist() == mask(7, 8)  # A's outlier pulls its mean to 6, close to the global mean
    assert st["author_deviation"]["A"] == pytest.approx(3 / math.sqrt(612))


def test_min_entries_drops_small_authors():
    keep, st = alpha_beta_filter(IDS, P, alpha=1.0, beta=0.5, min_entries=3)
    assert keep.tolist() == mask(0, 1, 2)
    assert st["reasons"] == Counter({"alpha": 1, "min_entries": 2, "beta": 3})


def test_grid_and_profiles():
    df = grid(IDS, P, alphas=[None, 1.0], betas=[0.0, 0.5])
    assert df.to_dict("list") == {"alpha": [math.inf, math.inf, 1.0, 1.0], "beta": [0.0, 0.5, 0.0, 0.5],
                                  "n_entries": [9, 2, 8, 5], "n_authors": [3, 1, 3, 2]}
    prof = author_profiles(IDS, P)
    assert list(prof) == ["A", "B", "C"]
    np.testing.assert_allclose(prof["A"], [0.6, 0.6, 0.6, 0.6, 0.5])


def test_filter_rejects_bad_input():
    with pytest.raises(ValueError, match="8 author ids but 9 rows"):
        alpha_beta_filter(IDS[:8], P, 1.0, 0.0)
    bad = P.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="rows \\[2\\]"):
        alpha_beta_filter(IDS, bad, 1.0, 0.0)


def test_pair_authors_balanced_distinct_deterministic():
    authors = [f"u{i}" for i in range(6)]
    pairs = pair_authors(authors, 6, seed=1)
    assert len(pairs) == 6 and len({frozenset(p) for p in pairs}) == 6
    assert all(a != b for a, b in pairs)
    assert Counter(x for p in pairs for x in p) == Counter({a: 2 for a in authors})
    assert pair_authors(authors, 6, seed=1) == pairs
    assert pair_authors(authors, 6, seed=2) != pairs
    every = pair_authors(authors, 15, seed=0)
    assert {frozenset(p) for p in every} == {frozenset((a, b)) for a in authors for b in authors if a < b}


def test_pair_authors_odd_count_and_limits():
    authors = [f"u{i}" for i in range(7)]
    usage = Counter(x for p in pair_authors(authors, 9, seed=0) for x in p)
    assert sum(usage.values()) == 18 and max(usage.values()) - min(usage.values()) <= 1
    assert len(pair_authors(authors, 3, seed=0, max_pairs_per_author=1)) == 3
    with pytest.raises(ValueError, match="at most 3 distinct pairs"):
        pair_authors(authors, 4, seed=0, max_pairs_per_author=1)
    with pytest.raises(ValueError, match="at most 21 distinct pairs"):
        pair_authors(authors, 22)
    with pytest.raises(ValueError, match="at least 2 distinct authors"):
        pair_authors(["solo", "solo"], 1)
