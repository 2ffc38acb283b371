"""JIC alpha/beta trait-convergence filtering of journal entries and authors, and author pairing for dialogues.

The JIC paper filters its journal corpus with two thresholds on classifier trait probabilities but never released
the code, so this module is our interpretation, stated precisely:
- Input: per-entry trait probabilities P (n x 5, TRAITS order O C E A N) and each entry's author id.
- Scale: each trait is divided by its global standard deviation across all input entries (population SD), so a
  distance of 1 means "one SD of that trait". A trait with zero SD carries no information and is left out of the
  distances (listed in stats["constant_traits"]).
- alpha (entry convergence): an entry's deviation is the RMS over traits of the z-distance between the entry and its
  author's mean profile (mean over all of the author's input entries). Entries with deviation <= alpha are kept;
  alpha=None or inf disables the filter. Small alpha = keep only entries that agree with the author's usual profile.
- min_entries: authors left with fewer than `min_entries` alpha-kept entries are dropped entirely.
- beta (author distinctiveness): the author's mean profile, recomputed on the alpha-kept entries, is compared with
  the global mean profile of all input entries (a fixed reference, so beta means the same at every alpha) by the
  same RMS z-distance. Authors with deviation >= beta are kept; beta=0 keeps all.
Entry drops are counted by reason in stats["reasons"] ("alpha", "min_entries", "beta").
`grid` sweeps alpha x beta for the dataset-size figure; `pair_authors` draws the author pairs the teacher LLM writes
dialogues for.
"""
from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np
import pandas as pd

from lib.traits import TRAITS

log = logging.getLogger(__name__)


def _check(author_ids, P) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and values; return (author ids as object array, P as float array)."""
    P = np.asarray(P, dtype=float)
    ids = np.asarray(list(author_ids), dtype=object)
    if P.ndim != 2:
        raise ValueError(f"P must be 2-D (n entries x traits), got shape {P.shape}")
    if len(ids) != len(P):
        raise ValueError(f"{len(ids)} author ids but {len(P)} rows of trait probabilities")
    if not np.isfinite(P).all():
        rows = sorted(set(np.nonzero(~np.isfinite(P))[0].tolist()))[:10]
        raise ValueError(f"P has non-finite values in rows {rows}")
    return ids, P


def author_profiles(author_ids, P) -> dict:
    """Mean trait-probability vector per author (the author's profile)."""
    ids, P = _check(author_ids, P)
    return {a: P[ids == a].mean(axis=0) for a in dict.fromkeys(ids.tolist())}


def trait_profiles(author_ids, P, threshold: float) -> dict:
    """Each author's profile as 04_filter writes it: {"mean": {trait: p}, "high": {trait: 0|1}} with high = mean >=
    the classifier's threshold (12_eval scores trait capture against "high")."""
    return {a: {"mean": dict(zip(TRAITS, map(float, v))), "high": dict(zip(TRAITS, (int(x >= threshold) for x in v)))}
            for a, v in author_profiles(author_ids, P).items()}


def _rms(diff: np.ndarray) -> np.ndarray:
    """Root mean square over the last axis (traits)."""
    return np.sqrt(np.mean(diff ** 2, axis=-1))


def alpha_beta_filter(author_ids, P, alpha: float | None, beta: float, min_entries: int = 1) -> tuple[np.ndarray, dict]:
    """Keep entries close to their author's profile (alpha) of authors far from the average profile (beta)."""
    ids, P = _check(author_ids, P)
    if len(P) == 0:
        raise ValueError("alpha_beta_filter: no entries")
    if alpha is not None and alpha < 0:
        raise ValueError(f"alpha must be >= 0 or None, got {alpha}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    sd = P.std(axis=0)
    informative = sd > 0
    Z = P[:, informative] / sd[informative]
    authors = list(dict.fromkeys(ids.tolist()))
    reasons: Counter = Counter()
    keep = np.ones(len(P), dtype=bool)

    if alpha is not None and not math.isinf(alpha):
        for a in authors:
            rows = ids == a
            dev = _rms(Z[rows] - Z[rows].mean(axis=0))
            keep[np.nonzero(rows)[0][dev > alpha]] = False
        reasons["alpha"] = int((~keep).sum())

    global_mean = Z.mean(axis=0)
    author_dev: dict = {}
    kept_authors = []
    for a in authors:
        rows = (ids == a) & keep
        n_left = int(rows.sum())
        if n_left < max(min_entries, 1):
            reasons["min_entries"] += n_left
            keep[rows] = False
            continue
        author_dev[a] = float(_rms(Z[rows].mean(axis=0) - global_mean)) if Z.shape[1] else 0.0
        if author_dev[a] >= beta:
            kept_authors.append(a)
        else:
            reasons["beta"] += n_left
            keep[rows] = False
    stats = {
        "n_entries_in": len(P), "n_entries_out": int(keep.sum()),
        "n_authors_in": len(authors), "n_authors_out": len(kept_authors),
        "reasons": reasons, "author_deviation": author_dev,
        "constant_traits": [int(j) for j in np.nonzero(~informative)[0]],
    }
    log.info("alpha=%s beta=%s: kept %d/%d entries, %d/%d authors; dropped %s", alpha, beta, stats["n_entries_out"],
             stats["n_entries_in"], stats["n_authors_out"], stats["n_authors_in"], dict(reasons))
    return keep, stats


def grid(author_ids, P, alphas, betas, min_entries: int = 1) -> pd.DataFrame:
    """Dataset size (entries, authors) left at every (alpha, beta) combination."""
    rows = []
    for alpha in alphas:
        for beta in betas:
            _, st = alpha_beta_filter(author_ids, P, alpha, beta, min_entries)
            # alpha=None (disabled) is recorded as inf, which means the same and survives pandas' float column.
            rows.append({"alpha": math.inf if alpha is None else alpha, "beta": beta, "n_entries": st["n_entries_out"],
                         "n_authors": st["n_authors_out"]})
    return pd.DataFrame(rows, columns=["alpha", "beta", "n_entries", "n_authors"])


def pair_authors(authors, n_pairs: int, seed: int = 0, max_pairs_per_author: int | None = None) -> list[tuple]:
    """Distinct unordered author pairs with balanced usage, deterministic in `seed`.

    Round-robin (circle method) over a seeded shuffle of the authors: each full round is a perfect matching, so after
    r rounds every author is in r pairs (r or r-1 with an odd count) and no pair repeats. The last, partial round
    takes the pairs whose authors are least used so far. Who speaks first is drawn at random per pair.
    """
    uniq = list(dict.fromkeys(authors))
    if len(uniq) < 2:
        raise ValueError(f"pair_authors needs at least 2 distinct authors, got {len(uniq)}")
    if n_pairs < 0:
        raise ValueError(f"n_pairs must be >= 0, got {n_pairs}")
    m = len(uniq)
    cap = max_pairs_per_author if max_pairs_per_author is not None else m - 1
    possible = min(m * (m - 1) // 2, (m * cap) // 2)
    if n_pairs > possible:
        raise ValueError(f"asked for {n_pairs} pairs but {m} authors allow at most {possible} distinct pairs"
                         f" (max_pairs_per_author={max_pairs_per_author})")
    rng = np.random.default_rng(seed)
    order: list = [uniq[i] for i in rng.permutation(m)]
    if m % 2:
        order.append(None)  # the "bye": its partner sits this round out
    usage = Counter()
    pairs: list[tuple] = []
    for _ in range(len(order) - 1):
        if len(pairs) >= n_pairs:
            break
        half = len(order) // 2
        round_pairs = [(order[i], order[-1 - i]) for i in range(half)
                       if order[i] is not None and order[-1 - i] is not None]
        round_pairs = [p for p in round_pairs if usage[p[0]] < cap and usage[p[1]] < cap]
        need = n_pairs - len(pairs)
        if need < len(round_pairs):
            # Partial round: least-used authors first, random among equals.
            keys = rng.random(len(round_pairs))
            load = [usage[a] + usage[b] for a, b in round_pairs]
            idx = sorted(range(len(round_pairs)), key=lambda i: (load[i], keys[i]))
            round_pairs = [round_pairs[i] for i in sorted(idx[:need])]
        for a, b in round_pairs:
            usage[a] += 1
            usage[b] += 1
            pairs.append((a, b) if rng.random() < 0.5 else (b, a))
        order = [order[0], order[-1]] + order[1:-1]  # rotate all but the first seat
    if len(pairs) < n_pairs:
        raise ValueError(f"could only form {len(pairs)} of {n_pairs} pairs from {m} authors with "
                         f"max_pairs_per_author={max_pairs_per_author}")
    return pairs
