"""A straight line through measurements (least squares), for the resync benches.

``bench/resync.py`` fits the TX NIC's cost per resync against the bytes it
re-feeds; ``bench/rx_resync.py`` fits the RX receiver's extra host and NIC
time against the segments lost: one fitting function for both.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """``y = a + b x`` by least squares: ``(a, b, r^2)``; ValueError when
    the xs do not vary (no slope can be fitted)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if not sxx:
        raise ValueError("least squares needs at least two different x values")
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    b = sxy / sxx
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return a, b, 1 - ss_res / ss_tot if ss_tot else 1.0


__all__ = ["least_squares"]
