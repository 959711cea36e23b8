"""Small helpers shared by the benchmark scripts: percentiles and table rows."""

from __future__ import annotations

import statistics


def median_p(samples: list[float], p: float) -> tuple[float, float]:
    """(median, p-th percentile) of `samples`."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))
    return statistics.median(ordered), ordered[index]


def row(*cells: object, widths: tuple[int, ...] = (34, 14, 14, 10)) -> str:
    return "".join(f"{c!s:<{w}}" for c, w in zip(cells, widths, strict=False))
