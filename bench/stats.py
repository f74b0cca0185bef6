"""Summaries of measured samples (median, p95, p99, min, max) and the cripy/containerd ratio."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """The distribution of one figure's samples, in the figure's unit."""

    count: int
    median: float
    p95: float
    p99: float
    minimum: float
    maximum: float
    mean: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise ValueError("cannot summarize an empty sample list")
        ordered = sorted(samples)
        return cls(
            count=len(ordered),
            median=percentile(ordered, 50),
            p95=percentile(ordered, 95),
            p99=percentile(ordered, 99),
            minimum=ordered[0],
            maximum=ordered[-1],
            mean=sum(ordered) / len(ordered),
        )


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The pct-th percentile of already sorted samples, linearly interpolated between closest ranks."""
    if not ordered:
        raise ValueError("percentile of an empty sample list")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile {pct} is outside 0..100")
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(cripy: float, containerd: float) -> float:
    """cripy / containerd; inf when only containerd's figure is zero, 1.0 when both are."""
    if containerd == 0:
        return 1.0 if cripy == 0 else math.inf
    return cripy / containerd
