"""Worked solutions to the "write a small function" exercises of notebooks 01–06.

Each notebook's last exercise asks the learner to write a small function. The solution cell (collapsed
in the notebook) prints the function's source from here and runs it, so the solutions are tested like
the rest of the course and never rot. Read the notebook's exercise first; these are one way to do it.

==========  =====================================  ================================================
Notebook    Exercise                               Function
==========  =====================================  ================================================
01          which grid bin holds a pixel           :func:`patch_index_of_pixel`
02          translate the 2023 loading call        :func:`modern_from_pretrained_kwargs`
03          sort generated tokens into kinds       :func:`count_token_kinds`
04          what the 32 x 32 grid costs a box      :func:`grid_round_trip`
05          entity boxes in whole pixels           :func:`entity_boxes_px`
06          ask about a pixel box                  :func:`ask_about_box`
==========  =====================================  ================================================
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

from helpers.grounding.boxes import Box, check_image_size, check_normalized, iou, looks_like_pixels
from helpers.grounding.boxes import to_normalized, to_pixels
from helpers.grounding.checks import check_bool, check_positive_int
from helpers.grounding.evaluation import answer_after
from helpers.grounding.model import ground
from helpers.grounding.prompts import qa_prompt
from helpers.grounding.tokens import NUM_BINS, Grounding, box_to_patch_index, patch_index_to_box

BoxPx = tuple[int, int, int, int]

__all__ = [
    "ask_about_box",
    "count_token_kinds",
    "entity_boxes_px",
    "grid_round_trip",
    "modern_from_pretrained_kwargs",
    "patch_index_of_pixel",
]


# ------------------------------------------------------------------------------------------------ 01


def patch_index_of_pixel(x_px: float, y_px: float, image_size: Sequence[int], num_bins: int = NUM_BINS) -> int:
    """The number ``NNNN`` of the ``<patch_index_NNNN>`` bin that holds pixel ``(x_px, y_px)``.

    The image is cut into ``num_bins`` x ``num_bins`` equal bins; bin ``(row, column)`` has the number
    ``row * num_bins + column``. Pixels are numbered from 0: an image ``width`` pixels wide has the columns
    ``0`` to ``width - 1``, and pixel ``x_px`` lies in bin column ``floor(x_px / width * num_bins)`` (a point
    inside a pixel, such as its centre ``x_px + 0.5``, lies in the same bin).

    ``x_px == width`` is no pixel: it is the image's right edge, a coordinate, where a box that reaches the
    edge has its bottom-right corner. Such a corner goes to the last bin the box reaches, column
    ``ceil(x1 * num_bins) - 1`` with ``x1 = x_px / width``
    (:func:`helpers.grounding.tokens.box_to_patch_index`), so this function refuses it.

    Raises:
        ValueError: the pixel lies outside the image (``0 <= x_px < width`` and ``0 <= y_px < height`` are
            expected), ``image_size`` is not two positive ints, or ``num_bins`` is below 1.
        TypeError: ``num_bins`` is not a whole number.
    """
    width, height = check_image_size(image_size)
    check_positive_int("num_bins", num_bins, unit="bins per side")
    for name, value, limit, edge in (("x_px", x_px, width, "right"), ("y_px", y_px, height, "bottom")):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0 <= value < limit:
            at_edge = ""
            if value == limit:
                at_edge = (f"; {limit} is the image's {edge} edge, a coordinate: a box's bottom-right corner "
                           "there goes to the last bin the box reaches (box_to_patch_index)")
            raise ValueError(f"{name}={value} lies outside the image of {width} x {height} pixels: expected "
                             f"0 <= {name} < {limit} (its pixels are numbered 0 to {limit - 1}){at_edge}")
    column = min(math.floor(x_px / width * num_bins), num_bins - 1)  # min: float rounding just below the edge
    row = min(math.floor(y_px / height * num_bins), num_bins - 1)
    return row * num_bins + column


# ------------------------------------------------------------------------------------------------ 02


def modern_from_pretrained_kwargs(
    *,
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    torch_dtype: Any = None,
    device_map: Any = None,
) -> dict[str, Any]:
    """Translate the 2023 keyword arguments of ``from_pretrained`` into their transformers 5 form.

    * ``torch_dtype=`` becomes ``dtype=``;
    * ``load_in_4bit=True`` / ``load_in_8bit=True`` become ``quantization_config=BitsAndBytesConfig(...)`` with
      bitsandbytes' defaults (4-bit: FP4 codes, float32 arithmetic), plus ``dtype=torch.float16`` when no
      ``torch_dtype`` was given: transformers 4 put the layers bitsandbytes leaves alone in float16 by itself
      then, and transformers 5 keeps float32, so without it the same call loads another model;
    * ``device_map`` is passed on unchanged.

    Arguments left at their default are left out of the result.

    Raises:
        ValueError: both ``load_in_4bit`` and ``load_in_8bit`` are set.
        TypeError: ``load_in_4bit`` or ``load_in_8bit`` is not a bool.
    """
    check_bool("load_in_4bit", load_in_4bit)
    check_bool("load_in_8bit", load_in_8bit)
    if load_in_4bit and load_in_8bit:
        raise ValueError("choose one of load_in_4bit and load_in_8bit, not both")
    kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if load_in_4bit or load_in_8bit:
        import torch
        from transformers import BitsAndBytesConfig

        kwargs.setdefault("dtype", torch.float16)  # what transformers 4 chose for a bitsandbytes load
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)
    if device_map is not None:
        kwargs["device_map"] = device_map
    return kwargs


# ------------------------------------------------------------------------------------------------ 03


def count_token_kinds(tokens: Sequence[str]) -> dict[str, int]:
    """How many of ``tokens`` are words, grounding tags and location tokens.

    ``"location"``: ``<patch_index_NNNN>``; ``"tag"``: any other token written ``<…>`` (``<phrase>``,
    ``</object>``, ``</s>``, …); ``"text"``: everything else (word pieces and punctuation). All three
    keys are always present.

    Raises:
        TypeError: ``tokens`` is a single string, or holds something that is not a string.
    """
    if isinstance(tokens, str):
        raise TypeError("tokens must be a list of token strings, got one str; use tokenizer.convert_ids_to_tokens")
    counts = {"text": 0, "tag": 0, "location": 0}
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise TypeError(f"token {i} must be a str, got {type(token).__name__}: {token!r}")
        if token.startswith("<patch_index_") and token.endswith(">"):
            counts["location"] += 1
        elif len(token) > 2 and token.startswith("<") and token.endswith(">"):
            counts["tag"] += 1
        else:
            counts["text"] += 1
    return counts


# ------------------------------------------------------------------------------------------------ 04


def grid_round_trip(box: Sequence[float], num_bins: int = NUM_BINS) -> tuple[Box, float]:
    """Write a normalized box as two location tokens, read it back, and say how much of it survived.

    Returns ``(decoded_box, iou)``: the box the two ``<patch_index_NNNN>`` tokens stand for, and its
    intersection over union with the original box (1.0 means nothing was lost).

    Raises:
        ValueError: ``box`` is not a normalized box with some width and height.
    """
    original = check_normalized(box)
    decoded = patch_index_to_box(*box_to_patch_index(original, num_bins), num_bins)
    return decoded, iou(original, decoded)


# ------------------------------------------------------------------------------------------------ 05


def entity_boxes_px(grounding: Any, image_size: Sequence[int]) -> list[tuple[str, list[BoxPx]]]:
    """Each entity's phrase with its boxes in whole pixels of an image of ``image_size``.

    ``grounding`` is a :class:`~helpers.grounding.tokens.Grounding`, a list of
    :class:`~helpers.grounding.tokens.Entity`, or the processor's entity tuples
    ``[(phrase, (start, end), [box, …]), …]``. Pixel values are rounded to the nearest whole pixel.

    Raises:
        TypeError: ``grounding`` is none of the forms above.
        ValueError: a box is not a valid normalized box, or ``image_size`` is not two positive ints.
    """
    size = check_image_size(image_size)
    items = grounding.entities if isinstance(grounding, Grounding) else grounding
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"expected a Grounding or a list of entities, got {type(grounding).__name__}")
    rows: list[tuple[str, list[BoxPx]]] = []
    for i, item in enumerate(items):
        if hasattr(item, "phrase") and hasattr(item, "boxes"):
            phrase, boxes = item.phrase, item.boxes
        elif isinstance(item, (tuple, list)) and len(item) == 3:
            phrase, _, boxes = item
        else:
            raise TypeError(f"entity {i} must be an Entity or a tuple (phrase, (start, end), [boxes]), "
                            f"got {item!r:.80}")
        pixel_boxes = [tuple(round(v) for v in to_pixels(b, size)) for b in boxes]
        rows.append((phrase, pixel_boxes))  # type: ignore[arg-type]
    return rows


# ------------------------------------------------------------------------------------------------ 06


def ask_about_box(
    model: Any,
    processor: Any,
    image: Any,
    box_px: Sequence[float],
    noun: str = "object",
    max_new_tokens: int = 32,
) -> tuple[str, Grounding]:
    """Ask "What is this <noun>?" about the region ``box_px`` (pixels) of ``image``.

    The pixel box is turned into a normalized box (:func:`helpers.grounding.boxes.to_normalized`), the English
    grounded-question prompt (:func:`helpers.grounding.prompts.qa_prompt`) gets it as the user box, and the
    model answers greedily (:func:`helpers.grounding.model.ground`). Returns ``(answer, grounding)``: the text
    after ``Answer:`` and the whole :class:`~helpers.grounding.tokens.Grounding`.

    Raises:
        ValueError: ``box_px`` does not lie within the image or has no area, it looks like a normalized box
            (every value below 2 on an image at least 64 pixels wide and high, where 2 pixels are no more than
            one of the 32 x 32 bins: a box of fractions by mistake), or ``noun`` is empty.
        TypeError: ``noun`` is not a str.
    """
    if not isinstance(noun, str):
        raise TypeError(f"noun must be a str such as 'object' or 'character', got {type(noun).__name__}")
    if not noun.strip():
        raise ValueError("noun must be a word such as 'object' or 'character', got an empty string")
    box = to_normalized(box_px, image.size)
    width, height = image.size
    if not looks_like_pixels(box_px) and min(width, height) >= 2 * NUM_BINS:
        fractions = all(0 <= v <= 1 for v in box_px)
        hint = f" gives {tuple(round(v, 1) for v in to_pixels(box_px, image.size))}" if fractions else ""
        raise ValueError(f"box_px {tuple(box_px)} looks like a normalized box: every value is below 2, less "
                         f"than one bin of an image of {width} x {height} pixels. Give the box in pixels "
                         f"(to_pixels(box, image.size){hint}), or pass a normalized box to ground() as "
                         "bboxes=[[box]]")
    prompt = qa_prompt(noun.strip())
    result = ground(model, processor, image, prompt, bboxes=[[box]], max_new_tokens=max_new_tokens)[0]
    return answer_after(result.caption, "Answer:", prompt).strip(), result
