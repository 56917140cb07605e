"""Score intervals shared by evaluation results, per-example aggregates and repeats (stdlib only)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["clustered_confidence_interval", "clustered_mean", "confidence_interval", "wilson_interval"]

_Z95 = 1.959964


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``successes / n``."""
    if n <= 0:
        return (0.0, 0.0)
    mean, z = successes / n, _Z95
    denom = 1 + z * z / n
    centre = (mean + z * z / (2 * n)) / denom
    half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def confidence_interval(scores: Sequence[float]) -> tuple[float, float]:
    """95% interval of the mean score: Wilson for pass/fail scores, normal for fractional ones."""
    n = len(scores)
    if n == 0:
        return (0.0, 0.0)
    if all(s in (0.0, 1.0) for s in scores):
        return wilson_interval(sum(1 for s in scores if s == 1.0), n)
    mean = sum(scores) / n
    var = sum((s - mean) ** 2 for s in scores) / max(1, n - 1)
    half = _Z95 * math.sqrt(var / n)
    return (max(0.0, mean - half), min(1.0, mean + half))


def clustered_mean(repeats: Sequence[Sequence[float]]) -> float:
    """The mean over examples of each example's mean over its repeats (each example weighs the same)."""
    means = [sum(r) / len(r) for r in repeats if len(r)]
    return sum(means) / len(means) if means else 0.0


def clustered_confidence_interval(repeats: Sequence[Sequence[float]]) -> tuple[float, float]:
    """95% interval of ``clustered_mean(repeats)``, the standard error clustered by example.

    ``repeats`` holds one list of scores per example (one score per repeat). Repeats of one example
    are not independent draws of the benchmark, so the example, not the repeat, is the unit: the
    standard error is that of the per-example means, ``sd(means) / sqrt(examples)`` — what Inspect's
    ``stderr(cluster=...)`` gives for equal cluster sizes. Running every example 5 times does not
    shrink the interval 5-fold; it only removes the within-example noise. When every example's mean
    is 0 or 1 (no example disagrees with itself) this is the Wilson interval over examples, as
    without repeats. One example only: (0, 1), nothing is known about the spread.
    """
    means = [sum(r) / len(r) for r in repeats if len(r)]
    g = len(means)
    if g == 0:
        return (0.0, 0.0)
    if all(m in (0.0, 1.0) for m in means):
        return confidence_interval(means)
    if g == 1:
        return (0.0, 1.0)
    mu = sum(means) / g
    var = sum((m - mu) ** 2 for m in means) / (g - 1)
    half = _Z95 * math.sqrt(var / g)
    return (max(0.0, mu - half), min(1.0, mu + half))
