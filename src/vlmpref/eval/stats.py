"""Confidence intervals, so a before/after change can be told apart from noise.

Every metric is a dict `{"value", "n", "ci95": [low, high], "ci"}`: proportions carry a Wilson score
interval (`ci: "wilson"`), means, ratios and F1 a percentile bootstrap over examples (`ci: "bootstrap"`,
2000 resamples, seed 0, so the same data always gives the same interval). A before/after change is a
paired bootstrap: the same resampled examples are scored before and after.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

Z95 = 1.959963984540054
RESAMPLES = 2000


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion; sensible at 0%, 100% and small n."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _draws(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentiles(values: np.ndarray) -> list[float | None]:
    values = values[np.isfinite(values)]
    if not len(values):
        return [None, None]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def bootstrap(values: Sequence[float], statistic: Callable[[Sequence[float]], float] | None = None,
              resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (95%) of `statistic` (default: the mean)."""
    if not len(values):
        return (float("nan"), float("nan"))
    array = np.asarray(values, dtype=float)
    draws = _draws(len(array), resamples, seed)
    if statistic is None:
        stats = array[draws].mean(axis=1)
    else:
        stats = np.array([statistic(list(array[d])) for d in draws], dtype=float)
    low, high = _percentiles(stats)
    return (low, high)


def bootstrap_indices(n: int, statistic: Callable[[np.ndarray], float], resamples: int = RESAMPLES,
                      seed: int = 0) -> list[float | None]:
    """95% interval of `statistic(indices)` over examples resampled with replacement (NaN draws ignored)."""
    if n == 0:
        return [None, None]
    return _percentiles(np.array([statistic(d) for d in _draws(n, resamples, seed)], dtype=float))


def proportion(flags: Sequence[bool]) -> dict:
    """Share of True with its count and Wilson interval."""
    n = len(flags)
    k = sum(bool(f) for f in flags)
    low, high = wilson(k, n)
    return {"value": k / n if n else None, "n": n, "ci95": [low, high], "ci": "wilson"}


def mean(values: Sequence[float]) -> dict:
    """Mean with its count and bootstrap interval."""
    n = len(values)
    low, high = bootstrap(list(values)) if n else (None, None)
    return {"value": sum(values) / n if n else None, "n": n, "ci95": [low, high], "ci": "bootstrap"}


def ratio_of_sums(numerators: Sequence[float], denominators: Sequence[float]) -> dict:
    """sum(num) / sum(den) over examples (e.g. hallucinated / mentioned objects), bootstrap over examples.

    `n` is the denominator's total (the number of mentions), `examples` the number of examples.
    """
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    total = float(den.sum())

    def statistic(idx):
        d = den[idx].sum()
        return num[idx].sum() / d if d else float("nan")

    return {"value": float(num.sum()) / total if total else None, "n": int(total), "examples": len(num),
            "ci95": bootstrap_indices(len(num), statistic), "ci": "bootstrap"}


def paired_change(n: int, before: Callable[[np.ndarray], float], after: Callable[[np.ndarray], float],
                  resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """after - before of a statistic over the same n examples, with a paired bootstrap interval.

    `before` and `after` compute the statistic from an index array over the examples; each resample
    applies the same indices to both, so example-to-example variation cancels out.
    """
    everything = np.arange(n)
    value = after(everything) - before(everything) if n else float("nan")
    interval = bootstrap_indices(n, lambda idx: after(idx) - before(idx), resamples, seed)
    return {"value": None if not math.isfinite(value) else float(value), "n": n, "ci95": interval,
            "ci": "paired bootstrap"}


def paired_difference(before: Sequence[float], after: Sequence[float], resamples: int = RESAMPLES,
                      seed: int = 0) -> dict:
    """Mean of after - before over the same examples, with a paired bootstrap interval."""
    b, a = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    return paired_change(len(b), lambda idx: b[idx].mean(), lambda idx: a[idx].mean(), resamples, seed)
