"""Confidence intervals, so a before/after change can be told apart from noise."""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence

Z95 = 1.959963984540054


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion; sensible at 0%, 100% and small n."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap(values: Sequence[float], statistic: Callable[[Sequence[float]], float] | None = None,
              resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (95%) of `statistic` (default: the mean)."""
    if not values:
        return (float("nan"), float("nan"))
    statistic = statistic or (lambda v: sum(v) / len(v))
    rng = random.Random(seed)
    n = len(values)
    stats = sorted(statistic([values[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    return (stats[int(0.025 * resamples)], stats[min(resamples - 1, int(0.975 * resamples))])


def proportion(flags: Sequence[bool]) -> dict:
    """Share of True with its count and Wilson interval."""
    n = len(flags)
    k = sum(bool(f) for f in flags)
    low, high = wilson(k, n)
    return {"value": k / n if n else None, "n": n, "ci95": [low, high]}


def mean(values: Sequence[float]) -> dict:
    """Mean with its count and bootstrap interval."""
    n = len(values)
    low, high = bootstrap(list(values))
    return {"value": sum(values) / n if n else None, "n": n, "ci95": [low, high]}


def paired_difference(before: Sequence[float], after: Sequence[float], resamples: int = 2000,
                      seed: int = 0) -> dict:
    """Mean of after - before over the same examples, with a paired bootstrap interval."""
    diffs = [float(a) - float(b) for a, b in zip(after, before)]
    return {"value": sum(diffs) / len(diffs) if diffs else None, "n": len(diffs),
            "ci95": list(bootstrap(diffs, resamples=resamples, seed=seed))}
