"""Referring-expression comprehension on RefCOCO-style annotation files.

The Kosmos-2 paper measures zero-shot comprehension on RefCOCO, RefCOCO+ and RefCOCOg: the model gets
``<grounding><phrase> {expression}</phrase>`` and answers with a box; the answer counts as correct when
its IoU with the annotated box is at least 0.5. This module reads annotations in the common JSON layout
of the ``refer`` tools and runs that evaluation, so the same code works on the course's synthetic scenes
and, with the real model, on the real data sets.

The layout :func:`load_refcoco` accepts is a list of records (a JSON file holding the list, or the list
itself), each with

* the image: ``"file_name"`` (a path relative to the image folder), or ``"image_id"`` turned into a file
  name with ``file_pattern`` (by default COCO's ``COCO_train2014_{image_id:012d}.jpg``, where the RefCOCO
  images come from);
* ``"bbox"``: ``[x, y, w, h]`` in pixels, COCO's format (top-left corner, width, height);
* the expression(s): ``"sentences"`` (a list of ``{"sent": ...}`` or ``{"raw": ...}`` dicts, or of
  strings) or ``"expression"`` (one string); every sentence becomes one :class:`RefItem`;
* ``"width"`` and ``"height"`` of the image in pixels (optional when ``image_root`` is given: then the
  size is read from the image file's header);
* optionally ``"split"`` (``"val"``, ``"testA"`` …), which ``split=`` filters on, and ``"ref_id"``.

A JSON object holding such a list under ``"refs"`` or ``"annotations"`` is accepted too.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from helpers.grounding.boxes import Box, check_normalized, iou
from helpers.grounding.evaluation import IOU_THRESHOLD, Score


#: How RefCOCO's ``image_id`` becomes a file name in the COCO ``train2014`` folder.
COCO_TRAIN2014_PATTERN = "COCO_train2014_{image_id:012d}.jpg"

#: How far (in pixels) a box may reach past the image edge; it is clipped to the image. COCO boxes are
#: floats and sometimes overshoot by a fraction of a pixel. Anything further is an error.
EDGE_TOLERANCE_PX = 1.0


class RefCocoFormatError(ValueError):
    """An annotation file or record is not in the expected layout; the message names the record."""


@dataclass(frozen=True)
class RefItem:
    """One referring expression: the image file, the sentence and the normalized box it refers to."""

    file_name: str
    expression: str
    box: Box
    width: int
    height: int
    ref_id: Any = None
    split: str | None = None

    @property
    def box_px(self) -> Box:
        """The box in pixels, ``(x0, y0, x1, y1)``."""
        x0, y0, x1, y1 = self.box
        return (x0 * self.width, y0 * self.height, x1 * self.width, y1 * self.height)


# --------------------------------------------------------------------------------------------- loading


def _records(source: Any) -> list:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise RefCocoFormatError(f"annotation file {str(path)!r} does not exist (or is not a file)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise RefCocoFormatError(f"annotation file {str(path)!r} is not valid JSON: {err}") from None
    else:
        data = source
    if isinstance(data, dict):
        for key in ("refs", "annotations"):
            if isinstance(data.get(key), list):
                return data[key]
        raise RefCocoFormatError(
            "expected a list of annotation records, or a JSON object with the list under 'refs' or "
            f"'annotations'; got an object with the keys {sorted(data)[:10]}"
        )
    if isinstance(data, (list, tuple)):
        return list(data)
    raise RefCocoFormatError(
        "expected a path to a JSON file, or a list of annotation records (dicts); "
        f"got {type(data).__name__}"
    )


def _sentences(rec: dict, where: str) -> list[str]:
    if "sentences" in rec:
        raw = rec["sentences"]
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
            raise RefCocoFormatError(f"{where}: 'sentences' must be a list, got {type(raw).__name__}")
        out = []
        for j, s in enumerate(raw):
            if isinstance(s, dict):
                text = s.get("sent", s.get("raw"))
                if not isinstance(text, str):
                    raise RefCocoFormatError(
                        f"{where}: sentence {j} must have a 'sent' (or 'raw') string, got the keys {sorted(s)}"
                    )
            elif isinstance(s, str):
                text = s
            else:
                raise RefCocoFormatError(f"{where}: sentence {j} must be a dict or a str, got {type(s).__name__}")
            out.append(text)
    elif "expression" in rec:
        if not isinstance(rec["expression"], str):
            raise RefCocoFormatError(
                f"{where}: 'expression' must be a str, got {type(rec['expression']).__name__}"
            )
        out = [rec["expression"]]
    else:
        raise RefCocoFormatError(f"{where}: needs 'sentences' (a list) or 'expression' (a str); "
                                 f"it has the keys {sorted(rec)}")
    out = [" ".join(s.split()) for s in out]
    if not out or any(not s for s in out):
        raise RefCocoFormatError(f"{where}: every expression must be a non-empty string, got {out!r}")
    return out


def _file_name(rec: dict, where: str, file_pattern: str) -> str:
    if "file_name" in rec:
        name = rec["file_name"]
        if not isinstance(name, str) or not name.strip():
            raise RefCocoFormatError(f"{where}: 'file_name' must be a non-empty str, got {name!r}")
        return name
    if "image_id" in rec:
        try:
            return file_pattern.format(image_id=rec["image_id"])
        except (ValueError, TypeError, KeyError, IndexError) as err:
            raise RefCocoFormatError(
                f"{where}: could not make a file name from image_id={rec['image_id']!r} with the pattern "
                f"{file_pattern!r} ({err}); pass file_pattern= or give each record a 'file_name'"
            ) from None
    raise RefCocoFormatError(f"{where}: needs 'file_name' or 'image_id'; it has the keys {sorted(rec)}")


def _number(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RefCocoFormatError(f"{where}: {what} must be a number, got {value!r}")
    f = float(value)
    if not math.isfinite(f):
        raise RefCocoFormatError(f"{where}: {what} must be finite, got {value!r}")
    return f


def _size(rec: dict, where: str, file_name: str, image_root: Path | None) -> tuple[int, int]:
    if "width" in rec or "height" in rec:
        if "width" not in rec or "height" not in rec:
            raise RefCocoFormatError(f"{where}: give both 'width' and 'height', or neither")
        size = []
        for key in ("width", "height"):
            v = rec[key]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise RefCocoFormatError(f"{where}: {key!r} must be a positive int (pixels), got {v!r}")
            size.append(v)
        return size[0], size[1]
    if image_root is None:
        raise RefCocoFormatError(
            f"{where}: has no 'width'/'height'; add them, or pass image_root= so the size is read from the image"
        )
    from PIL import Image, UnidentifiedImageError

    path = image_root / file_name
    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except FileNotFoundError:
        raise RefCocoFormatError(f"{where}: has no 'width'/'height' and its image {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as err:
        raise RefCocoFormatError(f"{where}: could not read the size of {str(path)!r}: {err}") from None


def _box(rec: dict, where: str, width: int, height: int) -> Box:
    if "bbox" not in rec:
        raise RefCocoFormatError(f"{where}: needs 'bbox' = [x, y, w, h] in pixels; it has the keys {sorted(rec)}")
    bbox = rec["bbox"]
    if isinstance(bbox, (str, bytes, dict)) or not isinstance(bbox, Sequence) or len(bbox) != 4:
        raise RefCocoFormatError(f"{where}: 'bbox' must be [x, y, w, h] (4 numbers, pixels), got {bbox!r}")
    x, y, w, h = (_number(v, "each 'bbox' value", where) for v in bbox)
    if w <= 0 or h <= 0:
        raise RefCocoFormatError(
            f"{where}: 'bbox' {list(bbox)} has no area: COCO boxes are [x, y, width, height] with width > 0 "
            "and height > 0 (is it [x0, y0, x1, y1] with x1 < x0?)"
        )
    tol = EDGE_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise RefCocoFormatError(
            f"{where}: 'bbox' {list(bbox)} ([x, y, w, h]) reaches beyond the image of {width} x {height} pixels "
            f"(it ends at x = {x + w:g}, y = {y + h:g})"
        )
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    return check_normalized((x0 / width, y0 / height, x1 / width, y1 / height))


def load_refcoco(
    source: str | os.PathLike | Sequence[dict] | dict,
    *,
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
    file_pattern: str = COCO_TRAIN2014_PATTERN,
) -> list[RefItem]:
    """Read RefCOCO-style annotations (see the module docstring) as a list of :class:`RefItem`.

    Args:
        source: a path to a JSON file, or the records themselves (a list of dicts, or an object holding
            the list under ``"refs"`` or ``"annotations"``).
        image_root: the folder the images are in; needed only to read sizes that the records lack.
        split: keep only records whose ``"split"`` equals this (``None`` keeps all). Asking for a split
            that no record has is an error, not an empty result.
        file_pattern: how a record with only an ``"image_id"`` names its image file.

    Returns:
        One item per sentence, in file order; boxes converted from COCO ``[x, y, w, h]`` pixels to
        normalized ``(x0, y0, x1, y1)``.

    Raises:
        RefCocoFormatError (a ``ValueError``): the file is missing or not JSON, a record lacks a field or
            holds a bad value (the message gives the record's index), or the selection is empty.
    """
    records = _records(source)
    root = Path(image_root) if image_root is not None else None
    items: list[RefItem] = []
    splits_seen: set = set()
    for i, rec in enumerate(records):
        where = f"record {i}"
        if not isinstance(rec, dict):
            raise RefCocoFormatError(f"{where}: expected a dict, got {type(rec).__name__}: {rec!r:.60}")
        if "ref_id" in rec:
            where += f" (ref_id {rec['ref_id']!r})"
        rec_split = rec.get("split")
        splits_seen.add(rec_split)
        if split is not None and rec_split != split:
            continue
        file_name = _file_name(rec, where, file_pattern)
        sentences = _sentences(rec, where)
        width, height = _size(rec, where, file_name, root)
        box = _box(rec, where, width, height)
        for sent in sentences:
            items.append(RefItem(file_name, sent, box, width, height, rec.get("ref_id"), rec_split))
    if not items:
        if split is not None:
            raise RefCocoFormatError(
                f"no record has split {split!r}; the splits present are {sorted(str(s) for s in splits_seen)}"
            )
        raise RefCocoFormatError("the annotations hold no records")
    return items


# --------------------------------------------------------------------------------------------- making files


def scenes_to_refcoco(scenes: Iterable, image_dir: str | os.PathLike, *, prefix: str = "scene") -> list[dict]:
    """Save synthetic scenes as PNGs in ``image_dir`` and describe them in the RefCOCO layout.

    Every group of a scene (one object, or two of one kind) becomes one record per object, with the
    expression ``"the red circle"`` for a single object and ``"the left red circle"`` /
    ``"the right red circle"`` for a pair, so every expression names exactly one box. Returns the records
    (write them with ``json.dump`` to get a file :func:`load_refcoco` reads).
    """
    from helpers.world.scenes import definite_phrase

    folder = Path(image_dir)
    folder.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    for i, scene in enumerate(scenes):
        name = f"{prefix}_{i:03d}.png"
        scene.image.save(folder / name)
        width, height = scene.image.size
        for group in scene.groups:
            for j, obj in enumerate(group):
                phrase = definite_phrase(obj.colour, obj.shape, 1)
                if len(group) > 1:
                    where = "left" if j == 0 else "right"
                    phrase = phrase.replace("the ", f"the {where} ", 1) if phrase.startswith("the ") else phrase
                x0, y0, x1, y1 = obj.box
                records.append({
                    "ref_id": len(records),
                    "image_id": i,
                    "file_name": name,
                    "width": width,
                    "height": height,
                    "bbox": [round(x0 * width, 2), round(y0 * height, 2),
                             round((x1 - x0) * width, 2), round((y1 - y0) * height, 2)],
                    "sentences": [{"sent": phrase}],
                    "split": "val",
                })
    return records


# --------------------------------------------------------------------------------------------- evaluating


@dataclass
class ComprehensionResult:
    """What :func:`evaluate_comprehension` found: the score and one row per expression."""

    score: Score
    rows: list[dict] = field(default_factory=list)
    threshold: float = IOU_THRESHOLD

    @property
    def accuracy(self) -> float:
        """Share of expressions whose predicted box has IoU ≥ ``threshold`` with the annotated box."""
        return self.score.rate

    def accuracy_at(self, threshold: float) -> float:
        """The accuracy if a hit needed IoU ≥ ``threshold`` instead (no model run needed).

        An answer without a box is a miss at every threshold, 0 included.
        """
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        if not self.rows:
            return float("nan")
        return sum(r["predicted"] is not None and r["iou"] >= threshold for r in self.rows) / len(self.rows)

    def __str__(self) -> str:
        return f"accuracy at IoU ≥ {self.threshold:g}: {self.score}"


def comprehension_prompt_for(expression: str) -> str:
    """The prompt the paper uses for comprehension: ``<grounding><phrase> {expression}</phrase>``."""
    from helpers.grounding.prompts import comprehension_prompt

    if not isinstance(expression, str) or not expression.strip():
        raise ValueError(f"an expression must be a non-empty str, got {expression!r}")
    return comprehension_prompt(" ".join(expression.split()))


def predicted_box(grounding) -> Box | None:
    """The answer's box: the first box of the first entity (``None`` when the answer has no box)."""
    for entity in grounding.entities:
        if entity.boxes:
            return tuple(entity.boxes[0])
    return None


def evaluate_comprehension(
    model,
    processor,
    items: Sequence[RefItem],
    image_root: str | os.PathLike,
    *,
    batch_size: int | None = None,
    max_new_tokens: int = 24,
    threshold: float = IOU_THRESHOLD,
    progress: bool | None = None,
) -> ComprehensionResult:
    """Ground every expression in its image and score the first predicted box against the annotation.

    A prediction counts when its IoU with the annotated box is at least ``threshold`` (0.5, as in the
    paper); an answer without any box counts as a miss with IoU 0. Each image is loaded once. Rows hold
    ``file_name``, ``expression``, ``truth`` and ``predicted`` (normalized boxes), ``iou``, ``hit`` and
    ``caption``.

    Raises:
        ValueError: ``items`` is empty or holds something other than :class:`RefItem`, or ``threshold``
            is outside [0, 1].
        helpers.grounding.images.ImageLoadError: an image is missing or unreadable (the message names the file).
    """
    from helpers.grounding.images import load_image
    from helpers.grounding.model import ground

    items = list(items)
    if not items:
        raise ValueError("items is empty: load annotations with load_refcoco() first")
    for i, it in enumerate(items):
        if not isinstance(it, RefItem):
            raise ValueError(f"items[{i}] must be a RefItem (from load_refcoco), got {type(it).__name__}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    root = Path(image_root)
    cache: dict[str, Any] = {}
    images = []
    for it in items:
        if it.file_name not in cache:
            cache[it.file_name] = load_image(root / it.file_name)
        images.append(cache[it.file_name])
    prompts = [comprehension_prompt_for(it.expression) for it in items]
    answers = ground(model, processor, images, prompts, max_new_tokens=max_new_tokens,
                     batch_size=batch_size, progress=progress)
    result = ComprehensionResult(Score(), threshold=threshold)
    for it, answer in zip(items, answers):
        box = predicted_box(answer)
        overlap = iou(box, it.box) if box is not None else 0.0
        hit = box is not None and overlap >= threshold
        result.score.add(hit)
        result.rows.append({
            "file_name": it.file_name, "expression": it.expression, "truth": it.box, "predicted": box,
            "iou": overlap, "hit": hit, "caption": answer.caption,
        })
    return result
