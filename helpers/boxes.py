"""Boxes: normalized ``(x0, y0, x1, y1)`` in [0, 1], or pixels (names end in ``_px``)."""

from __future__ import annotations

import math
from typing import Sequence

Box = tuple[float, float, float, float]


def _four_numbers(box: Sequence[float], what: str) -> Box:
    try:
        n = len(box)
    except TypeError:
        raise ValueError(f"{what} must be a sequence of 4 numbers (x0, y0, x1, y1), got {box!r}") from None
    if n != 4:
        raise ValueError(f"{what} must have 4 numbers (x0, y0, x1, y1), got {n}: {box!r}")
    out = []
    for v in box:
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
            raise ValueError(f"{what} must hold numbers, got {v!r} in {box!r}")
        f = float(v)
        if math.isnan(f) or math.isinf(f):
            raise ValueError(f"{what} must hold finite numbers, got {v!r} in {box!r}")
        out.append(f)
    x0, y0, x1, y1 = out
    if x1 < x0 or y1 < y0:
        raise ValueError(f"{what} is inverted: expected x0 <= x1 and y0 <= y1, got {tuple(out)}")
    return (x0, y0, x1, y1)


def check_normalized(box: Sequence[float]) -> Box:
    """Validate a normalized box and return it as a tuple of floats."""
    b = _four_numbers(box, "normalized box")
    if not all(0.0 <= v <= 1.0 for v in b):
        hint = ""
        if max(b) > 1.0 and all(v >= 0 for v in b):
            hint = " It looks like a pixel box: convert it with to_normalized(box_px, image_size)."
        raise ValueError(f"normalized box values must lie in [0, 1], got {b}.{hint}")
    return b
