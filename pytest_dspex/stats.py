"""The score interval shared by evaluation results and per-example aggregates (stdlib only)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["confidence_interval"]

_Z95 = 1.959964


def confidence_interval(scores: Sequence[float]) -> tuple[float, float]:
    """95% interval of the mean score: Wilson for pass/fail scores, normal for fractional ones."""
    n = len(scores)
    if n == 0:
        return (0.0, 0.0)
    mean, z = sum(scores) / n, _Z95
    if all(s in (0.0, 1.0) for s in scores):
        denom = 1 + z * z / n
        centre = (mean + z * z / (2 * n)) / denom
        half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / denom
    else:
        var = sum((s - mean) ** 2 for s in scores) / max(1, n - 1)
        centre, half = mean, z * math.sqrt(var / n)
    return (max(0.0, centre - half), min(1.0, centre + half))
