"""Fine-tune Kosmos-2 on your own boxes: LoRA adapters, optionally on a 4-bit base (QLoRA).

``python -m helpers finetune --data ANNOTATIONS --images DIR --base MODEL --out DIR [--minutes N | --steps N]``
exits with 0 when the adapters are saved, 2 for bad input (an option, checked before anything is read or
loaded, the data, the output folder), 1 when the base model cannot be loaded, each with a message on stderr.

**Data.** COCO detection format (``images`` with ``id``, ``file_name``, ``width``, ``height``;
``annotations`` with ``image_id``, ``category_id`` and ``bbox`` ``[x, y, w, h]`` in pixels; ``categories``
with ``id`` and ``name``, optionally ``plural`` for nouns that do not take an ``s``). As in COCO, boxes are
measured on the picture the record's ``width`` and ``height`` describe: the file as stored (not turned by its
EXIF orientation), or a scaled copy of the same shape; a record that gives the size an EXIF tag turns the file
to (as annotation tools that show photos turned write it) is read turned. Referring expressions
come either on the annotations themselves (``"sentences"``, as RefCOCO's refs, or ``"expression"``) or from a
RefCOCO-style file (``refs=``, read by :func:`helpers.grounding.refcoco.load_refcoco`).

**Texts.** Every image gives Kosmos-2 grounded texts in the format of :mod:`helpers.world.language`: a brief caption
listing its objects with their location tokens (``<grounding> An image of`` → ``<phrase> a cat</phrase>
<object>…</object> and …``), one comprehension prompt per category (``<grounding><phrase> the cat
</phrase>`` → its boxes), one grounded question per object (``Question: What is<phrase> this object
</phrase><object>…</object>? Answer:`` → `` It is a cat.``) and one comprehension prompt per referring
expression. They are encoded by the training recipe's :func:`helpers.world.training.encode_example`: the loss
falls on the answer only.

**Adapters.** LoRA (``peft``) on every linear layer of the text decoder (attention ``q/k/v/out_proj`` and
the feed-forward ``fc1/fc2``) and of the image-to-text projection (``dense`` and its cross-attention over
the latent queries): new names are words the decoder must write, and new kinds of boxes depend on how the
projection summarises the image. With ``vision=True`` the vision tower's layers get adapters too (a new
*look*, such as a new background; its backward pass costs memory). The embedding rows of the tokens that
spell the words you declare new (``new_words``) are trained too (peft's trainable tokens; the output layer
shares them): a word the base never wrote, spelled with pieces it rarely saw, needs them. All other
embeddings stay frozen, the 1 024 location tokens among them: they already mean the same boxes for every
task, and the words the base knows keep their meaning. Rank 16 (scale
``alpha / r = 2``): 16 directions per layer are plenty for a handful of new names and kinds, and on the
real model (24 decoder layers of width 2 048) the adapters stay about 1 % of its parameters.

**QLoRA.** ``quantization="4bit"`` loads the frozen base in 4 bits (``helpers.load``), prepares it
with ``peft.prepare_model_for_kbit_training`` and trains the adapters in full precision with gradient
checkpointing (activations recomputed in the backward pass instead of stored).

**Speed.** ``bf16=True`` runs the forward passes under bfloat16 autocast (the adapters, the optimizer and the
loss stay float32), for large models on GPUs and on CPUs with AMX or AVX-512 BF16. It is refused on a GPU
without native bfloat16 (compute capability below 8.0, such as a T4, which would only emulate it, slowly:
:func:`helpers.grounding.model.check_bf16`); leave it out there. On the tiny bundled model
it does not pay: on two such cores 60 steps of 16 texts ran at 3.0 steps per second in bfloat16 and 3.4 in
float32 (the stars demonstration, :mod:`helpers.world.new_kinds`, made 1 833 steps in 9.7 minutes with it).

**Output.** ``out`` holds ``adapter_model.safetensors`` and ``adapter_config.json`` (peft), ``finetune.json``
(data, steps, losses, the base's signature, figures), ``README.md`` (a small card) and ``optimizer.safetensors``
(to resume). Everything is written to a temporary folder beside ``out`` and renamed into place, so an error
never leaves a half-written ``out``. Load with ``helpers.load(base, adapter=out)``; merge the adapters
into the weights for speed with ``model = model.merge_and_unload()``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import numbers
import os
import random
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

from helpers.grounding import model as grounding_model
from helpers.grounding.boxes import coco_to_normalized
from helpers.grounding.checks import (DefaultsHelpFormatter, check_bool, check_count, check_positive_int,
                                      check_positive_number, check_seed, fail, out_problem, parse, positive_int_option,
                                      positive_number_option, read_json, write_files)
from helpers.grounding.evaluation import (BENCHMARK_MAX_NEW_TOKENS, CaptionScores, Score, format_score, score_any_box,
                                         score_caption)
from helpers.grounding.images import ImageLoadError, load_image, stored_size
from helpers.grounding.model import (ModelLoadError, check_bf16, check_device, default_dtype, describe_device,
                                     parameter_count, parameters_from_config, try_gpu)
from helpers.grounding.progress import interactive
from helpers.grounding.prompts import (CAPTION_PROMPT, comprehension_prompt, grounded, join_phrases, qa_answer,
                                       qa_prompt, with_box)
from helpers.grounding.tokens import object_tokens

#: Linear layers that get LoRA adapters (a regular expression over module names, as peft takes it).
TEXT_AND_PROJECTION = (r".*(text_model\.model\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|ffn\.fc[12])"
                       r"|image_to_text_projection\.(dense|x_attn\.(q|k|v|out)_proj))")
VISION = r".*vision_model\.model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])"

#: The quantizations of a base that fine-tuning takes: 4-bit (QLoRA; ``nf4`` is the QLoRA paper's data type, ``4bit``
#: the article's FP4). ``None`` trains on a full-precision base.
QLORA = ("4bit", "nf4")

ADAPTER_FILE = "adapter_model.safetensors"
CARD_FILE = "finetune.json"
OPTIMIZER_FILE = "optimizer.safetensors"

_COUNT = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}


class FinetuneError(ValueError):
    """Bad fine-tuning input (data, base model or adapter); the message names the record or file."""


class BaseModelError(FinetuneError, ModelLoadError):
    """The base model cannot be fine-tuned here: it is not Kosmos-2, or :func:`helpers.grounding.model.load`
    could not load it (a missing folder, no weights, a hub id not cached while offline, a quantization this
    machine lacks). The command exits with 1 for it (as ``ground`` and ``evaluate`` do for a model that cannot be
    loaded), with 2 for other bad input (a ``--device`` this machine lacks among them)."""


# ----------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    plural: str

    @property
    def proper(self) -> bool:
        """A name that starts with a capital letter is a proper name (``Kumo``): it takes no article."""
        return self.name[:1].isupper()

    def phrase(self, count: int) -> str:
        """The caption phrase for ``count`` objects: ``a cat``, ``an owl``, ``two cats``, ``Kumo``."""
        if count == 1:
            if self.proper:
                return self.name
            return ("an " if self.name[:1].lower() in "aeiou" else "a ") + self.name
        return f"{_COUNT.get(count, str(count))} {self.plural}"

    def definite(self, count: int) -> str:
        """How a comprehension prompt names the group: ``the cat``, ``the cats``, ``Kumo``."""
        if count == 1:
            return self.name if self.proper else f"the {self.name}"
        return f"the {self.plural}"


@dataclass(frozen=True)
class AnnotatedObject:
    """One annotated object: its category and normalized box (``.phrase`` as :mod:`helpers.grounding.evaluation`
    wants)."""

    category: Category
    box: tuple[float, float, float, float]
    phrase: str  # the caption phrase of its group ("a cat", "two cats")


@dataclass
class ImageRecord:
    """One image of the data: its file, size, objects (grouped by category, left to right) and expressions."""

    path: Path
    width: int
    height: int
    image_id: Any
    groups: list[list[AnnotatedObject]]
    expressions: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)
    turned: bool = False  # the record describes the picture turned by its EXIF tag (see read_coco)

    @property
    def objects(self) -> list[AnnotatedObject]:
        return [o for g in self.groups for o in g]


#: What each JSON file the fine-tuning reads should hold, for its messages.
_EXPECTED = {"annotation file": "COCO detection JSON with 'images', 'annotations' and 'categories'",
             "adapter card": f"the {CARD_FILE} that `python -m helpers finetune` writes, a JSON object"}


def _read_json(path: Path, what: str) -> Any:
    """The JSON in ``path``; ``what`` (a key of :data:`_EXPECTED`) names it in the :class:`FinetuneError` for a
    missing, binary, empty or malformed file (:func:`helpers.grounding.checks.read_json`), and for an adapter card
    that is not a JSON object."""
    expected = _EXPECTED[what]
    data = read_json(path, what, expected, error=FinetuneError)
    if what == "adapter card" and not (isinstance(data, dict) and isinstance(data.get("config", {}), dict)):
        raise FinetuneError(f"{what} {str(path)!r} holds {type(data).__name__} data with no settings object; "
                            f"expected {expected}")
    return data


def _normalized_box(bbox: Any, width: int, height: int, where: str) -> tuple[float, float, float, float]:
    """COCO ``[x, y, w, h]`` pixels → normalized ``(x0, y0, x1, y1)``
    (:func:`helpers.grounding.boxes.coco_to_normalized`), its errors as :class:`FinetuneError` naming the record."""
    try:
        return coco_to_normalized(bbox, (width, height), what="'bbox'")
    except ValueError as err:
        raise FinetuneError(f"{where}: {err}") from None


def _sentences(ann: dict, where: str) -> list[str]:
    raw = ann.get("sentences", [ann["expression"]] if "expression" in ann else [])
    if isinstance(raw, str) or not isinstance(raw, list):
        raise FinetuneError(f"{where}: 'sentences' must be a list, got {type(raw).__name__}")
    out = []
    for s in raw:
        text = s.get("sent", s.get("raw")) if isinstance(s, dict) else s
        if not isinstance(text, str) or not text.strip():
            raise FinetuneError(f"{where}: each sentence must be a non-empty string or a dict with 'sent', got {s!r}")
        out.append(" ".join(text.split()))
    return out


def read_coco(annotations: str | os.PathLike, images: str | os.PathLike, *,
              refs: str | os.PathLike | None = None) -> list[ImageRecord]:
    """Read COCO detection annotations (and referring expressions) into :class:`ImageRecord` objects.

    Images without annotations are kept (they teach the model that nothing is there only through
    captions, so they are skipped for the other tasks). Checks every record and raises
    :class:`FinetuneError` naming it: an empty or non-JSON file, missing keys, an unknown category or
    image id, two images or two categories with one id, a ``file_name`` that is not a non-empty str, a box with no
    area or outside its image, a missing or unreadable image file, an image file whose
    size (read from its header, :func:`helpers.grounding.images.stored_size`) fits the record's ``width`` and
    ``height`` in no way: neither as stored, nor as its EXIF tag turns it (then ``ImageRecord.turned``), nor as a
    scaled copy of either; a missing ``refs`` file.
    """
    annotations, images = Path(annotations), Path(images)
    if refs is not None and not Path(refs).is_file():
        raise FinetuneError(f"refs file {str(refs)!r} does not exist (or is not a file); expected RefCOCO-style "
                            "referring expressions for these images")
    data = _read_json(annotations, "annotation file")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise FinetuneError(f"annotation file {str(annotations)!r} must be a COCO detection object with the lists "
                            f"'images', 'annotations' and 'categories'; got {keys}")
    if not data["images"] or not data["annotations"]:
        raise FinetuneError(f"annotation file {str(annotations)!r} has no images or no annotations "
                            f"({len(data['images'])} images, {len(data['annotations'])} annotations)")
    if not images.is_dir():
        what = "is a file, not a folder" if images.exists() else "does not exist"
        raise FinetuneError(f"image folder {str(images)!r} {what}; expected the folder of the images the annotations "
                            "name")
    categories: dict[Any, Category] = {}
    for i, c in enumerate(data["categories"]):
        where = f"{annotations.name}: categories[{i}]"
        if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str) or not c["name"].strip():
            raise FinetuneError(f"{where} must have an 'id' and a non-empty 'name', got {c!r}")
        name = " ".join(c["name"].split())
        if c["id"] in categories:
            raise FinetuneError(f"{where}: category id {c['id']!r} is already that of {categories[c['id']].name!r}; "
                                "each category needs an id of its own")
        categories[c["id"]] = Category(c["id"], name, c.get("plural") or name + "s")
    records: dict[Any, tuple[dict, list]] = {}
    for i, im in enumerate(data["images"]):
        where = f"{annotations.name}: images[{i}]"
        if not isinstance(im, dict) or not all(k in im for k in ("id", "file_name", "width", "height")):
            raise FinetuneError(f"{where} must have 'id', 'file_name', 'width' and 'height', got {im!r:.200}")
        for k in ("width", "height"):
            if isinstance(im[k], bool) or not isinstance(im[k], int) or im[k] < 1:
                raise FinetuneError(f"{where}: '{k}' must be a positive int (pixels), got {im[k]!r}")
        if not isinstance(im["file_name"], str) or not im["file_name"].strip():
            raise FinetuneError(f"{where}: 'file_name' must be a non-empty str (the image file's name in the image "
                                f"folder), got {im['file_name']!r:.80}")
        if im["id"] in records:
            raise FinetuneError(f"{where}: image id {im['id']!r} is already that of "
                                f"{records[im['id']][0]['file_name']!r}; "
                                "each image needs an id of its own (the annotations name their image by it)")
        path = images / im["file_name"]
        if not path.is_file():
            raise FinetuneError(f"{where}: image file {str(path)!r} does not exist")
        record_size = (im["width"], im["height"])
        try:
            stored = stored_size(path)
            turned = not _same_shape(record_size, stored)  # then the record may describe the turned picture
            shown = stored_size(path, turned=True) if turned else stored  # one header read for most records
        except ImageLoadError as err:
            raise FinetuneError(f"{where}: {err}") from None
        if turned and (shown == stored or not _same_shape(record_size, shown)):
            as_shown = f", or {shown[0]} x {shown[1]} as its EXIF tag turns it" if shown != stored else ""
            raise FinetuneError(
                f"{where}: the record gives width {im['width']} and height {im['height']}, but image file "
                f"{str(path)!r} is {stored[0]} x {stored[1]} pixels as stored{as_shown}; the boxes are measured on "
                "the picture the record describes, so its width and height must be the file's (or a scaled copy's, "
                "of the same shape)")
        records[im["id"]] = (im, [], turned)
    for i, ann in enumerate(data["annotations"]):
        where = f"{annotations.name}: annotations[{i}] (id {ann.get('id') if isinstance(ann, dict) else None!r})"
        if not isinstance(ann, dict) or not all(k in ann for k in ("image_id", "category_id", "bbox")):
            raise FinetuneError(f"{where} must have 'image_id', 'category_id' and 'bbox', got {ann!r:.200}")
        if ann["category_id"] not in categories:
            raise FinetuneError(f"{where}: unknown category id {ann['category_id']!r}; the categories are "
                                f"{sorted(categories, key=str)[:20]}")
        if ann["image_id"] not in records:
            raise FinetuneError(f"{where}: unknown image id {ann['image_id']!r} (not in 'images')")
        im, anns, _ = records[ann["image_id"]]
        box = _normalized_box(ann["bbox"], im["width"], im["height"], where)
        anns.append((categories[ann["category_id"]], box, _sentences(ann, where)))
    out = []
    by_file = {}
    for im, anns, turned in records.values():
        rec = _record(images / im["file_name"], im["width"], im["height"], im["id"], anns, turned)
        out.append(rec)
        by_file[im["file_name"]] = rec
    if refs is not None:
        from helpers.grounding.refcoco import RefCocoFormatError, load_refcoco

        try:
            items = load_refcoco(refs, image_root=images)
        except RefCocoFormatError as err:
            raise FinetuneError(str(err)) from None
        for item in items:
            if item.file_name not in by_file:
                raise FinetuneError(f"{Path(refs).name}: expression {item.expression!r} is about image "
                                    f"{item.file_name!r}, which {annotations.name} does not list")
            by_file[item.file_name].expressions.append((item.expression, item.box))
    return out


def _same_shape(record: tuple[int, int], file: tuple[int, int]) -> bool:
    """Whether a record of ``record``'s width and height describes an image file of size ``file``: the same size,
    or a copy scaled on both sides alike (normalized boxes are the same on it), within a pixel of rounding."""
    (w, h), (fw, fh) = record, file
    return (w, h) == (fw, fh) or abs(fw * h / w - fh) <= 1


def _record(path: Path, width: int, height: int, image_id: Any, anns: list, turned: bool) -> ImageRecord:
    by_cat: dict[Category, list] = {}
    expressions = []
    for cat, box, sentences in anns:
        by_cat.setdefault(cat, []).append(box)
        expressions += [(s, box) for s in sentences]
    groups = []
    for cat, boxes in by_cat.items():
        boxes = sorted(boxes, key=lambda b: (b[0] + b[2]) / 2)
        groups.append([AnnotatedObject(cat, b, cat.phrase(len(boxes))) for b in boxes])
    groups.sort(key=lambda g: (g[0].box[0] + g[0].box[2]) / 2)
    return ImageRecord(path, width, height, image_id, groups, expressions, turned)


# ----------------------------------------------------------------------------------------------- texts


@dataclass(frozen=True)
class Text:
    """One training text: the image, the prompt (given) and the answer (learned)."""

    record: int  # index into the records
    task: str
    prompt: str
    answer: str


def texts_for(records: Sequence[ImageRecord]) -> list[Text]:
    """Every grounded training text of the records (caption, comprehension, question, expressions), with the
    phrases, caption lists and answers that the world's texts use too (:mod:`helpers.world.language`)."""
    out = []
    for r, rec in enumerate(records):
        if not rec.groups:
            continue
        caption = join_phrases([grounded(g[0].phrase, [o.box for o in g]) for g in rec.groups])
        out.append(Text(r, "caption", CAPTION_PROMPT, caption + "."))
        for g in rec.groups:
            out.append(Text(r, "comprehension", comprehension_prompt(g[0].category.definite(len(g))),
                            object_tokens([o.box for o in g])))
            for o in g:
                out.append(Text(r, "question", with_box(qa_prompt("object"), o.box), qa_answer(o.category.phrase(1))))
        for expression, box in rec.expressions:
            out.append(Text(r, "expression", comprehension_prompt(expression), object_tokens([box])))
    return out


@lru_cache(maxsize=512)
def _image(path: Path, turned: bool = False):
    """The picture the record describes: as stored (what COCO boxes are measured on), or turned by its EXIF tag
    when the record gives the turned size (``ImageRecord.turned``, decided by :func:`read_coco`)."""
    return load_image(path, exif_orientation=turned)


# ----------------------------------------------------------------------------------------------- base and adapter


def check_kosmos2(base: str | os.PathLike) -> None:
    """Raise :class:`BaseModelError` (a :class:`FinetuneError`) unless ``base`` (a folder or hub id) holds a
    Kosmos-2 checkpoint that :func:`helpers.grounding.model.load` can load, reading its config only.

    Where the base is is checked as ``load`` checks it (:func:`helpers.grounding.model.check_source`: a file, a
    missing folder, no ``config.json`` or no safetensors weights; a hub id that is not cached while
    ``HF_HUB_OFFLINE=1`` or the hub does not answer), with the same one-line messages. A folder whose config is
    of another model type is named as such (before its weights are looked for).
    """
    source = str(base)
    if not source.strip():
        raise BaseModelError("base model is an empty string: expected a Kosmos-2 model folder or a hub id such as "
                             f"'{grounding_model.REAL_MODEL}'")
    local = Path(source).expanduser()
    has_config = (local / "config.json").is_file()
    try:
        if not has_config:  # a missing or empty folder, a file, a hub id: load()'s checks and messages
            source = grounding_model.check_source(source)
    except ModelLoadError as err:
        raise BaseModelError(str(err)) from None
    try:  # a corrupt config.json, a hub id the hub does not know, another model type …
        config = grounding_model.read_config(str(local) if has_config else source)
        grounding_model.check_kosmos2_config(source, config)
    except ModelLoadError as err:
        raise BaseModelError(str(err)) from None
    if has_config:
        try:
            grounding_model.check_source(source)  # its weights: safetensors only
        except ModelLoadError as err:
            raise BaseModelError(str(err)) from None


#: Rows of the input embedding and values per row kept in a base's signature.
_PROBE_ROWS, _PROBE_VALUES = 4, 8


def base_signature(model) -> dict:
    """What identifies a base model: its sizes and a few values of its (never quantized) input embedding.

    Values survive a change of dtype (float32, bfloat16, float16) and 4-bit loading within
    :func:`same_base`'s tolerance; another checkpoint of the same architecture differs in them.
    """
    import torch

    cfg = model.config
    emb = model.get_input_embeddings().weight.detach()
    vocab = emb.shape[0]
    # rows spread over the vocabulary (row 1, Kosmos-2's padding, is all zeros); the last values of each row
    # (the bundled recipe sets the first ones of its location tokens to fixed features)
    rows = [2 + k * (vocab - 3) // (_PROBE_ROWS - 1) for k in range(_PROBE_ROWS)]
    probe = emb[rows, -_PROBE_VALUES:].to(torch.float32)
    return {
        "model_type": cfg.model_type,
        "vocab_size": int(vocab),
        "text": [cfg.text_config.layers, cfg.text_config.embed_dim],
        "vision": [cfg.vision_config.num_hidden_layers, cfg.vision_config.hidden_size],
        "probe_rows": rows,
        "probe": [round(float(v), 6) for v in probe.flatten()],
        "probe_rms": round(float(emb[rows].to(torch.float32).pow(2).mean().sqrt()), 6),
    }


def same_base(saved: dict, current: dict) -> bool:
    """Do two signatures describe the same base (up to dtype rounding)?"""
    if any(saved.get(k) != current.get(k) for k in ("model_type", "vocab_size", "text", "vision", "probe_rows")):
        return False
    tol = 0.05 * max(saved["probe_rms"], 1e-8)
    return all(abs(a - b) <= tol for a, b in zip(saved["probe"], current["probe"]))


def check_adapter(adapter: str | os.PathLike, model) -> dict:
    """The adapter's ``finetune.json`` after checking that it exists and was trained on ``model``."""
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise FinetuneError(f"adapter folder {str(adapter)!r} does not exist")
    missing = [f for f in (ADAPTER_FILE, "adapter_config.json", CARD_FILE) if not (adapter / f).is_file()]
    if missing:
        raise FinetuneError(f"adapter folder {str(adapter)!r} lacks {', '.join(missing)}; expected the output of "
                            "`python -m helpers finetune`")
    card = _read_json(adapter / CARD_FILE, "adapter card")
    if not same_base(card.get("base_signature", {}), base_signature(model)):
        raise FinetuneError(f"adapter {str(adapter)!r} was trained on the base {card.get('base')!r}, and the model "
                            f"given ({getattr(model, 'name_or_path', '?')!r}) is a different one (its sizes or "
                            "embedding values differ); load the base the adapter was trained on")
    return card


def attach_adapter(model, adapter: str | os.PathLike):
    """``model`` with the LoRA adapters of ``adapter`` attached for inference (a ``peft.PeftModel``, its adapters
    frozen); checks the base first."""
    from peft import PeftModel

    check_adapter(adapter, model)
    with _peft_quiet():
        return PeftModel.from_pretrained(model, str(adapter))


@contextlib.contextmanager
def _peft_quiet():
    """peft reads ``is_gradient_checkpointing``, which transformers 5 deprecates with a FutureWarning meant for
    peft's authors, not for our users: silence that one warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


# ----------------------------------------------------------------------------------------------- training


@dataclass
class FinetuneConfig:
    """The settings of a run of :func:`finetune`: its length, the optimizer, the shape of the adapters, the base's
    quantization and where it trains (comments in the source explain the less obvious ones)."""

    steps: int | None = None  # total optimizer steps (a resumed run counts the earlier ones)
    minutes: float | None = None  # wall-time budget of this run
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 20
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    vision: bool = False
    new_words: tuple[str, ...] = ()  # words the base never wrote: the embedding rows of their tokens are trained
    quantization: str | None = None
    gradient_checkpointing: bool | None = None  # None: on with a 4-bit base, off otherwise
    seed: int = 0
    checkpoint_minutes: float = 5.0
    device: str | None = None
    threads: int | None = None
    bf16: bool = False  # forward passes under bfloat16 autocast; adapters and optimizer stay float32


def warmup_lr(lr: float, step: int, warmup: int) -> float:
    """The learning rate ``lr`` at ``step`` (from 0) of a linear warm-up over ``warmup`` steps (0 and 1: none)."""
    return lr * min(1.0, (step + 1) / max(1, warmup))


def cosine_lr(lr: float, step: int, warmup: int, frac: float) -> float:
    """The learning rate of the course's schedule (fine-tuning and :mod:`helpers.world.training`): the warm-up of
    :func:`warmup_lr`, times a cosine from 1 down to 5 % as ``frac``, the share of the run done, goes from 0 to 1
    (5 % after that)."""
    return warmup_lr(lr, step, warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _schedule(cfg: FinetuneConfig, step: int, elapsed: float) -> float:
    """Learning rate at ``step``: :func:`cosine_lr` over ``cfg.steps`` (counted from the first run, so a resumed
    run continues the schedule) or over this run's ``cfg.minutes``, whichever ends first."""
    frac = step / cfg.steps if cfg.steps else 0.0
    if cfg.minutes:
        frac = max(frac, elapsed / (60 * cfg.minutes))
    return cosine_lr(cfg.lr, step, cfg.warmup, frac)


def word_token_ids(processor, words: Sequence[str]) -> list[int]:
    """Ids of the tokens that spell ``words`` (each as a word of a sentence, with its leading space)."""
    ids = set()
    for word in words:
        ids.update(processor.tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"])
    return sorted(ids)


def _with_adapters(model, cfg: FinetuneConfig, resume_from: Path | None = None, token_ids: Sequence[int] = ()):
    """Prepare the base (4-bit: ``prepare_model_for_kbit_training``; gradient checkpointing) and add adapters:
    new ones, or those saved in ``resume_from`` (trainable)."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    checkpointing = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else bool(cfg.quantization)
    if cfg.quantization:  # freezes the base and casts its 16-bit parameters to float32
        with _peft_quiet():
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if checkpointing:  # transformers 5's name (peft would call the deprecated gradient_checkpointing_enable)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    with _peft_quiet():
        if resume_from is not None:
            return PeftModel.from_pretrained(model, str(resume_from), is_trainable=True)
        return get_peft_model(model, _lora_config(cfg, token_ids))


def _lora_config(cfg: FinetuneConfig, token_ids: Sequence[int] = ()):
    """The adapters of ``cfg``: LoRA on :data:`TEXT_AND_PROJECTION` (and :data:`VISION` with ``cfg.vision``), and
    the embedding rows of ``token_ids`` trained."""
    from peft import LoraConfig

    targets = f"(?:{TEXT_AND_PROJECTION})|(?:{VISION})" if cfg.vision else TEXT_AND_PROJECTION
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      bias="none", trainable_token_indices=list(token_ids) or None)


def _save_optimizer(opt, model, path: Path) -> None:
    from safetensors.torch import save_file

    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    tensors = {}
    for p, state in opt.state.items():
        for key, value in state.items():
            tensors[f"{names[id(p)]}::{key}"] = value.detach().reshape(-1).contiguous().clone() if value.dim() == 0 \
                else value.detach().contiguous()
    save_file(tensors, str(path))


def _load_optimizer(opt, model, path: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(path))
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        state = {k.split("::", 1)[1]: v for k, v in saved.items() if k.split("::", 1)[0] == n}
        if state:  # as Optimizer.load_state_dict places them: moments beside their weight, the step count on the CPU
            for key, value in state.items():
                state[key] = value.reshape(()) if key == "step" else value.to(device=p.device, dtype=p.dtype)
            opt.state[p] = state


def _atomic_write(out: Path, write: Callable[[Path], None]) -> None:
    """Write into a temporary folder beside ``out``, then put it in ``out``'s place (never half-written)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _summary(records: Sequence[ImageRecord], texts: Sequence[Text], source: dict) -> dict:
    cats: dict[str, int] = {}
    for rec in records:
        for o in rec.objects:
            cats[o.category.name] = cats.get(o.category.name, 0) + 1
    tasks: dict[str, int] = {}
    for t in texts:
        tasks[t.task] = tasks.get(t.task, 0) + 1
    return {**source, "images": len(records), "objects": sum(cats.values()),
            "expressions": sum(len(r.expressions) for r in records), "objects_per_category": cats,
            "texts_per_task": tasks}


def check_config(cfg: FinetuneConfig) -> None:
    """Raise :class:`FinetuneError` for settings that cannot run: no budget (``steps`` or ``minutes``), a count
    (``steps``, ``batch_size``, ``rank``, ``alpha``, ``threads``) that is not a positive int, a ``warmup`` below 0
    (0: none, as 1), a ``minutes``, ``lr`` or ``checkpoint_minutes`` that is not a number above 0, a ``dropout``
    outside [0, 1), a ``quantization`` other than ``None`` and those of :data:`QLORA`, a ``seed`` that is not a whole
    number (:func:`helpers.grounding.checks.check_seed`), ``vision``, ``bf16`` or ``gradient_checkpointing`` (which
    may be None) not a bool, ``new_words`` not a list or tuple of non-empty words, a ``device`` this machine
    does not have (:func:`helpers.grounding.model.load` would refuse it), ``bf16`` on a GPU without native
    bfloat16 (:func:`helpers.grounding.model.check_bf16`; ``device`` or, when it is None, the one
    :func:`helpers.grounding.model.load` would choose). Raises ``TypeError`` when ``cfg`` is not a
    :class:`FinetuneConfig`."""
    if not isinstance(cfg, FinetuneConfig):
        raise TypeError(f"the settings must be a FinetuneConfig, e.g. FinetuneConfig(steps=100); got "
                        f"{type(cfg).__name__}: {cfg!r:.80}")
    if cfg.steps is None and cfg.minutes is None:
        raise FinetuneError("give a budget: steps or minutes (or both)")
    try:
        for name in ("batch_size", "rank", "alpha"):
            check_positive_int(name, getattr(cfg, name))
        check_count("warmup", cfg.warmup)
        for name in ("steps", "threads"):
            check_positive_int(name, getattr(cfg, name), none_ok=True)
        check_positive_number("minutes", cfg.minutes, none_ok=True)
        for name in ("lr", "checkpoint_minutes"):
            check_positive_number(name, getattr(cfg, name))
        check_seed("seed", cfg.seed)
    except (TypeError, ValueError) as err:
        raise FinetuneError(str(err)) from None
    try:
        for name, none_means in (("vision", ""), ("bf16", ""), ("gradient_checkpointing", "on with a 4-bit base")):
            check_bool(name, getattr(cfg, name), none_means)
    except TypeError as err:
        raise FinetuneError(str(err)) from None
    words = cfg.new_words  # a str would be read letter by letter
    if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) and w.strip() for w in words):
        raise FinetuneError("new_words must be a list or tuple of non-empty words, e.g. ('star',) for one word; got "
                            f"{type(words).__name__} {words!r:.80}")
    d = cfg.dropout
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
        raise FinetuneError(f"dropout must be a number in [0, 1), got {d!r}")
    if cfg.quantization is not None and cfg.quantization not in QLORA:
        raise FinetuneError(f"quantization must be None (a full-precision base) or a 4-bit base for QLoRA, one of "
                            f"{', '.join(map(repr, QLORA))}; got {cfg.quantization!r}")
    try:
        if cfg.device is not None:
            check_device(cfg.device)
        if cfg.bf16:
            check_bf16(cfg.device or try_gpu())
    except (TypeError, ValueError) as err:
        raise FinetuneError(str(err)) from None


#: The settings that shape the adapters (``FinetuneConfig`` field → its name in messages: its command-line option,
#: or ``FinetuneConfig.<field>`` where the command line has none): the saved adapters of a run to resume have
#: theirs, and a resumed run must keep them.
ADAPTER_SETTINGS = {"rank": "--rank", "alpha": "--alpha", "dropout": "FinetuneConfig.dropout", "vision": "--vision",
                    "new_words": "--new-words"}


def _setting(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):  # the words whose embeddings are trained: a set, in any order
        return " ".join(sorted(map(str, value))) or "none"
    return str(value)


def check_output(out: str | os.PathLike, *, resume: bool = False, resumable: bool = True,
                 cfg: FinetuneConfig | None = None) -> None:
    """Raise :class:`FinetuneError` unless ``out`` can take a run: a new or empty folder in a folder that takes new
    files (the run is written beside ``out`` and renamed into place), or (``resume``) one holding a saved run, whose
    adapters have the shape ``cfg`` asks for (:data:`ADAPTER_SETTINGS`, when ``cfg`` is given) and which has made
    fewer steps than ``cfg.steps`` (a total: nothing would be left to train). ``resumable=False`` leaves the hint to
    resume out of the message."""
    out = Path(out)
    problem = out_problem("output folder", out, folder=True, wanted="a folder for the adapters", beside=True)
    if problem:
        raise FinetuneError(problem)
    if resume:
        if not (out / OPTIMIZER_FILE).is_file():
            raise FinetuneError(f"cannot resume: {str(out)!r} holds no saved run ({OPTIMIZER_FILE} missing)")
        card = _read_json(out / CARD_FILE, "adapter card") if (out / CARD_FILE).is_file() else {}
        saved = card.get("config", {})
        done = card.get("steps")
        if cfg is not None and cfg.steps is not None and isinstance(done, int) and done >= cfg.steps:
            raise FinetuneError(f"the run in {str(out)!r} already made {done} steps, and steps={cfg.steps} counts them "
                                f"(--steps is the total of a resumed run): ask for more than {done}")
        changed = [f"{option} {_setting(getattr(cfg, key))} (the saved adapters: {_setting(saved[key])})"
                   for key, option in ADAPTER_SETTINGS.items()
                   if cfg is not None and key in saved and _setting(saved[key]) != _setting(getattr(cfg, key))]
        if changed:
            raise FinetuneError(f"cannot resume {str(out)!r} with other adapters: " + "; ".join(changed)
                                + ". Give the saved settings, or train new adapters in a new folder")
    elif out.exists() and any(out.iterdir()):
        raise FinetuneError(f"output folder {str(out)!r} is not empty; choose a new folder"
                            + (", or resume the run in it (--resume)" if resumable else ""))


def _load_base(base: str | os.PathLike, cfg: FinetuneConfig, out: Path, resume: bool):
    """Load ``base`` for training and add the adapters: new ones, or those saved in ``out`` when ``resume``.

    Returns ``(model, processor, previous, token_ids, signature)``: ``previous`` is the card saved in ``out``
    (``None`` for a new run), ``token_ids`` the tokens of ``cfg.new_words`` whose embeddings are trained and
    ``signature`` the base's :func:`base_signature`. A base that does not load raises :class:`BaseModelError`.
    """
    import torch

    try:
        # a 4-bit base computes in the device's half type on a GPU (QLoRA's way), float32 on a CPU
        dtype = default_dtype(cfg.device or try_gpu()) if cfg.quantization else torch.float32
        model, processor = grounding_model.load(str(base), quantization=cfg.quantization or "none", device=cfg.device,
                                                verbose=False, dtype=dtype)
    except ValueError as err:  # ModelLoadError, QuantizationError, a device this machine does not have
        raise BaseModelError(str(err)) from err
    signature = base_signature(model)
    previous = check_adapter(out, model) if resume else None
    token_ids = word_token_ids(processor, cfg.new_words)
    torch.manual_seed(cfg.seed)  # the adapters' first values: the same seed gives the same run in any process
    model = _with_adapters(model, cfg, out if resume else None, token_ids)
    return model, processor, previous, token_ids, signature


def _new_card(base: str | os.PathLike, cfg: FinetuneConfig, model, processor, token_ids: Sequence[int],
              signature: dict, data: dict, previous: dict | None) -> dict:
    """The adapter card of a run (``finetune.json``) before its first step: the base, the settings, the adapters
    and the ``data`` summary, with the runs and figures of ``previous`` (the card of the run it resumes)."""
    return {
        "base": str(base), "base_signature": signature, "quantization": cfg.quantization,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("device",)},
        "target_modules": model.peft_config["default"].target_modules,
        "trained_token_embeddings": processor.tokenizer.convert_ids_to_tokens(token_ids),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "all_parameters": parameter_count(model),
        "data": data,
        "runs": (previous or {}).get("runs", []),
        "figures": (previous or {}).get("figures", {}),
    }


def _write_card(folder: Path, card: dict) -> None:
    """Write the adapter card into ``folder``: ``finetune.json`` and the ``README.md`` made from it."""
    write_files({folder / CARD_FILE: json.dumps(card, indent=1) + "\n", folder / "README.md": card_text(card)})


def _write_adapters(out: Path, model, opt, card: dict) -> None:
    """Save the adapters, the optimizer state and the card in ``out`` (replaced whole, never half-written)."""
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        _save_optimizer(opt, model, tmp / OPTIMIZER_FILE)
        _write_card(tmp, card)
    _atomic_write(out, write)


def _batch(processor, records: Sequence[ImageRecord], texts: Sequence[Text], rng: random.Random, batch_size: int,
           device) -> dict:
    """The model inputs of ``batch_size`` texts drawn by ``rng`` (all of them when there are fewer), on ``device``."""
    from helpers.world.training import TRAINING_AIDS, collate, encode_example

    batch = []
    for t in rng.sample(texts, min(batch_size, len(texts))):
        rec = records[t.record]
        batch.append(encode_example(processor, _image(rec.path, rec.turned), t.prompt, t.answer))
    return {k: v.to(device) for k, v in collate(batch, processor.tokenizer.pad_token_id).items()
            if k not in TRAINING_AIDS}


def _train_step(model, opt, trainable: Sequence, inputs: dict, bf16: bool) -> float:
    """One step of AdamW on one batch (the forward pass under bfloat16 autocast when ``bf16``, gradients clipped
    to norm 1); returns the loss."""
    import torch

    device = next(p.device for p in trainable)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(**inputs).loss
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    return loss.item()


def _run_entry(start_step: int, step: int, seconds: float, device) -> dict:
    """The card's record of one run: its steps, time, date and machine."""
    import torch

    return {
        "from_step": start_step, "to_step": step, "seconds": round(seconds, 1),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{describe_device(str(device))}, torch {torch.__version__}",
    }


def finetune(base: str | os.PathLike, records: Sequence[ImageRecord], out: str | os.PathLike,
             cfg: FinetuneConfig | None = None, *, resume: bool = False, data_source: dict | None = None,
             progress: bool | None = None, log: Callable[[str], None] = print):
    """Train LoRA adapters for ``base`` on ``records`` and save them in ``out``; returns ``(model, processor, card)``.

    ``cfg.steps`` or ``cfg.minutes`` (or both: whichever ends first) bounds the run. With ``resume=True``
    the adapters, optimizer state and step count in ``out`` are loaded first and training continues up to
    ``cfg.steps`` in all (or for ``cfg.minutes`` more). A checkpoint replaces ``out`` every
    ``cfg.checkpoint_minutes``.
    """
    import torch

    cfg = FinetuneConfig() if cfg is None else cfg
    out = Path(out)
    check_config(cfg)
    # numpy ints as Python ints: random.Random takes no other, and the card is JSON
    cfg = replace(cfg, **{k: int(v) for k, v in vars(cfg).items()
                          if isinstance(v, numbers.Integral) and not isinstance(v, bool)})
    texts = texts_for(records)
    if not texts:
        raise FinetuneError("the data holds no annotated object, so there is nothing to learn")
    check_output(out, resume=resume, cfg=cfg)
    check_kosmos2(base)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, processor, previous, token_ids, signature = _load_base(base, cfg, out, resume)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    start_step = 0
    history: list[dict] = []
    if previous:
        _load_optimizer(opt, model, out / OPTIMIZER_FILE)
        start_step = previous["steps"]
        history = previous.get("history", [])
    rng = random.Random(cfg.seed * 1_000_003 + start_step)
    torch.manual_seed(cfg.seed + start_step)
    device = next(p.device for p in trainable)
    card = _new_card(base, cfg, model, processor, token_ids, signature,
                     _summary(records, texts, data_source or {}), previous)

    def save(step: int, finished: bool) -> None:
        card.update(steps=step, finished=finished, history=history)
        _write_adapters(out, model, opt, card)

    if progress is None:
        progress = interactive()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps - start_step if cfg.steps else None, desc="fine-tuning", unit="step")
    model.train()
    t0 = last_save = time.time()
    step = start_step
    losses: list[float] = []
    while True:
        elapsed = time.time() - t0
        if cfg.steps is not None and step >= cfg.steps or cfg.minutes is not None and elapsed >= 60 * cfg.minutes:
            break
        lr = _schedule(cfg, step, elapsed)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = _train_step(model, opt, trainable, _batch(processor, records, texts, rng, cfg.batch_size, device),
                           cfg.bf16)
        losses.append(loss)
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
        if step % 25 == 0 or step == 1:
            mean = sum(losses) / len(losses)
            history.append({"step": step, "loss": round(mean, 4), "seconds": round(time.time() - t0, 1)})
            losses.clear()
            if bar is None:
                log(f"step {step:5d}  loss {mean:.3f}  lr {lr:.2e}  {time.time() - t0:5.0f}s")
        if time.time() - last_save > 60 * cfg.checkpoint_minutes:
            save(step, finished=False)
            last_save = time.time()
    if bar is not None:
        bar.close()
    if losses:
        history.append({"step": step, "loss": round(sum(losses) / len(losses), 4),
                        "seconds": round(time.time() - t0, 1)})
    card["runs"] = card["runs"] + [_run_entry(start_step, step, time.time() - t0, device)]
    save(step, finished=True)
    model.eval()
    log(f"saved adapters after step {step} in {out}")
    return model, processor, card


# ----------------------------------------------------------------------------------------------- memory


def memory_needed(config=None, *, rank: int = 16, batch_size: int = 4, seq_len: int = 128,
                  quantization: str | None = "4bit", vision: bool = False, gradient_checkpointing: bool = True) -> dict:
    """GPU memory (GiB) that fine-tuning needs, computed from the model's structure, not guessed.

    ``config`` is a ``Kosmos2Config`` (default: ``Kosmos2Config()``, which has the sizes of
    ``microsoft/kosmos-2-patch14-224``). The model is built on PyTorch's ``meta`` device (shapes, no
    memory), the adapters are added as :func:`finetune` adds them, and one forward pass of ``batch_size``
    sequences of ``seq_len`` tokens counts every tensor autograd keeps for the backward pass. Parts:

    * ``base``: 4-bit weights take half a byte per weight of every linear layer but the output layer, plus
      one float32 scale per block of 64; ``prepare_model_for_kbit_training`` keeps every other parameter in
      float32 (4 bytes). Without quantization every parameter is float32.
    * ``adapters``: each trainable parameter in float32 with its gradient and AdamW's two moments (16 bytes).
    * ``activations``: what the forward pass keeps (float32 hidden states). With gradient checkpointing a
      decoder layer keeps only its input, and one layer at a time recomputes the rest in the backward pass.

    Not counted: the CUDA context and the allocator's slack (a few hundred MB), and the trained name tokens.
    """
    import torch
    from peft import get_peft_model
    from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration

    config = config or Kosmos2Config()
    parameters = parameters_from_config(config)
    with torch.device("meta"):
        model = Kosmos2ForConditionalGeneration(config)
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    base = (linear * (0.5 + 4 / 64) + (parameters - linear) * 4) if quantization in QLORA else parameters * 4
    with _peft_quiet():  # the adapters finetune() adds, at rank `rank` and scale alpha / r = 2
        model = get_peft_model(model, _lora_config(FinetuneConfig(rank=rank, alpha=2 * rank, vision=vision)))
    adapters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = model.base_model.model.text_model.model.layers
    saved = {"all": 0, "layers": 0}
    inside = [False]

    def pack(t):
        saved["all"] += t.numel() * t.element_size()
        if inside[0]:
            saved["layers"] += t.numel() * t.element_size()
        return t

    handles = [h for layer in layers for h in (
        layer.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True)),
        layer.register_forward_hook(lambda *_: inside.__setitem__(0, False)))]
    size = config.vision_config.image_size
    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device="meta")
    image_mask = torch.zeros(batch_size, seq_len, dtype=torch.long, device="meta")
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), image_embeds_position_mask=image_mask,
              pixel_values=torch.zeros(batch_size, 3, size, size, device="meta"), labels=ids)
    for h in handles:
        h.remove()
    activations = saved["all"]
    if gradient_checkpointing:
        hidden = config.text_config.embed_dim
        activations += (-saved["layers"] + saved["layers"] / len(layers)
                        + len(layers) * batch_size * seq_len * hidden * 4)
    gib = 2 ** 30
    parts = {"parameters": parameters, "adapter_parameters": adapters, "base_gib": base / gib,
             "adapters_gib": adapters * 16 / gib, "activations_gib": activations / gib}
    parts["total_gib"] = parts["base_gib"] + parts["adapters_gib"] + parts["activations_gib"]
    return parts


# ----------------------------------------------------------------------------------------------- evaluation


def box_accuracy(model, processor, records: Sequence[ImageRecord], *,
                 only: Callable[[AnnotatedObject], bool] | None = None, batch_size: int | None = None) -> dict:
    """Held-out figures on annotated images, counted per object at IoU ≥ 0.5 (:mod:`helpers.grounding.evaluation`).

    ``comprehension``: the prompt names the category (``the cat``); a true object is hit when any box
    of the answer hits it. ``caption``: the brief caption has an entity with the object's phrase and a box
    that hits it. ``only`` keeps the objects it returns True for (all by default).
    """
    keep = only or (lambda o: True)
    images, prompts, truth = [], [], []
    for rec in records:
        for g in rec.groups:
            if keep(g[0]):
                images.append(_image(rec.path, rec.turned))
                prompts.append(comprehension_prompt(g[0].category.definite(len(g))))
                truth.append(g)
    comprehension = Score()
    answers = grounding_model.ground(model, processor, images, prompts, max_new_tokens=BENCHMARK_MAX_NEW_TOKENS,
                                     batch_size=batch_size, progress=False)
    for g, res in zip(truth, answers):
        score_any_box(g, res, comprehension)
    shown = [r for r in records if any(keep(o) for o in r.objects)]
    caption = CaptionScores()
    caps = grounding_model.ground(model, processor, [_image(r.path, r.turned) for r in shown], CAPTION_PROMPT,
                                  max_new_tokens=96, batch_size=batch_size, progress=False)
    for rec, res in zip(shown, caps):
        score_caption([o for o in rec.objects if keep(o)], res, caption)
    return {"objects": comprehension.total, "comprehension_box_hit": comprehension.as_dict(),
            "caption_box_hit": caption.box_hit.as_dict()}


# ----------------------------------------------------------------------------------------------- card


def _pct(r: dict) -> str:
    """A score of the card as ``82.4 % (14/17)``, from its counts (its ``rate`` is rounded already), or ``n/a``."""
    return format_score(r["hits"], r["total"]) if r.get("total") else "n/a"


def card_text(card: dict) -> str:
    """The adapter's ``README.md``: base, data, training and figures (from ``finetune.json``)."""
    d, c = card["data"], card["config"]
    seconds = sum(r["seconds"] for r in card.get("runs", []))
    lines = [
        f"# LoRA adapters for {card['base']}",
        "",
        "Load with `helpers.load(BASE, adapter=THIS_FOLDER)`; merge for speed with "
        "`model = model.merge_and_unload()`.",
        "",
        "## Data",
        f"{d['images']} images, {d['objects']} objects, {d['expressions']} referring expressions"
        + (f" from `{d['annotations']}`" if d.get("annotations") else "") + ".",
        "Objects per category: " + ", ".join(f"{k} {v}" for k, v in d["objects_per_category"].items()) + ".",
        "Training texts per task: " + ", ".join(f"{k} {v}" for k, v in d["texts_per_task"].items()) + ".",
        "",
        "## Training",
        f"{card['steps']} steps of batch {c['batch_size']} "
        f"({'finished' if card.get('finished') else 'checkpoint, run not finished'}), "
        f"{seconds / 60:.1f} min; AdamW, peak learning rate {c['lr']}, warm-up {c['warmup']} steps, cosine decay.",
        f"LoRA rank {c['rank']}, alpha {c['alpha']}, dropout {c['dropout']} on `{card['target_modules']}`: "
        f"{card['trainable_parameters']:,} trainable of {card['all_parameters']:,} parameters"
        + (f"; base loaded in {card['quantization']}" if card.get("quantization") else "") + ".",
    ]
    for r in card.get("runs", []):
        lines.append(f"- steps {r['from_step']}–{r['to_step']}: {r['seconds'] / 60:.1f} min "
                     f"on {r['machine']} ({r['date']})")
    hist = card.get("history", [])
    if hist:
        lines.append(f"- loss (mean over the logged steps): first {hist[0]['loss']}, last {hist[-1]['loss']}")
    figures = card.get("figures") or {}
    if figures:
        lines += ["", "## Figures", "Measured after training (IoU ≥ 0.5 counts a box as a hit).", "",
                  "| figure | before | after |", "| --- | --- | --- |"]
        for name, pair in figures.items():
            if isinstance(pair, dict) and "before" in pair:
                lines.append(f"| {name} | {_pct(pair['before'])} | {_pct(pair['after'])} |")
        notes = [v for k, v in figures.items() if k == "notes"]
        for note in notes:
            lines += ["", note]
    return "\n".join(lines) + "\n"


def add_figures(out: str | os.PathLike, figures: dict) -> None:
    """Add before/after figures to a saved adapter's card (``finetune.json`` and ``README.md``)."""
    out = Path(out)
    card = _read_json(out / CARD_FILE, "adapter card")
    card.setdefault("figures", {}).update(figures)

    def write(tmp: Path) -> None:
        for f in out.iterdir():
            shutil.copy2(f, tmp / f.name)
        _write_card(tmp, card)
    _atomic_write(out, write)


# ----------------------------------------------------------------------------------------------- command

PROG = "python -m helpers finetune"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, formatter_class=DefaultsHelpFormatter,
                                description="Fine-tune Kosmos-2 on your own boxes (COCO detection format) with LoRA. "
                                            "Give --steps or --minutes (or both: the run ends at whichever comes "
                                            "first).")
    p.add_argument("--data", type=Path, required=True, help="COCO detection annotations (JSON)")
    p.add_argument("--images", type=Path, required=True, help="folder of the images the annotations name")
    p.add_argument("--base", required=True, help="Kosmos-2 model folder or hub id, e.g. microsoft/kosmos-2-patch14-224")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for the adapters: new or empty, or with --resume the folder of the run to continue")
    p.add_argument("--refs", type=Path, default=None, help="RefCOCO-style referring expressions for these images")
    p.add_argument("--val", type=Path, default=None,
                   help="held-out COCO annotations (same image folder): box accuracy before and after goes in the card")
    p.add_argument("--minutes", type=positive_number_option, default=None,
                   help="wall-time budget of this run; --steps or --minutes (or both) is required")
    p.add_argument("--steps", type=positive_int_option, default=None,
                   help="optimizer steps in all (a resumed run counts the earlier ones); --steps or --minutes (or "
                        "both) is required")
    p.add_argument("--batch-size", type=positive_int_option, default=8, help="training texts per optimizer step")
    p.add_argument("--lr", type=positive_number_option, default=1e-3,
                   help="peak learning rate (AdamW; linear warm-up, then cosine decay)")
    p.add_argument("--rank", type=positive_int_option, default=16, help="LoRA rank: directions per adapted layer")
    p.add_argument("--alpha", type=positive_int_option, default=32, help="LoRA alpha: the adapters are scaled by "
                                                                         "alpha / rank")
    p.add_argument("--vision", action="store_true", help="adapters in the vision tower too")
    p.add_argument("--new-words", nargs="+", default=(), metavar="WORD",
                   help="words the base never wrote (e.g. a new category name): their token embeddings are trained")
    p.add_argument("--quantization", choices=QLORA, default=None,
                   help="4-bit base (QLoRA; nf4 is the QLoRA paper's data type, 4bit the article's FP4)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute activations in the backward pass "
                        "(default: on with a 4-bit base, --quantization 4bit or nf4)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--seed", type=int, default=0, help="seed of the adapters' first values and of the batches")
    p.add_argument("--device", default=None,
                   help="where to train: cpu, cuda, cuda:N or mps (default: a GPU when torch sees one, else the CPU)")
    p.add_argument("--threads", type=positive_int_option, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--bf16", action="store_true",
                   help="forward passes in bfloat16, for large models on GPUs with native bfloat16 (compute "
                        "capability 8.0 or newer; refused on older ones such as a T4) and CPUs with AMX or AVX-512 "
                        "BF16 (on the tiny bundled model it is not faster); the adapters and the optimizer stay "
                        "float32")
    return p


def device_option_problem(device: str) -> str | None:
    """The command-line message for a ``--device`` this machine does not have (``finetune``, ``train``), by
    :func:`helpers.grounding.model.check_device`'s rule, or ``None``."""
    try:
        check_device(device)
    except (TypeError, ValueError) as err:
        return "argument --device: " + str(err).replace("leave device unset", "leave out --device")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv``; return the exit code: 0 when the adapters were saved, 2 for bad input (an
    option, the data, the output folder, adapters of another base) and 1 when the base model cannot be loaded,
    each with a one-line message on stderr."""
    args = parse(build_parser(), argv)
    if isinstance(args, int):  # --help (0) or a bad option, which argparse has reported (2)
        return args
    if args.steps is None and args.minutes is None:
        return fail("give --steps or --minutes (or both)", prog=PROG)
    problem = None if args.device is None else device_option_problem(args.device)  # as for `train --device`
    if problem:
        return fail(problem, prog=PROG)
    cfg = FinetuneConfig(steps=args.steps, minutes=args.minutes, batch_size=args.batch_size, lr=args.lr,
                         rank=args.rank, alpha=args.alpha, vision=args.vision, new_words=tuple(args.new_words),
                         quantization=args.quantization, gradient_checkpointing=args.gradient_checkpointing,
                         seed=args.seed, device=args.device,
                         threads=args.threads, bf16=args.bf16)
    try:
        check_config(cfg)  # before reading anything
        check_output(args.out, resume=args.resume, cfg=cfg)
        check_kosmos2(args.base)  # a base that cannot be loaded (exit 1) is named before the data is read
        records = read_coco(args.data, args.images, refs=args.refs)
        val = read_coco(args.val, args.images) if args.val else None
        model, processor, _ = finetune(args.base, records, args.out, cfg, resume=args.resume,
                                       data_source={"annotations": str(args.data)},
                                       log=lambda s: print(s, flush=True))
        if val:
            after = box_accuracy(model, processor, val)
            with model.disable_adapter():  # the base as it was (LoRA only adds to it)
                before = box_accuracy(model, processor, val)
            add_figures(args.out, {
                f"held-out comprehension box hit ({args.val.name})":
                    {"before": before["comprehension_box_hit"], "after": after["comprehension_box_hit"]},
                f"held-out caption box hit ({args.val.name})":
                    {"before": before["caption_box_hit"], "after": after["caption_box_hit"]},
            })
            print(f"held-out comprehension box hit: {_pct(before['comprehension_box_hit'])} → "
                  f"{_pct(after['comprehension_box_hit'])}")
    except BaseModelError as err:
        return fail(str(err), code=1, prog=PROG)
    except FinetuneError as err:
        return fail(str(err), prog=PROG)
    return 0

