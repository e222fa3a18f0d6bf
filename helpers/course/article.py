"""What the Kosmos-2 blog article this course follows printed: prompts, raw generations, captions, boxes.

The facts live in ``data/article_outputs.json``: recorded outputs of ``microsoft/kosmos-2-patch14-224`` as
printed in the article (4-bit, Colab GPU, 2023). Notebooks compare their own runs with them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers.course.paths import shipped_data

ARTICLE_OUTPUTS_FILE = "article_outputs.json"
_REQUIRED_KEYS = ("source", "snowman", "grounded_qa")


def article_outputs_path() -> Path:
    """Where ``article_outputs.json`` is read from (:func:`helpers.course.paths.shipped_data`)."""
    return shipped_data(ARTICLE_OUTPUTS_FILE)


def article_outputs() -> dict[str, Any]:
    """The article's recorded outputs as a fresh dict (changing it changes nothing on disk).

    Keys: ``"source"`` (which article, how it ran the model), ``"snowman"`` (prompt, raw generation,
    printed caption and entity tuples, and the different full-precision result) and ``"grounded_qa"``
    (the user box, the article's prompt and the English prompt with the box inserted, the printed entity;
    the English answer is not recorded). Entity tuples are stored as JSON lists:
    ``[phrase, [start, end], [[x0, y0, x1, y1], …]]``.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is not a JSON object with the keys above.
    """
    path = article_outputs_path()
    if not path.is_file():
        raise FileNotFoundError(f"the article's recorded outputs are missing: expected the file {path}")
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or any(k not in data for k in _REQUIRED_KEYS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} should be a JSON object with the keys {list(_REQUIRED_KEYS)}, found {found}")
    return data


def draw_like_the_article(image, grounding_or_entities):
    """A copy of ``image`` with the boxes drawn the way the article's step 7 draws them, for comparison.

    The article's loop draws, for each entity, only its **first** box (``box[0]``), with the coordinates
    rounded to two decimals, as a thin red outline, and writes the phrase in Pillow's default font at the
    box's top-left corner. A phrase with several boxes ("two blue squares") therefore shows one of them,
    and every entity has the same colour. Unlike the article's loop, ``image`` itself is not changed.
    :func:`helpers.grounding.plotting.draw_entities` is the course's way.

    Args:
        image: a PIL image.
        grounding_or_entities: grounded output in any form ``draw_entities`` accepts.

    Raises:
        TypeError, ValueError: as :func:`helpers.grounding.plotting.draw_entities`.
    """
    from PIL import ImageDraw

    from helpers.grounding.boxes import round_box, to_pixels
    from helpers.grounding.images import check_image, to_rgb
    from helpers.grounding.plotting import parse_entities

    canvas = to_rgb(check_image(image))
    _, entities = parse_entities(grounding_or_entities)
    draw = ImageDraw.Draw(canvas)
    for entity in entities:
        if not entity.boxes:
            continue
        x0, y0, x1, y1 = to_pixels(round_box(entity.boxes[0]), canvas.size)
        draw.rectangle(((x0, y0), (x1, y1)), outline="red")
        draw.text((x0, y0), entity.phrase)
    return canvas
