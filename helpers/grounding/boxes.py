"""Boxes: normalized ``(x0, y0, x1, y1)`` in [0, 1], or pixels (names end in ``_px``).

``(x0, y0)`` is the top-left corner, ``(x1, y1)`` the bottom-right one; y grows downwards, as in images.
Every function here checks its boxes and raises ``ValueError`` with the reason (wrong length, not a
number, NaN or infinity, inverted, outside [0, 1] or outside the image).
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

from helpers.grounding.checks import is_positive_int

Box = tuple[float, float, float, float]


def _four_numbers(box: Sequence[float], what: str, ordered: bool = True) -> Box:
    if isinstance(box, (set, frozenset, dict)):
        raise ValueError(f"{what} must be an ordered sequence of 4 numbers (x0, y0, x1, y1), got a "
                         f"{type(box).__name__}: {box!r}")
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
        try:
            f = float(v)
        except (TypeError, ValueError, OverflowError) as err:
            raise ValueError(f"{what} must hold numbers, got {v!r} in {box!r} ({err})") from None
        if math.isnan(f) or math.isinf(f):
            raise ValueError(f"{what} must hold finite numbers, got {v!r} in {box!r}")
        out.append(f)
    return _ordered(tuple(out), what) if ordered else tuple(out)


def is_inverted(box: Sequence[float]) -> bool:
    """True when a box's corners are in the wrong order: ``x1 < x0`` or ``y1 < y0``."""
    x0, y0, x1, y1 = box
    return x1 < x0 or y1 < y0


def is_one_box(value: Sequence) -> bool:
    """True when ``value``, where a list of boxes is wanted, is one bare box instead: four real numbers (not
    bools). The callers refuse it, each in its own words, with the hint to wrap it in a list."""
    return len(value) == 4 and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)


def _ordered(box: Box, what: str) -> Box:
    if is_inverted(box):
        raise ValueError(f"{what} is inverted: expected x0 <= x1 and y0 <= y1, got {box}")
    return box


def looks_like_pixels(box: Sequence[float]) -> bool:
    """True for four numbers that read as a pixel box rather than a mistyped fraction: none below 0, one of
    at least 2 (a fraction off by a little, such as 1.5, gets no pixel hint)."""
    return all(math.isfinite(v) and v >= 0 for v in box) and max(box) >= 2


def check_normalized(box: Sequence[float], image_size: Sequence[int] | None = None) -> Box:
    """Validate a normalized box and return it as a tuple of floats.

    ``image_size``, the ``(width, height)`` of the image the box is for, only makes the message about a pixel
    box concrete: it then says what to divide by and gives the normalized box.

    Raises:
        ValueError: not 4 values, a value that is not a finite number, an inverted box (``x1 < x0`` or
            ``y1 < y0``), a value outside [0, 1] (with a hint when it looks like a pixel box), or an
            ``image_size`` that is not two positive ints.
    """
    if image_size is not None:
        image_size = check_image_size(image_size)
    b = _four_numbers(box, "normalized box", ordered=False)
    if not all(0.0 <= v <= 1.0 for v in b):  # before the order: (1.2, 0.1, 0.5, 0.5) is out of range first
        raise ValueError(f"normalized box values must lie in [0, 1], got {b}.{_pixel_hint(b, image_size)}")
    return _ordered(b, "normalized box")


def _pixel_hint(box: Box, image_size: tuple[int, int] | None) -> str:
    """What to do with ``box`` when it looks like a pixel box (:func:`looks_like_pixels`), else ``""``; with the
    image's size the hint has the numbers to divide by and, when the box lies within the image, the result."""
    if not looks_like_pixels(box):
        return ""
    if image_size is None:
        return " It looks like a pixel box: convert it with to_normalized(box_px, image_size)."
    width, height = image_size
    hint = (f" It looks like a pixel box: divide the x values by the image's width {width} and the y values by "
            f"its height {height}")
    if is_inverted(box):
        return hint + ", and give the corners as x0 y0 x1 y1, top left first: as pixels this box is inverted."
    if box[2] > width or box[3] > height:
        return hint + f", but as pixels it reaches beyond the image of {width} x {height} pixels."
    return hint + f", which gives {tuple(round(v, 4) for v in to_normalized(box, image_size))}."


def check_image_size(image_size: Sequence[int], what: str = "image_size") -> tuple[int, int]:
    """Validate ``(width, height)`` in pixels, two positive ints (numpy ints too, and a numpy array or torch
    tensor of two ints), and return it as ints.

    Raises:
        ValueError: not two values, or a value that is not a positive whole number (``bool`` included).
    """
    expected = f"{what} must be (width, height), two positive ints, got {image_size!r}"
    if isinstance(image_size, (str, bytes, set, frozenset, dict)):
        raise ValueError(expected)
    if hasattr(image_size, "tolist") and not isinstance(image_size, (list, tuple)):
        image_size = image_size.tolist()  # an array or a tensor: its values as Python numbers
    try:
        width, height = image_size
    except (TypeError, ValueError):
        raise ValueError(expected) from None
    if not (is_positive_int(width) and is_positive_int(height)):
        raise ValueError(expected)
    return int(width), int(height)


def check_with_area(box: Sequence[float], image_size: Sequence[int] | None = None) -> Box:
    """Validate a normalized box that must have an area (``x0 < x1`` and ``y0 < y1``), as a user box and
    a box written as location tokens must; return it as a tuple of floats. ``image_size`` as in
    :func:`check_normalized` (for the pixel-box hint).

    Raises:
        ValueError: everything :func:`check_normalized` refuses, and a box of zero width or height.
    """
    x0, y0, x1, y1 = check_normalized(box, image_size)
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"normalized box {(x0, y0, x1, y1)} has no area: expected x0 < x1 and y0 < y1")
    return (x0, y0, x1, y1)


#: How far (in pixels) a pixel box may reach past the image edge and still count as inside it.
PIXEL_TOLERANCE = 1e-6


def check_pixel_box(box_px: Sequence[float], image_size: Sequence[int]) -> Box:
    """Validate a pixel box ``(x0, y0, x1, y1)`` that must lie within an image of ``(width, height)``.

    Returns it as a tuple of floats. Values may reach past the edges by :data:`PIXEL_TOLERANCE` pixels
    (float rounding); anything further is an error.
    """
    width, height = check_image_size(image_size)
    b = _four_numbers(box_px, "pixel box")
    x0, y0, x1, y1 = b
    tol = PIXEL_TOLERANCE
    if min(x0, y0) < -tol or max(x0, x1) > width + tol or max(y0, y1) > height + tol:
        raise ValueError(
            f"pixel box {b} reaches beyond the image of {width} x {height} pixels: expected "
            f"0 <= x <= {width} and 0 <= y <= {height}"
        )
    return b


def to_pixels(box: Sequence[float], image_size: Sequence[int]) -> Box:
    """A normalized box in pixels of an image of ``image_size = (width, height)``."""
    width, height = check_image_size(image_size)
    x0, y0, x1, y1 = check_normalized(box, image_size)
    return (x0 * width, y0 * height, x1 * width, y1 * height)


def to_normalized(box_px: Sequence[float], image_size: Sequence[int]) -> Box:
    """A pixel box (within the image, see :func:`check_pixel_box`) as a normalized box."""
    x0, y0, x1, y1 = check_pixel_box(box_px, image_size)
    width, height = check_image_size(image_size)

    def clamp(v: float) -> float:
        return min(max(v, 0.0), 1.0)

    return (clamp(x0 / width), clamp(y0 / height), clamp(x1 / width), clamp(y1 / height))


#: How far (in pixels) an annotated COCO box may reach past the image edge: it is clipped to the image. COCO
#: boxes are floats and sometimes overshoot by a fraction of a pixel. Anything further is an error.
EDGE_TOLERANCE_PX = 1.0


def coco_to_normalized(bbox: Sequence[float], image_size: Sequence[int], what: str = "COCO box") -> Box:
    """A COCO box ``[x, y, w, h]`` in pixels of an image of ``image_size = (width, height)`` as a normalized
    box ``(x0, y0, x1, y1)``, clipped to the image (it may reach :data:`EDGE_TOLERANCE_PX` past an edge).

    The one conversion of annotated pixel boxes (RefCOCO, fine-tuning data); ``what`` names the box in the
    message (the callers add the file and record).

    Raises:
        ValueError: not 4 finite numbers, a width or height that is not > 0, a box that reaches more than
            :data:`EDGE_TOLERANCE_PX` past an edge, or one with nothing inside the image (it starts at or
            beyond the right or bottom edge, or ends at or before the left or top one).
    """
    width, height = check_image_size(image_size)
    if isinstance(bbox, (str, bytes, set, frozenset, dict)) or not isinstance(bbox, Sequence) or len(bbox) != 4:
        raise ValueError(f"{what} must be [x, y, w, h] (4 numbers, pixels), got {bbox!r}")
    values = []
    for v in bbox:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"each {what} value must be a number, got {v!r} in {list(bbox)!r}")
        if not math.isfinite(v):
            raise ValueError(f"each {what} value must be finite, got {v!r} in {list(bbox)!r}")
        values.append(float(v))
    x, y, w, h = values
    if w <= 0 or h <= 0:
        raise ValueError(f"{what} {list(bbox)} has no area: COCO boxes are [x, y, width, height] with width > 0 "
                         "and height > 0 (is it [x0, y0, x1, y1] with x1 < x0?)")
    tol = EDGE_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise ValueError(f"{what} {list(bbox)} ([x, y, w, h]) reaches beyond the image of {width} x {height} "
                         f"pixels (it ends at x = {x + w:g}, y = {y + h:g}; at most {tol:g} pixel past an edge "
                         "is clipped)")

    def clip(v: float, size: int) -> float:
        return min(max(v, 0.0), float(size)) / size

    box = (clip(x, width), clip(y, height), clip(x + w, width), clip(y + h, height))
    try:
        return check_with_area(box)
    except ValueError:
        raise ValueError(f"{what} {list(bbox)} ([x, y, w, h]) lies outside the image of {width} x {height} "
                         f"pixels: nothing of it is inside (it starts at x = {x:g}, y = {y:g} and ends at "
                         f"x = {x + w:g}, y = {y + h:g})") from None


def normalized_to_coco(box: Sequence[float], image_size: Sequence[int]) -> list[float]:
    """A normalized box ``(x0, y0, x1, y1)`` as a COCO box ``[x, y, w, h]`` in pixels of an image of
    ``image_size = (width, height)``: the inverse of :func:`coco_to_normalized` (not rounded).

    Raises:
        ValueError: a box that is not a normalized box with an area (:func:`check_with_area`), or an
            ``image_size`` that is not two positive ints.
    """
    width, height = check_image_size(image_size)
    x0, y0, x1, y1 = check_with_area(box)
    return [x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes in the same units (both normalized or both in pixels).

    0.0 when the boxes do not overlap, or when the union has no area (two boxes without area).
    """
    ax0, ay0, ax1, ay1 = _four_numbers(a, "box a")
    bx0, by0, bx1, by1 = _four_numbers(b, "box b")
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    if union <= 0.0:
        return 0.0
    return inter / union


def round_box(box: Sequence[float], ndigits: int = 2) -> Box:
    """Each value of a normalized box rounded to ``ndigits`` decimals, as the article does before scaling
    to pixels (``[round(i, 2) for i in box]``)."""
    if isinstance(ndigits, bool) or not isinstance(ndigits, numbers.Integral) or ndigits < 0:
        raise ValueError(f"ndigits must be an int >= 0, got {ndigits!r}")
    ndigits = int(ndigits)
    x0, y0, x1, y1 = check_normalized(box)
    return (round(x0, ndigits), round(y0, ndigits), round(x1, ndigits), round(y1, ndigits))


def pixel_error(box: Sequence[float], rounded: Sequence[float], image_size: Sequence[int]) -> float:
    """How far, in pixels, the farthest-moved edge of ``box`` lies from the same edge of ``rounded`` on an
    image of ``image_size`` (one coordinate at a time: a corner moves along both axes).

    Used to show what rounding a box (:func:`round_box`) costs once it is scaled to the image.
    """
    width, height = check_image_size(image_size)
    a = check_normalized(box, image_size)
    r = check_normalized(rounded, image_size)
    scale = (width, height, width, height)
    return max(abs(u - v) * s for u, v, s in zip(a, r, scale))
