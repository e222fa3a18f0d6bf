"""Kosmos-2 location tokens and grounded text.

Kosmos-2 cuts the image into a 32 x 32 grid of bins. A box is written as two location tokens,
``<patch_index_NNNN>`` for the bin of its top-left corner and ``<patch_index_MMMM>`` for the bin of its
bottom-right corner, where ``index = row * 32 + column``.
"""

from __future__ import annotations

import math
from typing import Sequence

NUM_BINS = 32


def _check_num_bins(num_bins: int) -> None:
    if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int (bins per side), got {num_bins!r}")


def patch_index_to_box(first: int, last: int, num_bins: int = NUM_BINS) -> tuple[float, float, float, float]:
    """The normalized box ``(x0, y0, x1, y1)`` that two location-token indices stand for.

    Same rule as the transformers Kosmos-2 processor: corners sit at bin centres, except when both
    tokens share a row or a column, where the box covers the bins' full extent.
    """
    _check_num_bins(num_bins)
    n_tokens = num_bins * num_bins
    for name, value in (("first", first), ("last", last)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n_tokens:
            raise ValueError(f"{name} must be an int in [0, {n_tokens - 1}] (a location token index), got {value!r}")
    cell = 1.0 / num_bins
    ul_x, ul_y = first % num_bins, first // num_bins
    lr_x, lr_y = last % num_bins, last // num_bins
    if first == last or ul_x == lr_x or ul_y == lr_y:
        return (ul_x * cell, ul_y * cell, lr_x * cell + cell, lr_y * cell + cell)
    return (ul_x * cell + cell / 2, ul_y * cell + cell / 2, lr_x * cell + cell / 2, lr_y * cell + cell / 2)


def box_to_patch_index(box: Sequence[float], num_bins: int = NUM_BINS) -> tuple[int, int]:
    """The two location-token indices for a normalized box ``(x0, y0, x1, y1)``.

    Same rule as the transformers Kosmos-2 processor: the top-left corner goes to the bin it falls in,
    the bottom-right corner to the last bin it reaches.
    """
    from helpers.boxes import check_normalized

    _check_num_bins(num_bins)
    x0, y0, x1, y1 = check_normalized(box)
    ul_x = min(math.floor(x0 * num_bins), num_bins - 1)
    ul_y = min(math.floor(y0 * num_bins), num_bins - 1)
    lr_x = max(math.ceil(x1 * num_bins - 1), 0)
    lr_y = max(math.ceil(y1 * num_bins - 1), 0)
    return ul_y * num_bins + ul_x, lr_y * num_bins + lr_x


def location_tokens(box: Sequence[float], num_bins: int = NUM_BINS) -> str:
    """``"<patch_index_NNNN><patch_index_MMMM>"`` for a normalized box."""
    a, b = box_to_patch_index(box, num_bins)
    return f"<patch_index_{a:04d}><patch_index_{b:04d}>"


def object_tokens(boxes: Sequence[Sequence[float]], num_bins: int = NUM_BINS) -> str:
    """``<object>…</object>`` for one or several boxes (joined by the multi-object delimiter)."""
    if len(boxes) == 0:
        raise ValueError("object_tokens needs at least one box")
    inner = "</delimiter_of_multi_objects/>".join(location_tokens(b, num_bins) for b in boxes)
    return f"<object>{inner}</object>"
