"""Flickr30k Entities: phrase grounding read from the official files and scored as the Kosmos-2 authors score it.

The data set (annotations from github.com/BryanPlummer/flickr30k_entities, images from the Flickr30k
site) holds, per image id:

* ``Sentences/<id>.txt`` — five captions, one per line, with the grounded phrases in bracket markup:
  ``[/EN#18/people A man] in [/EN#19/clothing an orange hat] ...``: entity id 18, type ``people``
  (several types are written one after the other, ``/EN#7/people/other``);
* ``Annotations/<id>.xml`` — the image's ``<size>`` and one ``<object>`` per box or per entity without
  one: its ``<name>`` elements are entity ids, then either a ``<bndbox>`` (``xmin ymin xmax ymax`` in
  pixels) or ``<nobndbox>1</nobndbox>`` (not visible) or ``<scene>1</scene>`` (the whole scene);
* ``train.txt`` / ``val.txt`` / ``test.txt`` next to the two folders list the image ids of each split;
  the images are ``flickr30k-images/<id>.jpg``.

:func:`load_flickr30k_entities` turns this into one :class:`PhraseItem` per phrase that has a box and
:func:`evaluate_phrase_grounding` scores a model on them. These choices follow the authors' evaluation
(their ``flickr_entities_evaluate.py`` and the prompts their ``cook_data.py`` writes):

* one query per phrase: the caption up to the phrase, then the phrase tagged,
  ``<grounding> A man in<phrase> an orange hat</phrase>``; the model answers with the phrase's boxes;
* a phrase whose entity has no box (scene, not visible, or not in the annotation file, like the
  ``notvisual`` entity 0) is skipped; skips are counted by reason in :attr:`Flickr30kEntities.skipped`;
* an entity's boxes are **not merged**: each is a target, and a predicted box hits when its IoU with any
  of them is at least 0.5;
* only boxes whose decoded phrase is the queried phrase count (:func:`helpers.grounding.evaluation.score_phrase`):
  R@1 (accuracy@1) takes the first, the upper bound any of them; no such box is a miss;
* results are given for all phrases and per phrase type; decoding is greedy with
  ``no_repeat_ngram_size=3`` (:data:`helpers.grounding.model.AUTHORS_DECODING`).

One difference: when a caption holds the same phrase text twice for different entities, their script
scores both against the boxes of the first; here each phrase is scored against its own entity's boxes.
Boxes are used as the XML gives them and normalized by the image size (IoU does not change under that
scaling). Images are loaded as stored, without EXIF rotation, as the boxes were drawn on those pixels.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from helpers.grounding.boxes import EDGE_TOLERANCE_PX, Box, coco_to_normalized
from helpers.grounding.evaluation import (BENCHMARK_MAX_NEW_TOKENS, IOU_THRESHOLD, PhraseScores, check_items,
                                          ground_on_files, score_phrase)


SPLITS = ("train", "val", "test")

#: Why a phrase was skipped (the keys of :attr:`Flickr30kEntities.skipped`).
SKIP_SCENE = "no box: the whole scene"
SKIP_NOT_VISIBLE = "no box: not visible"
SKIP_NOT_ANNOTATED = "no box: not in the annotation file"

_HEADER = re.compile(r"^\[/EN#(?P<id>\d+)(?P<types>(?:/[^/\s\]]+)+)$")


class Flickr30kFormatError(ValueError):
    """A Flickr30k Entities file is missing or malformed; the message names the file and the line or entity."""


@dataclass(frozen=True)
class PhraseItem:
    """One phrase of one caption, with the normalized boxes of its entity."""

    image_id: str
    sentence_index: int
    sentence: str
    phrase: str
    first_word: int
    entity_id: str
    types: tuple[str, ...]
    boxes: tuple[Box, ...]
    width: int
    height: int

    @property
    def file_name(self) -> str:
        """The image file in the ``flickr30k-images`` folder."""
        return f"{self.image_id}.jpg"

    @property
    def prefix(self) -> str:
        """The caption's words before the phrase."""
        return " ".join(self.sentence.split()[: self.first_word])

    @property
    def prompt(self) -> str:
        """The query: ``<grounding> {caption up to the phrase}<phrase> {phrase}</phrase>``."""
        before = f" {self.prefix}" if self.prefix else ""
        return f"<grounding>{before}<phrase> {self.phrase}</phrase>"


@dataclass
class Flickr30kEntities:
    """What :func:`load_flickr30k_entities` read: the phrases to ground and the phrases it skipped."""

    items: list[PhraseItem]
    skipped: Counter = field(default_factory=Counter)
    images: int = 0
    sentences: int = 0

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        return (f"{self.images} images, {self.sentences} captions, {len(self.items)} phrases with boxes; "
                f"skipped phrases: {skipped}")


# --------------------------------------------------------------------------------------------- reading


def parse_sentence(line: str, where: str) -> tuple[str, list[dict]]:
    """One caption line → ``(plain sentence, phrases)``; each phrase ``{"phrase", "first_word", "entity_id", "types"}``.

    Raises:
        Flickr30kFormatError: a ``[`` that does not open ``[/EN#<id>/<type>``, or a phrase that is never closed.
    """
    words: list[str] = []
    phrases: list[dict] = []
    current: dict | None = None
    for token in line.split():
        if current is None:
            if token.startswith("["):
                match = _HEADER.match(token)
                if match is None:
                    raise Flickr30kFormatError(
                        f"{where}: {token!r} should open a phrase as [/EN#<entity id>/<type> …]"
                    )
                current = {"words": [], "first_word": len(words), "entity_id": match.group("id"),
                           "types": tuple(match.group("types").strip("/").split("/"))}
            else:
                words.append(token)
            continue
        closing = token.endswith("]")
        word = token[:-1] if closing else token
        if word:
            current["words"].append(word)
            words.append(word)
        if closing:
            if not current["words"]:
                raise Flickr30kFormatError(f"{where}: the phrase of entity {current['entity_id']} has no words")
            phrases.append({"phrase": " ".join(current.pop("words")), **current})
            current = None
    if current is not None:
        raise Flickr30kFormatError(f"{where}: the phrase of entity {current['entity_id']} is never closed with ']'")
    return " ".join(words), phrases


def _int(element: ET.Element, tag: str, where: str) -> int:
    child = element.find(tag)
    text = child.text.strip() if child is not None and child.text else ""
    try:
        return int(text)
    except ValueError:
        raise Flickr30kFormatError(f"{where}: <{tag}> must hold an integer, got {text!r}") from None


def read_annotation(path: str | os.PathLike) -> dict:
    """Read one ``Annotations/<id>.xml``: ``{"width", "height", "boxes": {entity: [pixel boxes]}, "scene", "nobox"}``.

    Raises:
        Flickr30kFormatError: the file is missing or not XML, lacks ``<size>``, or holds a box without area
            or reaching more than a pixel outside the image.
    """
    path = Path(path)
    if not path.is_file():
        raise Flickr30kFormatError(f"annotation file {str(path)!r} does not exist")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise Flickr30kFormatError(f"annotation file {str(path)!r} is not valid XML: {err}") from None
    size = root.find("size")
    if size is None:
        raise Flickr30kFormatError(f"{path}: has no <size> (<width>, <height>) element")
    width, height = _int(size, "width", f"{path}: <size>"), _int(size, "height", f"{path}: <size>")
    if width <= 0 or height <= 0:
        raise Flickr30kFormatError(f"{path}: the image size must be positive, got {width} x {height}")
    out: dict = {"width": width, "height": height, "boxes": {}, "scene": set(), "nobox": set()}
    for k, obj in enumerate(root.findall("object")):
        names = [n.text.strip() for n in obj.findall("name") if n.text and n.text.strip()]
        if not names:
            raise Flickr30kFormatError(f"{path}: <object> {k} has no <name> (entity id)")
        where = f"{path}: <object> {k} (entity {', '.join(names)})"
        bndbox = obj.find("bndbox")
        if bndbox is None:
            for flag, key in (("scene", "scene"), ("nobndbox", "nobox")):
                if obj.find(flag) is not None and _int(obj, flag, where) > 0:
                    out[key].update(names)
            continue
        x0, y0, x1, y1 = (_int(bndbox, tag, where) for tag in ("xmin", "ymin", "xmax", "ymax"))
        if x1 <= x0 or y1 <= y0:
            raise Flickr30kFormatError(f"{where}: the box ({x0}, {y0}, {x1}, {y1}) has no area "
                                       "(xmax <= xmin or ymax <= ymin)")
        tol = EDGE_TOLERANCE_PX
        if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
            raise Flickr30kFormatError(
                f"{where}: the box ({x0}, {y0}, {x1}, {y1}) reaches beyond the image of {width} x {height} pixels"
            )
        if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
            raise Flickr30kFormatError(f"{where}: the box ({x0}, {y0}, {x1}, {y1}) lies outside the image of "
                                       f"{width} x {height} pixels: nothing of it is inside")
        for name in names:
            out["boxes"].setdefault(name, []).append((x0, y0, x1, y1))
    return out


def _normalized(box: tuple[int, int, int, int], width: int, height: int) -> Box:
    """A corner box of :func:`read_annotation` (checked there) as a normalized box, clipped to the image."""
    x0, y0, x1, y1 = box
    return coco_to_normalized([x0, y0, x1 - x0, y1 - y0], (width, height))


def _lines(path: Path, what: str) -> list[str]:
    """The file's non-blank lines; a file that is not UTF-8 text is a :class:`Flickr30kFormatError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise Flickr30kFormatError(
            f"{what} {str(path)!r} is not UTF-8 text (byte {err.start}): the data set's files are; "
            "was it re-encoded or replaced?"
        ) from None
    return [line for line in text.splitlines() if line.strip()]


def _image_ids(root: Path, split: str | None, image_ids: Iterable[str] | None) -> list[str]:
    if split is not None and image_ids is not None:
        raise ValueError("give split= or image_ids=, not both")
    if image_ids is not None:
        if isinstance(image_ids, (str, bytes)) or not isinstance(image_ids, Iterable):
            raise TypeError(f"image_ids must be a list of image ids, e.g. ['1000092795'], got "
                            f"{type(image_ids).__name__}: {image_ids!r:.80}")
        ids = [str(i) for i in image_ids]
        if not ids:
            raise ValueError("image_ids is empty")
        return ids
    if split is not None:
        if split not in SPLITS:
            raise Flickr30kFormatError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)} "
                                       "(or None for all)")
        listing = root / f"{split}.txt"
        if not listing.is_file():
            raise Flickr30kFormatError(
                f"split file {str(listing)!r} does not exist: it comes with the annotations (train.txt, val.txt, "
                "test.txt next to Sentences/ and Annotations/)"
            )
        ids = [line.strip() for line in _lines(listing, "split file")]
        if not ids:
            raise Flickr30kFormatError(f"split file {str(listing)!r} lists no image ids")
        return ids
    ids = sorted(p.stem for p in (root / "Sentences").glob("*.txt"))
    if not ids:
        raise Flickr30kFormatError(f"{str(root / 'Sentences')!r} holds no <image id>.txt files")
    return ids


def load_flickr30k_entities(
    root: str | os.PathLike,
    *,
    split: str | None = None,
    image_ids: Iterable[str] | None = None,
) -> Flickr30kEntities:
    """Read Flickr30k Entities from ``root`` (the folder holding ``Sentences/`` and ``Annotations/``).

    Args:
        root: the annotations folder (the data set's ``annotations.zip``, unpacked, with its split files).
        split: ``"train"``, ``"val"`` or ``"test"`` reads the image ids listed in ``root/<split>.txt``.
        image_ids: these images instead (e.g. a few for a quick look); ``None`` with no split reads every
            ``Sentences/*.txt``.

    Returns:
        One :class:`PhraseItem` per phrase with at least one box, image by image, caption by caption; phrases
        without a box are counted in ``skipped`` by reason (the module docstring says why).

    Raises:
        Flickr30kFormatError (a ``ValueError``): a missing or malformed file, naming the file and the line or
            entity; an unknown split.
        TypeError: ``image_ids`` is not a list of ids (a single id as a str, say).
    """
    root = Path(root)
    if not (root / "Sentences").is_dir() or not (root / "Annotations").is_dir():
        raise Flickr30kFormatError(
            f"{str(root)!r} should hold the folders Sentences/ and Annotations/ of Flickr30k Entities"
        )
    ids = _image_ids(root, split, image_ids)
    data = Flickr30kEntities(items=[])
    for image_id in ids:
        sentence_file = root / "Sentences" / f"{image_id}.txt"
        if not sentence_file.is_file():
            raise Flickr30kFormatError(f"sentence file {str(sentence_file)!r} does not exist (image {image_id})")
        ann = read_annotation(root / "Annotations" / f"{image_id}.xml")
        data.images += 1
        lines = _lines(sentence_file, "sentence file")
        for index, line in enumerate(lines):
            data.sentences += 1
            sentence, phrases = parse_sentence(line, f"{sentence_file}: line {index + 1}")
            for ph in phrases:
                entity = ph["entity_id"]
                boxes = ann["boxes"].get(entity)
                if not boxes:
                    reason = (SKIP_SCENE if entity in ann["scene"] else
                              SKIP_NOT_VISIBLE if entity in ann["nobox"] else SKIP_NOT_ANNOTATED)
                    data.skipped[reason] += 1
                    continue
                data.items.append(PhraseItem(
                    image_id, index, sentence, ph["phrase"], ph["first_word"], entity, ph["types"],
                    tuple(_normalized(b, ann["width"], ann["height"]) for b in boxes), ann["width"], ann["height"],
                ))
    return data


# --------------------------------------------------------------------------------------------- making files


def scenes_to_flickr30k(scenes: Iterable, root: str | os.PathLike, image_dir: str | os.PathLike) -> list[str]:
    """Write synthetic scenes in the Flickr30k Entities layout; returns the image ids (``"100000"`` …).

    Each scene becomes ``image_dir/<id>.jpg`` (JPEG, as the data set's images), ``root/Sentences/<id>.txt``
    with two captions (every group of objects is one entity, type ``other``; the second caption also names
    the whole picture, an entity without a box) and ``root/Annotations/<id>.xml`` with one box per object;
    ``root/test.txt`` lists the ids.
    """
    root, image_dir = Path(root), Path(image_dir)
    for folder in (root / "Sentences", root / "Annotations", image_dir):
        folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i, scene in enumerate(scenes):
        image_id = str(100000 + i)
        ids.append(image_id)
        scene.image.convert("RGB").save(image_dir / f"{image_id}.jpg", quality=95)
        width, height = scene.image.size
        tagged = [f"[/EN#{k + 1}/other {group[0].phrase}]" for k, group in enumerate(scene.groups)]
        listed = " , ".join(tagged[:-1]) + " and " + tagged[-1] if len(tagged) > 1 else tagged[0]
        first = f"[/EN#1/other {scene.groups[0][0].phrase[0].upper()}{scene.groups[0][0].phrase[1:]}]"
        lines = [f"An image of {listed} .", f"{first} is in [/EN#{len(tagged) + 1}/scene the picture] ."]
        (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        objects = []
        for k, group in enumerate(scene.groups):
            for obj in group:
                x0, y0, x1, y1 = obj.box
                objects.append(f"<object><name>{k + 1}</name><bndbox><xmin>{round(x0 * width)}</xmin>"
                               f"<ymin>{round(y0 * height)}</ymin><xmax>{round(x1 * width)}</xmax>"
                               f"<ymax>{round(y1 * height)}</ymax></bndbox></object>")
        objects.append(f"<object><name>{len(tagged) + 1}</name><nobndbox>0</nobndbox><scene>1</scene></object>")
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{''.join(objects)}</annotation>\n", encoding="utf-8")
    (root / "test.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    return ids


# --------------------------------------------------------------------------------------------- evaluating


@dataclass
class PhraseGroundingResult:
    """What :func:`evaluate_phrase_grounding` found: R@1 and the upper bound, overall and per phrase type."""

    scores: PhraseScores
    by_type: dict[str, PhraseScores] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    threshold: float = IOU_THRESHOLD
    skipped: Counter = field(default_factory=Counter)

    def table(self) -> str:
        """A Markdown table: all phrases, then each phrase type."""
        lines = ["| phrases | R@1 (accuracy@1) | upper bound (any box of the phrase) |", "| --- | --- | --- |",
                 f"| all | {self.scores.accuracy_at_1} | {self.scores.upper_bound} |"]
        lines += [f"| {kind} | {s.accuracy_at_1} | {s.upper_bound} |" for kind, s in sorted(self.by_type.items())]
        return "\n".join(lines)

    def __str__(self) -> str:
        return (f"R@1 (accuracy@1) at IoU ≥ {self.threshold:g}: {self.scores.accuracy_at_1}; "
                f"upper bound (any box of the phrase): {self.scores.upper_bound}")


def evaluate_phrase_grounding(model, processor, items: Flickr30kEntities | Sequence[PhraseItem],
                              image_root: str | os.PathLike, *, batch_size: int | None = None,
                              max_new_tokens: int = BENCHMARK_MAX_NEW_TOKENS, threshold: float = IOU_THRESHOLD,
                              decoding=None,
                              progress: bool | None = None) -> PhraseGroundingResult:
    """Ground every phrase in its caption and image, and score it as the authors do (module docstring).

    ``image_root`` is the ``flickr30k-images`` folder. ``decoding`` defaults to
    :data:`helpers.grounding.model.AUTHORS_DECODING`. Rows hold the item's ids, ``phrase``, ``prompt``, ``truth`` (all
    boxes of the entity), ``boxes`` (the answer's boxes for the phrase), ``predicted`` (the first) and its
    ``iou``, ``best_iou``, ``hit``, ``hit_any`` and ``caption``.

    Raises:
        ValueError: no items, items that are not :class:`PhraseItem`, or ``threshold`` outside [0, 1].
        helpers.grounding.images.ImageLoadError: an image is missing or unreadable (the message names the file).
    """
    skipped = items.skipped if isinstance(items, Flickr30kEntities) else Counter()
    items = check_items(items.items if isinstance(items, Flickr30kEntities) else items, PhraseItem,
                       "load_flickr30k_entities", threshold)
    result = PhraseGroundingResult(PhraseScores(), threshold=threshold, skipped=Counter(skipped))
    answers = ground_on_files(model, processor, [it.file_name for it in items], [it.prompt for it in items],
                              image_root, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                              decoding=decoding)
    for i, answer in answers:
        it = items[i]
        row = score_phrase(it.boxes, answer, it.phrase, result.scores, threshold)
        for kind in it.types:
            kind_scores = result.by_type.setdefault(kind, PhraseScores())
            kind_scores.accuracy_at_1.add(row["hit"])
            kind_scores.upper_bound.add(row["hit_any"])
        result.rows.append({
            "image_id": it.image_id, "sentence_index": it.sentence_index, "entity_id": it.entity_id,
            "types": list(it.types), "phrase": it.phrase, "prompt": it.prompt, "truth": list(it.boxes), **row,
            "caption": answer.caption,
        })
    return result
