"""Referring-expression comprehension on RefCOCO, RefCOCO+ and RefCOCOg, read from the files as distributed.

The Kosmos-2 paper measures zero-shot comprehension on RefCOCO, RefCOCO+ and RefCOCOg: the model gets
``<grounding><phrase> {expression}</phrase>`` and answers with boxes; it is scored as the authors' script
scores it (:mod:`helpers.grounding.evaluation`: accuracy@1 with the first box given for the expression, and the
upper bound with any of them, both at IoU ≥ 0.5).

:func:`load_refcoco` reads three layouts:

1. **The refer toolkit's files** (``refs(unc).p`` for RefCOCO and RefCOCO+, ``refs(umd).p`` and
   ``refs(google).p`` for RefCOCOg), passed with ``instances=`` (the ``instances.json`` next to them). A refs
   file is a pickle: a list of refs, each with ``ref_id``, ``ann_id``, ``image_id``, ``split`` and
   ``sentences`` (``[{"sent": ..., "raw": ..., "sent_id": ...}]``). It is unpickled safely: only plain
   containers and scalars are accepted, anything else is refused (a pickle can run code). The box
   (``bbox``, COCO's ``[x, y, w, h]`` pixels) comes from the annotation ``ann_id`` of ``instances.json``, the
   image's real file name and size from its image entry (a ref's own ``file_name``,
   ``COCO_train2014_000000581857_16.jpg``, carries the annotation id as a suffix and is no file).
2. **MDETR's COCO-style files** (``finetune_refcoco_val.json`` …, what the Kosmos-2 authors' evaluation
   reads): one ``images[]`` entry per expression (``caption``, ``file_name``, ``width``, ``height``,
   ``original_id``) and its box in the ``annotations[]`` entry with that ``image_id``. The split is the one
   in the file's name. A file whose ``dataset_name`` values differ (MDETR's ``final_refexp_*.json``) is refused:
   the paper scores each data set alone.
3. **A list of records** (a JSON file holding the list, the list itself, or an object holding it under
   ``"refs"`` or ``"annotations"``), each with the image (``"file_name"``, or ``"image_id"`` turned into a
   file name with ``file_pattern``), ``"bbox"`` (COCO ``[x, y, w, h]`` pixels), the expression(s)
   (``"sentences"``: a list of ``{"sent": ...}`` / ``{"raw": ...}`` dicts or strings, or ``"expression"``),
   ``"width"`` and ``"height"`` (or ``image_root=`` to read them from the images), and optionally
   ``"split"`` and ``"ref_id"``.

``split=`` follows the refer toolkit: ``"train"``, ``"val"``, ``"testAB"`` … match exactly; ``"testA"``,
``"testB"``, ``"testC"`` match every test split holding that letter; ``"test"`` matches every test split.

Every expression becomes one :class:`RefItem` (its box converted by
:func:`helpers.grounding.boxes.coco_to_normalized`). A box reaching more than a pixel outside its image or
with nothing inside it, a missing annotation or image entry, or a malformed record is an error naming the
file and the record.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from helpers.grounding.boxes import Box, coco_to_normalized, normalized_to_coco
from helpers.grounding.checks import is_positive_int, read_json
from helpers.grounding.evaluation import (BENCHMARK_MAX_NEW_TOKENS, IOU_THRESHOLD, PhraseScores, Score, check_items,
                                          check_threshold, ground_on_files, score_phrase)
from helpers.grounding.images import ImageLoadError, stored_size
from helpers.grounding.prompts import comprehension_prompt


#: How RefCOCO's ``image_id`` becomes a file name in the COCO ``train2014`` folder.
COCO_TRAIN2014_PATTERN = "COCO_train2014_{image_id:012d}.jpg"

#: Split names the refer toolkit accepts (RefCOCO and RefCOCO+: train, val, testA, testB; RefCOCOg: train,
#: val and, in the umd split, test).
SPLITS = ("train", "val", "test", "testA", "testB", "testC", "testAB", "testBC", "testAC")

_PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")
_MDETR_NAME = re.compile(r"finetune_(?P<dataset>.+)_(?P<split>[A-Za-z]+)\.json$")


class RefCocoFormatError(ValueError):
    """An annotation file or record is not in the expected layout; the message names the file and record."""


@dataclass(frozen=True)
class RefItem:
    """One referring expression: the image file, the sentence and the normalized box it refers to.

    ``image_id`` and ``ann_id`` are COCO's ids of the image and of the referred object's annotation;
    ``sent_id`` is the refer toolkit's sentence id (``None`` where the layout has none).
    """

    file_name: str
    expression: str
    box: Box
    width: int
    height: int
    ref_id: Any = None
    split: str | None = None
    image_id: Any = None
    ann_id: Any = None
    sent_id: Any = None

    @property
    def box_px(self) -> Box:
        """The box in pixels, ``(x0, y0, x1, y1)``."""
        x0, y0, x1, y1 = self.box
        return (x0 * self.width, y0 * self.height, x1 * self.width, y1 * self.height)


def split_matches(wanted: str, split: Any) -> bool:
    """Does a record's ``split`` belong to ``wanted``, by the refer toolkit's rules (module docstring)?"""
    if not isinstance(split, str):
        return False
    if wanted in ("testA", "testB", "testC"):
        return split.startswith("test") and wanted[-1] in split
    if wanted == "test":
        return "test" in split
    return split == wanted


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise RefCocoFormatError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)} (or None for all)")


# --------------------------------------------------------------------------------------------- reading files


class _Refused(Exception):
    """A pickle asked for a Python object (a class or function)."""


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only what needs no class: lists, dicts, tuples, strings, numbers, booleans and None."""

    def find_class(self, module: str, name: str):  # noqa: D102 - called by pickle for every class reference
        raise _Refused(
            f"it refers to the Python object {module}.{name}; only plain lists, dicts, strings and numbers are "
            "read, because unpickling anything else can run code"
        )


def read_plain_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` allowing only plain containers and scalars (Python 2 strings decoded as UTF-8).

    Raises:
        RefCocoFormatError: the file is missing, truncated, not a pickle, or holds anything but plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise RefCocoFormatError(f"refs file {str(path)!r} does not exist (or is not a file)")
    data = path.read_bytes()
    try:
        return _PlainUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except _Refused as err:
        raise RefCocoFormatError(f"refs file {str(path)!r} was refused: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError, TypeError, AttributeError,
            UnicodeDecodeError) as err:
        raise RefCocoFormatError(
            f"refs file {str(path)!r} is not a complete pickle ({type(err).__name__}: {err}); expected the refer "
            "toolkit's refs(unc).p / refs(umd).p / refs(google).p, downloaded in full"
        ) from None


#: What each file :func:`load_refcoco` reads should hold, for its messages.
_ANNOTATIONS = ("an MDETR finetune_*.json, a JSON file of records, or a refer toolkit refs file (a pickle, "
                "named *.p: refs(unc).p …)")
_INSTANCES = "the refer toolkit's instances.json (an object with 'images' and 'annotations')"


def _is_pickle(path: Path) -> bool:
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(1) == b"\x80"  # the first byte of every binary pickle (protocol 2 and above)
    except OSError:
        return False


def _by_id(entries: Any, what: str, source: str) -> dict:
    if not isinstance(entries, list):
        raise RefCocoFormatError(f"{source}: {what!r} must be a list, got {type(entries).__name__}")
    out = {}
    for j, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry:
            raise RefCocoFormatError(f"{source}: {what}[{j}] must be a dict with an 'id', got {entry!r:.80}")
        out[entry["id"]] = entry
    return out


# --------------------------------------------------------------------------------------------- fields


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


def _size(rec: dict, where: str, file_name: str, image_root: Path | None) -> tuple[int, int]:
    if "width" in rec or "height" in rec:
        if "width" not in rec or "height" not in rec:
            raise RefCocoFormatError(f"{where}: give both 'width' and 'height', or neither")
        size = []
        for key in ("width", "height"):
            v = rec[key]
            if not is_positive_int(v):
                raise RefCocoFormatError(f"{where}: {key!r} must be a positive int (pixels), got {v!r}")
            size.append(int(v))
        return size[0], size[1]
    if image_root is None:
        raise RefCocoFormatError(
            f"{where}: has no 'width'/'height'; add them, or pass image_root= so the size is read from the image"
        )
    try:
        return stored_size(image_root / file_name)  # the header alone: the stored size, as COCO's boxes use it
    except ImageLoadError as err:
        raise RefCocoFormatError(f"{where}: has no 'width'/'height', and the size of its image could not be read: "
                                 f"{err}") from None


def _box(rec: dict, where: str, width: int, height: int) -> Box:
    if "bbox" not in rec:
        raise RefCocoFormatError(f"{where}: needs 'bbox' = [x, y, w, h] in pixels; it has the keys {sorted(rec)}")
    try:
        return coco_to_normalized(rec["bbox"], (width, height), what="'bbox'")
    except ValueError as err:
        raise RefCocoFormatError(f"{where}: {err}") from None


# --------------------------------------------------------------------------------------------- the three layouts


def _from_refer(refs: Any, instances: Any, name: str, split: str | None) -> list[RefItem]:
    if isinstance(instances, (str, os.PathLike)):
        inst_name = str(instances)
        instances = read_json(instances, "instances file", _INSTANCES, error=RefCocoFormatError)
    else:
        inst_name = "instances"
    if not isinstance(instances, dict) or not {"images", "annotations"} <= set(instances):
        raise RefCocoFormatError(
            f"{inst_name}: expected the refer toolkit's instances.json (an object with 'images' and "
            f"'annotations'), got {type(instances).__name__}"
            + (f" with the keys {sorted(instances)[:10]}" if isinstance(instances, dict) else "")
        )
    images = _by_id(instances["images"], "images", inst_name)
    anns = _by_id(instances["annotations"], "annotations", inst_name)
    if not isinstance(refs, list):
        raise RefCocoFormatError(f"{name}: expected a list of refs, got {type(refs).__name__}")
    items: list[RefItem] = []
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise RefCocoFormatError(f"{name}: ref {i} must be a dict, got {type(ref).__name__}")
        where = f"{name}: ref {i} (ref_id {ref.get('ref_id')!r})"
        for key in ("ann_id", "image_id", "split", "sentences"):
            if key not in ref:
                raise RefCocoFormatError(f"{where}: needs {key!r}; it has the keys {sorted(ref)}")
        if split is not None and not split_matches(split, ref["split"]):
            continue
        ann = anns.get(ref["ann_id"])
        if ann is None:
            raise RefCocoFormatError(
                f"{where}: its annotation ann_id {ref['ann_id']!r} is not in {inst_name} (is it the "
                "instances.json of the same data set?)"
            )
        image = images.get(ref["image_id"])
        if image is None:
            raise RefCocoFormatError(f"{where}: its image image_id {ref['image_id']!r} is not in {inst_name}")
        if ann.get("image_id") != ref["image_id"]:
            raise RefCocoFormatError(
                f"{where}: annotation {ref['ann_id']!r} belongs to image {ann.get('image_id')!r}, the ref to image "
                f"{ref['image_id']!r}"
            )
        file_name = _file_name(image, f"{inst_name}: image {ref['image_id']!r}", COCO_TRAIN2014_PATTERN)
        width, height = _size(image, f"{inst_name}: image {ref['image_id']!r}", file_name, None)
        box = _box(ann, f"{where}, annotation {ref['ann_id']!r}", width, height)
        sentences = ref["sentences"]
        texts = _sentences(ref, where)
        for sent, text in zip(sentences, texts):
            sent_id = sent.get("sent_id") if isinstance(sent, dict) else None
            items.append(RefItem(file_name, text, box, width, height, ref.get("ref_id"), ref["split"],
                                 ref["image_id"], ref["ann_id"], sent_id))
    return items


def _from_mdetr(data: dict, name: str, split: str | None) -> list[RefItem]:
    match = _MDETR_NAME.search(name)
    file_split = match.group("split") if match else None
    if split is not None:
        if file_split is None:
            raise RefCocoFormatError(
                f"{name}: an MDETR file holds one split, named in its file name (finetune_refcoco_val.json); "
                f"this name does not say which, so split={split!r} cannot be checked: pass split=None"
            )
        if not split_matches(split, file_split):
            raise RefCocoFormatError(f"{name} holds the split {file_split!r}, not {split!r}")
    datasets = sorted({str(im["dataset_name"]) for im in data["images"]
                       if isinstance(im, dict) and "dataset_name" in im})
    if len(datasets) > 1:
        raise RefCocoFormatError(
            f"{name} holds the expressions of {', '.join(datasets)} together (MDETR's final_refexp files do), "
            "and one score over them matches no published figure: pass one data set's file, "
            "finetune_<data set>_<split>.json"
        )
    anns: dict = {}
    for j, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise RefCocoFormatError(f"{name}: annotations[{j}] must be a dict with an 'image_id', got {ann!r:.80}")
        if ann["image_id"] in anns:
            raise RefCocoFormatError(
                f"{name}: annotations[{j}] is a second box for expression (images[].id) {ann['image_id']!r}; "
                "a referring expression has exactly one"
            )
        anns[ann["image_id"]] = ann
    items: list[RefItem] = []
    for j, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image:
            raise RefCocoFormatError(f"{name}: images[{j}] must be a dict with an 'id', got {image!r:.80}")
        where = f"{name}: images[{j}] (id {image['id']!r})"
        if not isinstance(image.get("caption"), str) or not image["caption"].strip():
            raise RefCocoFormatError(f"{where}: 'caption' (the expression) must be a non-empty str, "
                                     f"got {image.get('caption')!r}")
        ann = anns.get(image["id"])
        if ann is None:
            raise RefCocoFormatError(f"{where}: no annotation has image_id {image['id']!r}, "
                                     "so the expression has no box")
        file_name = _file_name(image, where, COCO_TRAIN2014_PATTERN)
        width, height = _size(image, where, file_name, None)
        box = _box(ann, f"{where}, its annotation {ann.get('id')!r}", width, height)
        items.append(RefItem(file_name, " ".join(image["caption"].split()), box, width, height, None, file_split,
                             image.get("original_id"), ann.get("original_id")))
    return items


def _from_records(records: list, name: str, split: str | None, image_root: Path | None,
                  file_pattern: str) -> list[RefItem]:
    items: list[RefItem] = []
    for i, rec in enumerate(records):
        where = f"{name}: record {i}"
        if not isinstance(rec, dict):
            raise RefCocoFormatError(f"{where}: expected a dict, got {type(rec).__name__}: {rec!r:.60}")
        if "ref_id" in rec:
            where += f" (ref_id {rec['ref_id']!r})"
        rec_split = rec.get("split")
        if split is not None and not split_matches(split, rec_split):
            continue
        file_name = _file_name(rec, where, file_pattern)
        sentences = _sentences(rec, where)
        width, height = _size(rec, where, file_name, image_root)
        box = _box(rec, where, width, height)
        for sent in sentences:
            items.append(RefItem(file_name, sent, box, width, height, rec.get("ref_id"), rec_split,
                                 rec.get("image_id"), rec.get("ann_id")))
    return items


def load_refcoco(
    source: str | os.PathLike | Sequence[dict] | dict,
    *,
    instances: str | os.PathLike | dict | None = None,
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
    file_pattern: str = COCO_TRAIN2014_PATTERN,
) -> list[RefItem]:
    """Read RefCOCO / RefCOCO+ / RefCOCOg annotations (the layouts in the module docstring) as :class:`RefItem`.

    Args:
        source: a refer toolkit refs pickle (``refs(unc).p`` …), an MDETR ``finetune_*.json``, a JSON file of
            records, or the records themselves (a list of dicts, or an object holding them under ``"refs"``).
        instances: the refer toolkit's ``instances.json`` (a path or its loaded object); needed with, and only
            with, a refs pickle.
        image_root: the folder the images are in; needed only to read sizes that records lack.
        split: keep the expressions of this split (refer toolkit rules, see the module docstring); ``None``
            keeps all. An unknown name, or a split with no expression, is an error.
        file_pattern: how a record with only an ``"image_id"`` names its image file (layout 3).

    Returns:
        One item per expression, in file order; boxes converted from COCO ``[x, y, w, h]`` pixels to
        normalized ``(x0, y0, x1, y1)``.

    Raises:
        RefCocoFormatError (a ``ValueError``): a file is missing, truncated or of the wrong kind, a record lacks
            a field or holds a bad value (the message names the file and the record), or the selection is empty.
    """
    _check_split(split)
    root = Path(image_root) if image_root is not None else None
    name = "records"
    refs = None
    data: Any = source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise RefCocoFormatError(f"annotation file {name!r} does not exist (or is not a file); expected "
                                     f"{_ANNOTATIONS}")
        if _is_pickle(path):
            refs = read_plain_pickle(path)
        else:
            data = read_json(path, "annotation file", _ANNOTATIONS, error=RefCocoFormatError)
    if refs is None and instances is not None and isinstance(data, list):
        refs = data  # refs already unpickled by the caller
    if refs is not None:
        if instances is None:
            raise RefCocoFormatError(
                f"{name} is a refer toolkit refs file; its boxes and image sizes are in instances.json: pass "
                "instances='…/instances.json', the file next to it (--instances on the command line)"
            )
        items = _from_refer(refs, instances, name, split)
        splits = {r.get("split") for r in refs if isinstance(r, dict)}
    else:
        if instances is not None:
            raise RefCocoFormatError("instances= (--instances) goes with a refer toolkit refs pickle; "
                                     f"{name} is not one")
        if (isinstance(data, dict) and isinstance(data.get("images"), list)
                and isinstance(data.get("annotations"), list)):
            if not all(isinstance(im, dict) and "caption" in im for im in data["images"][:1]):
                raise RefCocoFormatError(
                    f"{name} looks like COCO's instances.json (images without a 'caption'): pass it as instances= "
                    "(--instances) together with the refs file (refs(unc).p …) as the source"
                )
            items = _from_mdetr(data, name, split)
            match = _MDETR_NAME.search(name)
            splits = {match.group("split")} if match else {None}
        else:
            if isinstance(data, dict):
                for key in ("refs", "annotations"):
                    if isinstance(data.get(key), list):
                        data = data[key]
                        break
                else:
                    raise RefCocoFormatError(
                        f"{name}: expected a list of annotation records, an object with the list under 'refs' or "
                        f"'annotations', or an MDETR file with 'images' and 'annotations'; got an object with the "
                        f"keys {sorted(data)[:10]}"
                    )
            if not isinstance(data, (list, tuple)):
                raise RefCocoFormatError(
                    "expected a path to a refs pickle or a JSON file, or a list of annotation records (dicts); "
                    f"got {type(data).__name__}"
                )
            items = _from_records(list(data), name, split, root, file_pattern)
            splits = {r.get("split") for r in data if isinstance(r, dict)}
    if not items:
        if split is not None:
            raise RefCocoFormatError(
                f"{name}: no expression is in split {split!r}; the splits present are "
                f"{sorted(str(s) for s in splits)}"
            )
        raise RefCocoFormatError(f"{name}: the annotations hold no expressions")
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
                records.append({
                    "ref_id": len(records),
                    "image_id": i,
                    "file_name": name,
                    "width": width,
                    "height": height,
                    "bbox": [round(v, 2) for v in normalized_to_coco(obj.box, (width, height))],
                    "sentences": [{"sent": phrase}],
                    "split": "val",
                })
    return records


def write_refer_files(records: Sequence[dict], folder: str | os.PathLike, *,
                      split_by: str = "unc") -> tuple[Path, Path]:
    """Write records (as :func:`scenes_to_refcoco` makes them) in the refer toolkit's layout.

    ``folder/refs(<split_by>).p`` gets one ref per record (``ref_id``, ``ann_id``, ``image_id``, ``split``,
    ``sentences``, and the toolkit's ``file_name`` with the annotation id as suffix) and
    ``folder/instances.json`` the images (file name and size) and annotations (``bbox``). Returns both paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    refs, images, annotations = [], {}, []
    for i, rec in enumerate(records):
        ann_id, stem = 1000 + i, Path(rec["file_name"]).stem
        images[rec["image_id"]] = {"id": rec["image_id"], "file_name": rec["file_name"], "width": rec["width"],
                                   "height": rec["height"]}
        annotations.append({"id": ann_id, "image_id": rec["image_id"], "bbox": list(rec["bbox"]), "category_id": 1,
                            "iscrowd": 0, "area": rec["bbox"][2] * rec["bbox"][3]})
        sentences = [{"sent": s["sent"], "raw": s["sent"], "tokens": s["sent"].split(), "sent_id": 10 * i + j}
                     for j, s in enumerate(rec["sentences"])]
        refs.append({"ref_id": rec["ref_id"], "ann_id": ann_id, "image_id": rec["image_id"], "category_id": 1,
                     "split": rec["split"], "file_name": f"{stem}_{ann_id}{Path(rec['file_name']).suffix}",
                     "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences})
    refs_path, instances_path = folder / f"refs({split_by}).p", folder / "instances.json"
    refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    instances_path.write_text(json.dumps({"images": list(images.values()), "annotations": annotations,
                                          "categories": [{"id": 1, "name": "object"}]}), encoding="utf-8")
    return refs_path, instances_path


def write_mdetr_file(records: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write records (as :func:`scenes_to_refcoco` makes them) as an MDETR ``finetune_*.json``.

    One ``images[]`` entry per expression (``caption``, ``file_name``, size, ``original_id``) and its box in
    the ``annotations[]`` entry with the same ``image_id``. Returns the path.
    """
    images, annotations = [], []
    for i, rec in enumerate(records):
        for s in rec["sentences"]:
            n = len(images)
            images.append({"id": n, "file_name": rec["file_name"], "width": rec["width"], "height": rec["height"],
                           "original_id": rec["image_id"], "caption": s["sent"], "dataset_name": "refcoco"})
            annotations.append({"id": n, "image_id": n, "bbox": list(rec["bbox"]), "category_id": 1,
                                "original_id": 1000 + i})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "object"}]}), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------- evaluating


@dataclass
class ComprehensionResult:
    """What :func:`evaluate_comprehension` found: the two scores and one row per expression.

    ``score`` is accuracy@1 (the first box the answer gives for the expression hits the annotated box, the
    figure the paper reports); ``upper_bound`` counts an expression when any of its boxes hits.
    """

    score: Score
    rows: list[dict] = field(default_factory=list)
    threshold: float = IOU_THRESHOLD
    upper_bound: Score = field(default_factory=Score)

    @property
    def accuracy(self) -> float:
        """Accuracy@1: share of expressions whose first box for the expression has IoU ≥ ``threshold``."""
        return self.score.rate

    def accuracy_at(self, threshold: float) -> float:
        """Accuracy@1 if a hit needed IoU ≥ ``threshold`` instead (no model run needed).

        An answer without a box for the expression is a miss at every threshold, 0 included.

        Raises:
            ValueError: ``threshold`` is not a number in [0, 1]
                (:func:`helpers.grounding.evaluation.check_threshold`).
        """
        threshold = check_threshold(threshold)
        if not self.rows:
            return float("nan")
        return sum(r["predicted"] is not None and r["iou"] >= threshold for r in self.rows) / len(self.rows)

    def __str__(self) -> str:
        return (f"accuracy@1 at IoU ≥ {self.threshold:g}: {self.score}; "
                f"upper bound (any box of the expression): {self.upper_bound}")


def comprehension_prompt_for(expression: str) -> str:
    """The prompt the paper uses for comprehension: ``<grounding><phrase> {expression}</phrase>``, the expression's
    white space made single spaces.

    Raises:
        ValueError: ``expression`` is not a str with a word in it (refused by
            :func:`helpers.grounding.prompts.comprehension_prompt`).
    """
    if isinstance(expression, str):
        expression = " ".join(expression.split())
    return comprehension_prompt(expression)


def evaluate_comprehension(
    model,
    processor,
    items: Sequence[RefItem],
    image_root: str | os.PathLike,
    *,
    batch_size: int | None = None,
    max_new_tokens: int = BENCHMARK_MAX_NEW_TOKENS,
    threshold: float = IOU_THRESHOLD,
    decoding=None,
    progress: bool | None = None,
) -> ComprehensionResult:
    """Ground every expression in its image and score it as the Kosmos-2 authors' RefCOCO script does.

    The prompt is :func:`comprehension_prompt_for`; decoding is ``decoding`` (default
    :data:`helpers.grounding.model.AUTHORS_DECODING`: greedy with ``no_repeat_ngram_size=3``, the authors' setting).
    Only boxes whose phrase is the expression count (:func:`helpers.grounding.evaluation.score_phrase`): accuracy@1
    takes the first, the upper bound any; an answer without one is a miss with IoU 0. Images are loaded as stored (see
    :func:`helpers.grounding.evaluation.ground_on_files`). Rows hold ``file_name``, ``expression``, ``truth``,
    ``boxes`` (all boxes for the expression), ``predicted`` (the first) and its ``iou``, ``best_iou``, ``hit``,
    ``hit_any``, ``caption`` and the ids of the item.

    Raises:
        ValueError: ``items`` is empty or holds something other than :class:`RefItem`, or ``threshold``
            is outside [0, 1].
        helpers.grounding.images.ImageLoadError: an image is missing or unreadable (the message names the file).
    """
    items = check_items(items, RefItem, "load_refcoco", threshold)
    prompts = [comprehension_prompt_for(it.expression) for it in items]
    result = ComprehensionResult(Score(), threshold=threshold)
    scores = PhraseScores(result.score, result.upper_bound)
    answers = ground_on_files(model, processor, [it.file_name for it in items], prompts, image_root,
                              max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                              decoding=decoding)
    for i, answer in answers:
        it = items[i]
        row = score_phrase([it.box], answer, it.expression, scores, threshold)
        result.rows.append({
            "file_name": it.file_name, "expression": it.expression, "truth": it.box, **row,
            "caption": answer.caption, "split": it.split, "ref_id": it.ref_id, "image_id": it.image_id,
            "ann_id": it.ann_id, "sent_id": it.sent_id,
        })
    return result
