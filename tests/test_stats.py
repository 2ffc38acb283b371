"""lib/stats.py: the bootstrap interval and the verdicts drawn from it."""
import numpy as np
import pytest

from lib import stats


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.3, 1.0, 25), rng.normal(0.3, 1.0, 2500)
    lo_s, hi_s = stats.bootstrap_ci(small)
    lo_l, hi_l = stats.bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5  # ~ 1/sqrt(n): 10x narrower for 100x the values
    # ~ 1.96 standard errors each side for a normal mean
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * large.std() / np.sqrt(len(large)), rel=0.1)


def test_bootstrap_is_seeded_drops_nans_and_takes_other_statistics():
    x = [1.0, 2.0, float("nan"), 4.0, 8.0]
    assert stats.bootstrap_ci(x, seed=3) == stats.bootstrap_ci(x, seed=3)
    y = np.random.default_rng(0).normal(size=30)
    assert stats.bootstrap_ci(y, seed=3) != stats.bootstrap_ci(y, seed=4)
    lo, hi = stats.bootstrap_ci(x, stat=np.median)
    assert 1.0 <= lo <= hi <= 8.0
    assert all(np.isnan(stats.bootstrap_ci([5.0])))  # one value: no interval, so no verdict either
    assert all(np.isnan(stats.bootstrap_ci([float("nan")])))
    assert stats.mean_ci(x)["n"] == 4 and stats.mean_ci(x)["mean"] == pytest.approx(3.75)
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_ci(x, level=95)


@pytest.mark.parametrize("lo, hi, expected, said", [
    (0.1, 0.4, "positive", "as the paper, beyond the interval"),
    (-0.4, -0.1, "positive", "reversed, beyond the interval"),
    (-0.4, -0.1, "negative", "as the paper, beyond the interval"),
    (-0.1, 0.4, "positive", "cannot be told at this scale"),
    (float("nan"), float("nan"), "positive", "cannot be told at this scale"),
])
def test_verdicts(lo, hi, expected, said):
    assert stats.verdict(lo, hi, expected) == said


def test_direction_rejects_a_reversed_interval():
    with pytest.raises(ValueError, match="reversed"):
        stats.direction(0.5, 0.1)
