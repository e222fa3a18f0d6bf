"""Pictures and coloured captions for grounded output.

Every entity (a phrase with its boxes) gets a colour from :data:`PALETTE` by its position in the list,
so the same output always gives the same picture, and the caption highlighted by
:func:`highlight_caption` uses the same colour as the boxes drawn by :func:`draw_entities`.

Functions here accept grounded output in any of these forms:

* a ``helpers.grounding.tokens.Grounding`` (anything with ``.caption`` and ``.entities``);
* the ``(caption, entities)`` pair that the transformers Kosmos-2 processor's
  ``post_process_generation`` returns;
* a list of entities, each either an object with ``.phrase``, ``.span`` and ``.boxes`` (such as
  ``helpers.grounding.tokens.Entity``) or a processor-style tuple ``(phrase, (start, end), [box, ...])``.

Boxes are normalized ``(x0, y0, x1, y1)`` in [0, 1]; pixel rectangles have names ending in ``_px`` and
are ``(x0, y0, x1, y1)`` integers with ``x1``/``y1`` exclusive.
"""

from __future__ import annotations

import functools
import html
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple, Sequence

from PIL import Image, ImageDraw, ImageFont

from helpers.grounding.boxes import Box, check_image_size, check_normalized, is_one_box, to_pixels
from helpers.grounding.checks import check_bool, check_positive_int
from helpers.grounding.images import check_image, to_rgb

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.axes import Axes

__all__ = [
    "PALETTE",
    "HighlightedCaption",
    "LabelBox",
    "draw_entities",
    "draw_grid",
    "draw_user_box",
    "entity_colour",
    "highlight_caption",
    "label_boxes",
    "plot_entities",
]

RectPx = tuple[int, int, int, int]

#: Entity colours, in order. Chosen to stay clear of the colours of things in the course's pictures (the
#: synthetic world's red, green, blue, yellow and purple shapes, the fire, the snowman, Kumo): each is at
#: least 20 CIE94 units (a difference anyone sees at a glance) from every colour the world paints with and
#: from each other (tests/test_plotting.py measures it), so a box never looks like part of the object
#: under it. All are mid-tone, readable as outlines on light and dark pictures and as label backgrounds.
PALETTE: tuple[str, ...] = (
    "#088090",  # teal
    "#D81880",  # magenta
    "#98A820",  # olive green
    "#C890F8",  # lavender
    "#20C0A0",  # mint
    "#3898F8",  # azure
)

_ELLIPSIS = "..."  # the default font's reduced character set has no single-character ellipsis


def entity_colour(index: int) -> str:
    """The colour (``"#RRGGBB"``) of the entity at position ``index``; the palette repeats after its last colour."""
    if not _is_whole(index) or index < 0:
        raise ValueError(f"index must be a non-negative int (the entity's position), got {index!r}")
    return PALETTE[int(index) % len(PALETTE)]


def _is_whole(value: object) -> bool:
    """A whole number (a Python or numpy int), not a bool: what an index here must be."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------- input forms


@dataclass(frozen=True)
class _Entity:
    phrase: str
    span: tuple[int, int] | None
    boxes: tuple[Box, ...]


def _entity_from(value: Any, index: int) -> _Entity:
    if hasattr(value, "phrase") and hasattr(value, "boxes"):
        phrase, span, boxes = value.phrase, getattr(value, "span", None), value.boxes
    elif isinstance(value, (tuple, list)) and len(value) == 3:
        phrase, span, boxes = value
    else:
        raise TypeError(
            f"entity {index} must have .phrase, .span and .boxes or be a tuple (phrase, (start, end), [boxes]), "
            f"got {type(value).__name__}: {value!r:.80}"
        )
    if not isinstance(phrase, str):
        raise TypeError(f"entity {index}: the phrase must be a str, got {type(phrase).__name__}: {phrase!r:.80}")
    if span is not None:
        if (
            not isinstance(span, (tuple, list))
            or len(span) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)
        ):
            raise ValueError(f"entity {index} ({phrase!r}): the span must be two ints (start, end), got {span!r}")
        span = (span[0], span[1])
    if isinstance(boxes, (str, bytes)) or not isinstance(boxes, (Sequence, Iterable)):
        raise ValueError(f"entity {index} ({phrase!r}): boxes must be a list of boxes, got {boxes!r:.80}")
    boxes = list(boxes)
    if is_one_box(boxes):
        raise ValueError(
            f"entity {index} ({phrase!r}): boxes must be a list of boxes, got one bare box {tuple(boxes)}; "
            "wrap it in a list: [box]"
        )
    checked = []
    for j, box in enumerate(boxes):
        try:
            checked.append(check_normalized(box))
        except ValueError as exc:
            raise ValueError(f"entity {index} ({phrase!r}), box {j}: {exc}") from None
    return _Entity(phrase, span, tuple(checked))


def parse_entities(grounding: Any) -> tuple[str | None, list[_Entity]]:
    """(caption or None, entities) from any of the accepted forms (see the module docstring)."""
    if hasattr(grounding, "entities") and hasattr(grounding, "caption"):
        caption, items = grounding.caption, grounding.entities
    elif isinstance(grounding, tuple) and len(grounding) == 2 and isinstance(grounding[0], str):
        caption, items = grounding
    elif isinstance(grounding, (list, tuple)):
        caption, items = None, grounding
    else:
        raise TypeError(
            "expected a Grounding (with .caption and .entities), a (caption, entities) pair or a list of "
            f"entities, got {type(grounding).__name__}: {grounding!r:.80}"
        )
    if caption is not None and not isinstance(caption, str):
        raise TypeError(f"the caption must be a str, got {type(caption).__name__}: {caption!r:.80}")
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(f"the entities must be a list, got {type(items).__name__}: {items!r:.80}")
    return caption, [_entity_from(item, i) for i, item in enumerate(items)]


# --------------------------------------------------------------------------------------------- geometry


def _default_sizes(image_size: tuple[int, int]) -> tuple[int, int]:
    """(line_width, font_size) that suit an image of this size."""
    short = min(image_size)
    line_width = max(2, round(short / 160))
    font_size = int(min(48, max(11, round(short * 0.035))))
    return line_width, font_size


def _check_size_arg(name: str, value: Any) -> None:
    check_positive_int(name, value, none_ok=True)  # None: scaled with the image


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib) at ``size`` px; Pillow's default font if it is missing.

    Pillow's own default font gives the space only 2 px at the small sizes labels use, so "two red
    circles" reads "twored circles"; DejaVu Sans keeps a space of about a third of the size.
    """
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size=size)


def _line_height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    if isinstance(font, ImageFont.FreeTypeFont):
        ascent, descent = font.getmetrics()
        return ascent + descent
    left, top, right, bottom = font.getbbox("Ag")
    return int(bottom)


def _text_width(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> int:
    return math.ceil(font.getlength(text))


def _to_px(box: Box, image_size: tuple[int, int]) -> RectPx:
    """Integer pixel rectangle (x1, y1 exclusive) for a normalized box, at least one pixel wide and high."""
    width, height = image_size
    x0, y0, x1, y1 = (float(v) for v in to_pixels(box, image_size))
    left = min(max(round(x0), 0), width - 1)
    top = min(max(round(y0), 0), height - 1)
    right = min(max(round(x1), left + 1), width)
    bottom = min(max(round(y1), top + 1), height)
    return left, top, right, bottom


def _overlaps(a: RectPx, b: RectPx) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _fit_text(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str, max_width: int) -> str:
    if _text_width(font, text) <= max_width:
        return text
    for end in range(len(text) - 1, 0, -1):
        shorter = text[:end].rstrip() + _ELLIPSIS
        if _text_width(font, shorter) <= max_width:
            return shorter
    return _ELLIPSIS if _text_width(font, _ELLIPSIS) <= max_width else ""


def _place(
    size_px: tuple[int, int], box_px: RectPx, image_size: tuple[int, int], placed: Sequence[RectPx]
) -> RectPx:
    """Where a label of ``size_px`` goes for ``box_px``: above it if free, else the nearest free spot.

    Candidates are the spots above, inside the top, below and inside the bottom of the box, plus the
    spots beside and beneath earlier labels, all moved inside the image; the free candidate nearest to
    "just above the box, left-aligned" wins. When the image has no free spot left, the label goes to the
    preferred spot and overlaps.
    """
    width, height = image_size
    w, h = size_px
    bx0, by0, bx1, by1 = box_px

    def clamp(x: int, y: int) -> tuple[int, int]:
        return min(max(x, 0), max(width - w, 0)), min(max(y, 0), max(height - h, 0))

    preferred = clamp(bx0, by0 - h)
    xs = [bx0, bx1 - w] + [r[2] for r in placed] + [r[0] - w for r in placed]
    ys = [by0 - h, by0, by1, by1 - h] + [r[3] for r in placed] + [r[1] - h for r in placed]
    candidates = [clamp(x, y) for y in ys for x in xs]
    step = max(1, h // 2)
    candidates += [clamp(x, y) for y in range(0, max(height - h, 0) + 1, step) for x in (bx0, 0, width - w)]

    best: tuple[int, int] | None = None
    best_cost = math.inf
    for x, y in candidates:
        rect = (x, y, x + w, y + h)
        if any(_overlaps(rect, other) for other in placed):
            continue
        cost = abs(x - preferred[0]) + abs(y - preferred[1])
        if cost < best_cost:
            best, best_cost = (x, y), cost
    x, y = best if best is not None else preferred
    return x, y, x + w, y + h


class LabelBox(NamedTuple):
    """Where the label of one box goes: the entity and box it belongs to, its text and its rectangle."""

    entity_index: int
    box_index: int
    text: str
    rect_px: RectPx


def label_boxes(
    image_size: tuple[int, int],
    grounding_or_entities: Any,
    *,
    font_size: int | None = None,
) -> list[LabelBox]:
    """The label rectangles :func:`draw_entities` uses, one per box, in drawing order.

    Each label holds its entity's phrase (shortened with "..." if wider than the image), sits above its
    box when there is room and otherwise at the nearest free spot, lies inside the image, and does not
    overlap earlier labels as long as the image has room for them.

    Args:
        image_size: ``(width, height)`` in pixels.
        grounding_or_entities: grounded output in any accepted form (see the module docstring).
        font_size: as for :func:`draw_entities`; ``None`` scales it with the image.
    """
    size = check_image_size(image_size)
    _, entities = parse_entities(grounding_or_entities)
    _check_size_arg("font_size", font_size)
    return _label_boxes(size, entities, font_size)


def _label_boxes(image_size: tuple[int, int], entities: Sequence[_Entity], font_size: int | None) -> list[LabelBox]:
    width, height = image_size
    size = font_size or _default_sizes(image_size)[1]
    font = _font(size)
    pad = _label_padding(size)
    line_h = _line_height(font)
    labels: list[LabelBox] = []
    placed: list[RectPx] = []
    for i, entity in enumerate(entities):
        text = _fit_text(font, entity.phrase, width - 2 * pad)
        size_px = (min(_text_width(font, text) + 2 * pad, width), min(line_h + 2 * pad, height))
        for j, box in enumerate(entity.boxes):
            rect = _place(size_px, _to_px(box, image_size), image_size, placed)
            placed.append(rect)
            labels.append(LabelBox(i, j, text, rect))
    return labels


def _label_padding(font_size: int) -> int:
    return max(2, font_size // 5)


def _hex_to_rgb(colour: str) -> tuple[int, int, int]:
    value = colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _text_colour(background: str) -> str:
    """Black or white, whichever contrasts more with ``background`` (WCAG relative luminance)."""

    def channel(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in _hex_to_rgb(background))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    contrast_with_black = (luminance + 0.05) / 0.05
    contrast_with_white = 1.05 / (luminance + 0.05)
    return "#000000" if contrast_with_black >= contrast_with_white else "#FFFFFF"


# --------------------------------------------------------------------------------------------- drawing


def _start_drawing(image: Image.Image, line_width: int | None, font_size: int | None):
    """A fresh RGB copy of ``image`` to draw on: ``(canvas, draw, line width, font size in px)``.

    Sizes left as None scale with the image (:func:`_default_sizes`).
    """
    _check_size_arg("line_width", line_width)
    _check_size_arg("font_size", font_size)
    canvas = to_rgb(image)
    default_line, default_font = _default_sizes(canvas.size)
    return canvas, ImageDraw.Draw(canvas), line_width or default_line, font_size or default_font


def draw_entities(
    image: Image.Image,
    grounding_or_entities: Any,
    *,
    line_width: int | None = None,
    font_size: int | None = None,
    show_labels: bool = True,
    user_box: Sequence[float] | None = None,
) -> Image.Image:
    """A new RGB image with every box of every entity drawn in the entity's colour, and labelled.

    Entity ``i`` is drawn in :func:`entity_colour` ``(i)``, all its boxes alike. Labels show the phrase on a
    filled background of that colour, in black or white text (whichever reads better), placed as
    :func:`label_boxes` describes. ``image`` itself is not modified; with no entities the result is a
    plain RGB copy.

    Args:
        image: the picture the boxes refer to.
        grounding_or_entities: grounded output in any accepted form (see the module docstring).
        line_width: box outline width in pixels; ``None`` scales it with the image (at least 2).
        font_size: label font size in pixels; ``None`` scales it with the image (11 to 48).
        show_labels: draw the phrase labels (boxes are always drawn).
        user_box: a normalized box given with the prompt, drawn first, dashed (:func:`draw_user_box`) and
            unlabelled: the answer repeats the prompt's phrase with it, so that entity's label names it already.

    Raises:
        TypeError: ``image`` is not a PIL image, the entities are not in an accepted form, a size argument
            is not a whole number, or ``show_labels`` is not ``True`` or ``False``.
        ValueError: a box is not a valid normalized box, or a size argument is below 1.
    """
    check_image(image)
    check_bool("show_labels", show_labels)
    _, entities = parse_entities(grounding_or_entities)
    if user_box is not None:
        image = draw_user_box(image, user_box, label=None)
    canvas, draw, width, font_px = _start_drawing(image, line_width, font_size)
    size = canvas.size
    for i, entity in enumerate(entities):
        colour = entity_colour(i)
        for box in entity.boxes:
            x0, y0, x1, y1 = _to_px(box, size)
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=width)
    if show_labels:
        font = _font(font_px)
        pad = _label_padding(font_px)
        for label in _label_boxes(size, entities, font_size):
            colour = entity_colour(label.entity_index)
            lx0, ly0, lx1, ly1 = label.rect_px
            draw.rectangle([lx0, ly0, lx1 - 1, ly1 - 1], fill=colour)
            draw.text((lx0 + pad, ly0 + pad), label.text, fill=_text_colour(colour), font=font)
    return canvas


def plot_entities(
    image: Image.Image,
    grounding_or_entities: Any,
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Show :func:`draw_entities`' picture on a matplotlib Axes (a new figure when ``ax`` is None).

    The axes have no ticks; ``title`` (if given) goes above the picture. Nothing is shown or closed here:
    notebooks display the figure themselves. Returns the Axes.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    if title is not None and not isinstance(title, str):  # before a figure is opened: none is left behind
        raise TypeError(f"title must be a str or None, got {type(title).__name__}")
    annotated = draw_entities(image, grounding_or_entities)
    if ax is None:
        scale = 6.0 / max(annotated.size)
        _, ax = plt.subplots(figsize=(annotated.width * scale, annotated.height * scale))
    ax.imshow(np.asarray(annotated))
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title)
    return ax


def draw_grid(
    image: Image.Image,
    num_bins: int = 32,
    highlight: Iterable[int] | Mapping[int, str] | None = None,
    *,
    line_colour: str = "#000000",
    line_opacity: float = 0.25,
) -> Image.Image:
    """A new RGB image with Kosmos-2's ``num_bins`` x ``num_bins`` location grid drawn over it.

    Grid lines are drawn lightly (``line_opacity``). ``highlight`` fills bins given by their patch index
    (``row * num_bins + column``, the number in ``<patch_index_NNNN>``): a list of indices uses
    :func:`entity_colour` ``(0)``, a mapping ``{index: "#RRGGBB"}`` chooses the colour per bin. Each
    highlighted bin is filled half-transparently and outlined.

    Raises:
        TypeError: ``image`` is not a PIL image, or ``num_bins`` is not a whole number.
        ValueError: ``num_bins`` is below 1, an index is outside ``[0, num_bins**2)``, or
            ``line_opacity`` is outside [0, 1].
    """
    check_image(image)
    check_positive_int("num_bins", num_bins, unit="bins per side")
    if isinstance(line_opacity, bool) or not isinstance(line_opacity, (int, float)) or not 0 <= line_opacity <= 1:
        raise ValueError(f"line_opacity must be a number in [0, 1], got {line_opacity!r}")
    cells: dict[int, str] = {}
    if highlight is not None:
        if isinstance(highlight, Mapping):
            pairs = list(highlight.items())
        elif isinstance(highlight, (str, bytes)) or not isinstance(highlight, Iterable):
            raise ValueError(f"highlight must be patch indices or a mapping index -> colour, got {highlight!r:.80}")
        else:
            pairs = [(index, entity_colour(0)) for index in highlight]
        for index, colour in pairs:
            if not _is_whole(index) or not 0 <= index < num_bins * num_bins:
                raise ValueError(
                    f"highlight index must be an int in [0, {num_bins * num_bins - 1}] (a patch index), got {index!r}"
                )
            cells[int(index)] = colour

    base = to_rgb(image).convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    width, height = base.size
    xs = [round(k * width / num_bins) for k in range(num_bins + 1)]
    ys = [round(k * height / num_bins) for k in range(num_bins + 1)]
    line_rgba = (*_hex_to_rgb(_check_colour(line_colour)), round(255 * line_opacity))
    for x in xs[1:-1]:
        draw.line([(x, 0), (x, height - 1)], fill=line_rgba, width=1)
    for y in ys[1:-1]:
        draw.line([(0, y), (width - 1, y)], fill=line_rgba, width=1)
    for index, colour in cells.items():
        row, column = divmod(index, num_bins)
        rgb = _hex_to_rgb(_check_colour(colour))
        rect = [xs[column], ys[row], max(xs[column + 1] - 1, xs[column]), max(ys[row + 1] - 1, ys[row])]
        draw.rectangle(rect, fill=(*rgb, 140), outline=(*rgb, 255), width=1)
    return Image.alpha_composite(base, overlay).convert("RGB")


def _check_colour(colour: Any) -> str:
    if (
        not isinstance(colour, str)
        or len(colour) != 7
        or colour[0] != "#"
        or any(c not in "0123456789abcdefABCDEF" for c in colour[1:])
    ):
        raise ValueError(f"a colour must be a '#RRGGBB' string, got {colour!r}")
    return colour


def draw_user_box(
    image: Image.Image,
    box: Sequence[float],
    label: str | None = "your box",
    *,
    line_width: int | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """A new RGB image with a box of the reader's own drawn in black-and-white dashes, and labelled.

    The dashed two-tone outline stands out on light and dark pictures alike and cannot be mistaken for
    a model's box (those are solid and coloured). ``label`` (``None`` or ``""`` for none) sits above the
    box when there is room, in white on black.

    Raises:
        TypeError: ``image`` is not a PIL image, ``label`` is not a str, or a size argument is not a whole number.
        ValueError: ``box`` is not a valid normalized box, or a size argument is below 1.
    """
    check_image(image)
    box = check_normalized(box)
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a str or None, got {type(label).__name__}")
    canvas, draw, width, font_px = _start_drawing(image, line_width, font_size)
    size = canvas.size
    x0, y0, x1, y1 = _to_px(box, size)
    draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline="#FFFFFF", width=width)
    dash = 3 * width
    # Black dashes over the white outline, along each side (inset so they stay on the outline).
    for start in range(x0, x1, 2 * dash):
        end = min(start + dash, x1) - 1
        draw.rectangle([start, y0, end, min(y0 + width, y1) - 1], fill="#000000")
        draw.rectangle([start, max(y1 - width, y0), end, y1 - 1], fill="#000000")
    for start in range(y0, y1, 2 * dash):
        end = min(start + dash, y1) - 1
        draw.rectangle([x0, start, min(x0 + width, x1) - 1, end], fill="#000000")
        draw.rectangle([max(x1 - width, x0), start, x1 - 1, end], fill="#000000")
    if label:
        font = _font(font_px)
        pad = _label_padding(font_px)
        (only,) = _label_boxes(size, [_Entity(label, None, (box,))], font_size)
        lx0, ly0, lx1, ly1 = only.rect_px
        draw.rectangle([lx0, ly0, lx1 - 1, ly1 - 1], fill="#000000")
        draw.text((lx0 + pad, ly0 + pad), only.text, fill="#FFFFFF", font=font)
    return canvas


# --------------------------------------------------------------------------------------------- captions


class HighlightedCaption:
    """A caption with its grounded phrases marked: HTML for notebooks, brackets for plain text.

    In a notebook the object displays as HTML (``_repr_html_``): each phrase on a background of its
    entity's colour, the same colour :func:`draw_entities` uses. ``str()`` and ``repr()`` give the
    caption with each phrase in ``[brackets]``, which reads well and stays stable in saved outputs.

    Attributes:
        caption: the plain caption.
        html: the HTML (a ``<span>`` of text and coloured ``<span>`` elements; all text is escaped).
        text: the bracketed plain text.
    """

    def __init__(self, caption: str, html_text: str, plain_text: str) -> None:
        self.caption = caption
        self.html = html_text
        self.text = plain_text

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HighlightedCaption):
            return NotImplemented
        return (self.caption, self.html) == (other.caption, other.html)

    def __hash__(self) -> int:
        return hash((self.caption, self.html))


def highlight_caption(grounding: Any, entities: Any = None) -> HighlightedCaption:
    """The caption with each entity's span coloured like its boxes, as a :class:`HighlightedCaption`.

    Args:
        grounding: a ``Grounding`` or a ``(caption, entities)`` pair; or the caption itself (a str), in
            which case ``entities`` must be given.
        entities: the entities, when ``grounding`` is a caption string.

    Spans are ``(start, end)`` character offsets into the caption. Overlapping spans are all shown: the
    text is cut at every span boundary and each piece takes the colour of the innermost entity covering
    it (the one that starts last), while its tooltip names every phrase covering it. Entities with no
    span (e.g. ``(phrase, None, boxes)``) or an empty one still count for colour numbering but mark no text:
    the processor gives ``(i, i)`` to an ``<object>`` without a phrase and ``(i + 1, i)`` to a blank phrase
    (``<phrase> </phrase>``), whose boxes :func:`draw_entities` draws in their entity's colour all the same.

    Raises:
        TypeError: the input is not in an accepted form.
        ValueError: a span is not two ints in ``[0, len(caption)]``, or a span that marks text does not spell
            its entity's phrase (``caption[start:end]`` must equal it, as in a ``Grounding`` and the processor's
            entities).
    """
    if isinstance(grounding, str):
        if entities is None:
            raise TypeError("highlight_caption(caption, entities): entities are missing")
        caption, parsed = parse_entities((grounding, list(entities) if isinstance(entities, Iterable) else entities))
    else:
        if entities is not None:
            raise TypeError("pass entities separately only with a caption string, not with a Grounding or pair")
        caption, parsed = parse_entities(grounding)
        if caption is None:
            raise TypeError(
                "highlight_caption needs the caption too: pass a Grounding, a (caption, entities) pair, "
                "or highlight_caption(caption, entities)"
            )
    assert caption is not None
    spans: list[tuple[int, int, int]] = []  # (start, end, entity index)
    for i, entity in enumerate(parsed):
        if entity.span is None:
            continue
        start, end = entity.span
        if not (0 <= start <= len(caption) and 0 <= end <= len(caption)):
            raise ValueError(
                f"entity {i} ({entity.phrase!r}) has span {entity.span}, expected start and end in "
                f"[0, {len(caption)}] (the caption's length)"
            )
        if start < end:  # an empty span (no phrase, a blank one) marks nothing; its index keeps its colour
            if caption[start:end] != entity.phrase:
                raise ValueError(f"entity {i} ({entity.phrase!r}) has span {entity.span}, but the caption holds "
                                 f"{caption[start:end]!r} there: a span must spell its phrase")
            spans.append((start, end, i))

    cuts = sorted({0, len(caption), *(s for s, _, _ in spans), *(e for _, e, _ in spans)})
    html_parts: list[str] = []
    for a, b in zip(cuts, cuts[1:]):
        piece = caption[a:b]
        covering = [(s, e, i) for s, e, i in spans if s <= a and b <= e]
        if not covering:
            html_parts.append(html.escape(piece))
            continue
        _, _, inner = max(covering, key=lambda t: (t[0], -t[1], -t[2]))
        colour = entity_colour(inner)
        names = " / ".join(parsed[i].phrase.strip() for _, _, i in covering)
        style = (
            f"background-color: {colour}; color: {_text_colour(colour)}; "
            "border-radius: 3px; padding: 0 2px"
        )
        html_parts.append(
            f'<span style="{style}" title="{html.escape(names, quote=True)}">{html.escape(piece)}</span>'
        )
    html_text = '<span class="grounded-caption" style="line-height: 1.8">' + "".join(html_parts) + "</span>"

    opens: dict[int, int] = {}
    closes: dict[int, int] = {}
    for s, e, _ in spans:
        opens[s] = opens.get(s, 0) + 1
        closes[e] = closes.get(e, 0) + 1
    plain_parts: list[str] = []
    for k in range(len(caption) + 1):
        plain_parts.append("]" * closes.get(k, 0) + "[" * opens.get(k, 0))
        if k < len(caption):
            plain_parts.append(caption[k])
    return HighlightedCaption(caption, html_text, "".join(plain_parts))
