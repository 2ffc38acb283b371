"""Intervals for the effects the notebooks report: a seeded percentile bootstrap, and what an interval lets one say.

    lo, hi = bootstrap_ci(values)             # 95 % interval of the mean, 2,000 resamples, seed 0
    summary = mean_ci(differences)            # {"mean", "lo", "hi", "n"}
    direction(summary["lo"], summary["hi"])   # "positive" | "negative" | "cannot tell"
    interval_text(summary)                    # "+0.120 [+0.030, +0.210]", as the tables print it

The resampling unit is whatever `values` holds one entry per: a test dialogue, a scenario, a seed x context. Pass
paired differences (e.g. high-level minus low-level score of the same scenario) to get the interval of an effect.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

DIRECTIONS = ("positive", "negative", "cannot tell")


def percentile_interval(replicates: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates (NaNs left out); (nan, nan) when none is left. For callers
    that draw their own resamples (lib.metrics resamples whole dialogues, paired across systems)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x = np.asarray(replicates, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    lo, hi = np.quantile(x, [tail, 1 - tail])
    return float(lo), float(hi)


def bootstrap_ci(values: Sequence[float], stat: Callable = np.mean, n_resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of `stat` over `values` (NaNs dropped); (nan, nan) for fewer than two values,
    where there is no spread to resample (a verdict from it is then "cannot tell")."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    resamples = x[rng.integers(0, len(x), size=(n_resamples, len(x)))]
    stats = np.apply_along_axis(stat, 1, resamples) if stat is not np.mean else resamples.mean(axis=1)
    return percentile_interval(stats, level)


def mean_ci(values: Sequence[float], **kwargs) -> dict:
    """{"mean", "lo", "hi", "n"}: the mean of the non-NaN values with its bootstrap interval (kwargs as bootstrap_ci)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    lo, hi = bootstrap_ci(x, **kwargs)
    return {"mean": float(x.mean()) if len(x) else float("nan"), "lo": lo, "hi": hi, "n": len(x)}


def interval_text(summary: dict, fmt: str = "+.3f") -> str:
    """A mean_ci summary as the tables print it: "+0.120 [+0.030, +0.210]" (`fmt` is the format spec of all three)."""
    return f"{summary['mean']:{fmt}} [{summary['lo']:{fmt}}, {summary['hi']:{fmt}}]"


def direction(lo: float, hi: float) -> str:
    """What an interval of an effect says: "positive" (all above 0), "negative" (all below) or "cannot tell"."""
    if np.isnan(lo) or np.isnan(hi):
        return "cannot tell"
    if lo > hi:
        raise ValueError(f"interval is reversed: lo {lo} > hi {hi}")
    return "positive" if lo > 0 else "negative" if hi < 0 else "cannot tell"


def verdict(lo: float, hi: float, expected: str = "positive") -> str:
    """The paper's direction against an interval: "as the paper, beyond the interval", "reversed, beyond the interval"
    or "cannot be told at this scale" (the interval covers 0). `expected` is the sign the paper reports."""
    if expected not in DIRECTIONS[:2]:
        raise ValueError(f"expected must be 'positive' or 'negative', got {expected!r}")
    seen = direction(lo, hi)
    if seen == "cannot tell":
        return "cannot be told at this scale"
    return "as the paper, beyond the interval" if seen == expected else "reversed, beyond the interval"
