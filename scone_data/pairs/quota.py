"""Largest-remainder rounding: the task mix's quotas and the planning partitions' shares."""

from __future__ import annotations


def largest_remainder(raw: list[float], total: int) -> list[int]:
    """``raw`` rounded down, then one more for the largest fractions (ties by position) until the
    integers sum to ``total``."""
    out = [int(v) for v in raw]
    for i in sorted(range(len(raw)), key=lambda i: (-(raw[i] - out[i]), i))[: total - sum(out)]:
        out[i] += 1
    return out
