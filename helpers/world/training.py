"""Train a small Kosmos-2 on the synthetic world (the recipe behind the bundled model).

The model is a plain ``Kosmos2ForConditionalGeneration``; the recipe adds what makes a tiny model learn
grounding on two CPU cores:

1. **Location tokens start out knowing where they are.** The 1 024 ``<patch_index_NNNN>`` embeddings
   (tied with the output layer) are initialised with smooth features of their bin's column and row
   (:func:`location_features`), so neighbouring bins start out alike, far bins unalike, and a box is a
   smooth target, not 1 024 unrelated classes.
2. **Dense supervision of the vision tower.** Linear heads on the patch features and on the image tokens
   (used in training only, then dropped) predict for every patch *what* covers it (kind of object or
   background) and *where* that object's box is (its four edges, as 32-way bins); optionally
   (``group_weight``) also how many objects its group has and the group's place in the caption, best on the
   patches of objects only (``group_on_objects``): that is what lets a caption tell a pair from two objects.
3. **Supervised attention.** Head 0 of each decoder layer is shown which image tokens belong to the object
   being named.
4. **Count words** (``count_weight``). The first word of each grounded phrase (``a`` / ``two``) gets a loss of
   its own: it is where the caption decides how many objects the phrase names.
5. **A curriculum.** The vision tower first learns alone (cheap), then the whole model learns every task.
   A resumed run can first train fresh heads alone on the frozen model (``heads_steps``), and may show
   more scenes with pairs and with three kinds (``pair_share``, ``three_share``; the world is unchanged).

Texts are GRIT-style grounded strings; the loss is next-token cross-entropy on the answer only
(labels ``-100`` on image, prompt and padding positions). A run's folder holds the model, its processor,
``training.json`` (settings and losses of every stage) and the training-only heads
(:data:`HEADS_FILE`), so ``--resume`` continues where it stopped; SIGTERM ends a run cleanly (it saves).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from helpers.grounding.checks import (DefaultsHelpFormatter, check_count, check_positive_int, count_option, is_number,
                                      fail, number_option, number_rule, out_problem, parse, positive_int_option,
                                      positive_number_option, read_json)
from helpers.grounding.finetune import cosine_lr, device_option_problem, warmup_lr
from helpers.grounding.model import check_bf16, describe_device
from helpers.grounding.progress import interactive
from helpers.grounding.quantization import check_available
from helpers.world.scenes import KINDS, Scene, sample_scene
from helpers.world.language import Example, build_config, build_processor, scene_examples

#: The label of positions no loss falls on (image, prompt and padding; cross-entropy's ``ignore_index``).
IGNORE = -100
_TAG = re.compile(r"(<[^<>]+>)")

#: How often each task is drawn in training.
TASK_WEIGHTS = {"caption": 0.3, "detail": 0.15, "comprehension": 0.2, "qa": 0.15, "generation": 0.2}


def parse_task_weights(text: str) -> dict[str, float]:
    """``"caption=0.3,comprehension=0.3"`` → a full task mix: the tasks named get these weights, the others keep
    :data:`TASK_WEIGHTS`'s (a weight of 0 leaves a task out).

    Raises:
        ValueError: an unknown task, a weight that is not a finite number >= 0, or a mix whose weights are all 0.
    """
    weights = dict(TASK_WEIGHTS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in TASK_WEIGHTS:
            raise ValueError(f"task weights are TASK=WEIGHT pairs with TASK one of {', '.join(TASK_WEIGHTS)}; "
                             f"got {part!r}")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"the weight of {name.strip()!r} must be a number >= 0 (finite), got {value!r}")
        weights[name.strip()] = weight
    if not any(weights.values()):
        raise ValueError(f"at least one task needs a weight above 0, got {text!r}")
    return weights


# ------------------------------------------------------------------------------------------ encoding


def answer_token_ids(tokenizer, answer: str) -> list[int]:
    """Token ids of generated text, as the model should produce it.

    Tags (``<phrase>``, ``<patch_index_0044>`` …) are single tokens. A text piece right after a tag that
    does not start with a space (``"."`` after ``</object>``) is encoded without SentencePiece's leading
    ``▁``, so decoding gives ``</object>.`` as the real model writes it.
    """
    ids: list[int] = []
    unk = tokenizer.unk_token_id
    for part in _TAG.split(answer):
        if not part:
            continue
        if _TAG.fullmatch(part):
            tid = tokenizer.convert_tokens_to_ids(part)
            if tid is None or tid == unk:
                raise ValueError(f"{part!r} is not a token of this tokenizer")
            ids.append(tid)
            continue
        piece_ids = tokenizer(part, add_special_tokens=False)["input_ids"]
        if not part.startswith(" ") and piece_ids and tokenizer.convert_ids_to_tokens(piece_ids[0]) == "▁":
            piece_ids = piece_ids[1:]
        ids.extend(piece_ids)
    return ids


@dataclass
class Encoded:
    input_ids: list[int]
    image_embeds_position_mask: list[int]
    labels: list[int]
    pixel_values: torch.Tensor  # (3, H, W)
    look: list[list[int] | None] | None = None  # per position: image patches to attend to (training aid)
    count_words: list[int] | None = None  # label positions of the first word of each grounded phrase


def encode_example(processor, image, prompt: str, answer: str) -> Encoded:
    """Prompt through the processor (exactly as at inference), answer appended with ``</s>``, labels on the answer."""
    enc = processor(text=prompt, images=image, return_tensors="pt")
    prompt_ids = enc["input_ids"][0].tolist()
    mask = enc["image_embeds_position_mask"][0].tolist()
    ans = answer_token_ids(processor.tokenizer, answer) + [processor.tokenizer.eos_token_id]
    return Encoded(
        input_ids=prompt_ids + ans,
        image_embeds_position_mask=mask + [0] * len(ans),
        labels=[IGNORE] * len(prompt_ids) + ans,
        pixel_values=enc["pixel_values"][0],
    )


#: Entries of a collated batch that guide the recipe's extra losses and are not inputs of the model.
TRAINING_AIDS = ("look", "count_words")


def collate(batch: Sequence[Encoded], pad_id: int, grid: int = 8) -> dict[str, torch.Tensor]:
    """Right-pad a batch for training (padding gets label -100 and attention 0; :data:`TRAINING_AIDS` too)."""
    n = max(len(e.input_ids) for e in batch)
    def pad(seq, value):
        return seq + [value] * (n - len(seq))
    look = torch.zeros(len(batch), n, grid * grid, dtype=torch.bool)
    count = torch.zeros(len(batch), n, dtype=torch.bool)
    for b, e in enumerate(batch):
        for pos, cells in enumerate(e.look or []):
            if cells:
                look[b, pos, cells] = True
        count[b, e.count_words or []] = True
    return {
        "look": look,
        "count_words": count,
        "input_ids": torch.tensor([pad(e.input_ids, pad_id) for e in batch]),
        "attention_mask": torch.tensor([pad([1] * len(e.input_ids), 0) for e in batch]),
        "image_embeds_position_mask": torch.tensor([pad(e.image_embeds_position_mask, 0) for e in batch]),
        "labels": torch.tensor([pad(e.labels, IGNORE) for e in batch]),
        "pixel_values": torch.stack([e.pixel_values for e in batch]),
    }


# ------------------------------------------------------------------------------------------ dense targets

_KIND_INDEX = {k: i + 1 for i, k in enumerate(KINDS)}  # 0 = background


def dense_targets(scene: Scene, grid: int, bins: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch: the kind covering its centre (0 = background) and that object's box edges as bins.

    Returns ``what`` (grid*grid,) and ``where`` (grid*grid, 4) with -100 where no object covers the patch.
    All four edges are binned as coordinates, ``min(int(v * bins), bins - 1)``, so a right or bottom edge on a bin
    boundary gets the bin one above the last bin the box reaches, which is the one its location token names
    (:func:`helpers.grounding.tokens.box_to_patch_index`); the bundled model was trained with these targets.
    """
    what = torch.zeros(grid * grid, dtype=torch.long)
    where = torch.full((grid * grid, 4), IGNORE, dtype=torch.long)
    # smallest object last so it wins where boxes overlap
    for obj in sorted(scene.objects, key=lambda o: -(o.box[2] - o.box[0]) * (o.box[3] - o.box[1])):
        x0, y0, x1, y1 = obj.box
        edges = torch.tensor([min(int(v * bins), bins - 1) for v in (x0, y0, x1, y1)])
        for r in range(grid):
            cy = (r + 0.5) / grid
            if not y0 <= cy <= y1:
                continue
            for c in range(grid):
                cx = (c + 0.5) / grid
                if x0 <= cx <= x1:
                    what[r * grid + c] = _KIND_INDEX[(obj.colour, obj.shape)]
                    where[r * grid + c] = edges
    return what, where


#: Classes of the group heads: how many objects the patch's group has (0 = background, 1, 2) and the
#: group's place in the caption, which lists groups left to right (0 = background, 1, 2, 3).
GROUP_COUNTS, GROUP_PLACES = 3, 4


def group_targets(scene: Scene, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch: the size of the group whose object covers it, and that group's place in the caption.

    Returns ``count`` and ``place`` (both ``(grid*grid,)``, 0 = background); patches are assigned like
    :func:`dense_targets` (the smaller object wins an overlap). These tie every object to its group, so
    that the image tokens say "one of a pair" and "the second group" — what a caption needs to write
    "two red circles" once, in the right place.
    """
    count = torch.zeros(grid * grid, dtype=torch.long)
    place = torch.zeros(grid * grid, dtype=torch.long)
    objects = [(g, len(group), obj) for g, group in enumerate(scene.groups) for obj in group]
    for g, n, obj in sorted(objects, key=lambda t: -(t[2].box[2] - t[2].box[0]) * (t[2].box[3] - t[2].box[1])):
        x0, y0, x1, y1 = obj.box
        for r in range(grid):
            if not y0 <= (r + 0.5) / grid <= y1:
                continue
            for c in range(grid):
                if x0 <= (c + 0.5) / grid <= x1:
                    count[r * grid + c] = min(n, GROUP_COUNTS - 1)
                    place[r * grid + c] = min(g + 1, GROUP_PLACES - 1)
    return count, place


def training_scene(rng: random.Random, pair_share: float = 0.0, three_share: float = 0.0) -> Scene:
    """A scene of :func:`helpers.world.scenes.sample_scene` for training, drawn with more hard cases.

    With probability ``pair_share`` scenes are redrawn until one has a pair of one kind; otherwise, with
    probability ``three_share``, until one has three kinds. The world is unchanged: every scene is a
    ``sample_scene`` of a fresh seed, only the mix of scenes shown in training moves.
    """
    for name, share in (("pair_share", pair_share), ("three_share", three_share)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {share}")
    u = rng.random()
    if u < pair_share:
        wanted = lambda sc: any(len(g) > 1 for g in sc.groups)  # noqa: E731
    elif u < pair_share + (1 - pair_share) * three_share:
        wanted = lambda sc: len(sc.groups) >= 3  # noqa: E731
    else:
        return sample_scene(rng.getrandbits(62))
    while True:
        scene = sample_scene(rng.getrandbits(62))
        if wanted(scene):
            return scene


def patch_set(box: Sequence[float], grid: int) -> list[int]:
    """Patches (row * grid + col) whose centre lies in ``box``; the patch of the box centre if none does."""
    x0, y0, x1, y1 = box
    inside = [r * grid + c for r in range(grid) for c in range(grid)
              if x0 <= (c + 0.5) / grid <= x1 and y0 <= (r + 0.5) / grid <= y1]
    if inside:
        return inside
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return [min(int(cy * grid), grid - 1) * grid + min(int(cx * grid), grid - 1)]


def attention_targets(tokens: Sequence[str], example: Example, scene: Scene, grid: int) -> list[list[int] | None]:
    """For each answer token, the image patches the model should look at to predict it (``None``: no target).

    Words and tags of a grounded phrase point at every object of its group; the two location tokens of
    box *k* point at object *k*; answers about a user box point at the object in the box.
    """
    out: list[list[int] | None] = [None] * len(tokens)
    if example.task in ("qa", "generation"):
        cells = patch_set(example.target[0].box, grid)
        for i in range(max(0, len(tokens) - 2)):  # not the final "." and "</s>"
            out[i] = cells
        return out
    groups = [list(example.target)] if example.task == "comprehension" else scene.groups
    g, inside, locs = (0, True, 0) if example.task == "comprehension" else (-1, False, 0)
    for i, tok in enumerate(tokens):
        if tok == "<phrase>" and example.task != "comprehension":
            g, inside, locs = g + 1, True, 0
        if not inside or g >= len(groups):
            continue
        group = groups[g]
        if tok.startswith("<patch_index_"):
            out[i] = patch_set(group[min(locs // 2, len(group) - 1)].box, grid)
            locs += 1
        else:
            out[i] = sorted({c for o in group for c in patch_set(o.box, grid)})
        if tok == "</object>":
            inside = False
    return out


def count_word_positions(tokens: Sequence[str]) -> list[int]:
    """Positions of the first word of each grounded phrase (``a`` / ``two`` / ``Kumo`` after ``<phrase>``).

    That word is where a caption decides how many objects its next phrase names (and, for the world's
    characters, which one): a single token of a 20-token answer, so the plain text loss gives it little weight.
    """
    return [i for i in range(1, len(tokens)) if tokens[i - 1] == "<phrase>"]


def count_word_loss(logits: torch.Tensor, labels: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the labels at ``where`` (label positions; the logits at p predict label p + 1)."""
    pick = where[:, 1:]
    if not pick.any():
        return logits.new_zeros(())
    return F.cross_entropy(logits[:, :-1][pick].float(), labels[:, 1:][pick])


class DenseHeads(nn.Module):
    """Training-only heads on the vision tower's patch features (not part of the shipped model)."""

    def __init__(self, dim: int, bins: int = 32):
        super().__init__()
        self.what = nn.Linear(dim, len(KINDS) + 1)
        self.where = nn.Linear(dim, 4 * bins)
        self.count = nn.Linear(dim, GROUP_COUNTS)
        self.place = nn.Linear(dim, GROUP_PLACES)
        self.bins = bins

    def loss(self, patches: torch.Tensor, what: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        b, p, _ = patches.shape
        l_what = F.cross_entropy(self.what(patches).reshape(b * p, -1), what.reshape(-1))
        logits = self.where(patches).reshape(b * p * 4, self.bins)
        l_where = F.cross_entropy(logits, where.reshape(-1), ignore_index=IGNORE)
        return l_what + l_where

    def group_loss(self, patches: torch.Tensor, count: torch.Tensor, place: torch.Tensor,
                   objects_only: bool = False) -> torch.Tensor:
        """Cross-entropy of the group heads (group size and caption place of each patch's object).

        ``objects_only``: only patches that an object covers count (background, already the ``what`` head's
        job, would otherwise be most of the loss and leave little of it to telling pairs from single objects).
        """
        b, p, _ = patches.shape
        if objects_only:
            count = count.masked_fill(count == 0, IGNORE)
            place = place.masked_fill(place == 0, IGNORE)
        return (F.cross_entropy(self.count(patches).reshape(b * p, -1), count.reshape(-1), ignore_index=IGNORE)
                + F.cross_entropy(self.place(patches).reshape(b * p, -1), place.reshape(-1), ignore_index=IGNORE))


# ------------------------------------------------------------------------------------------ model


def location_features(num_bins: int = 32, dim: int = 24) -> torch.Tensor:
    """(num_bins², dim) features of each location token: its column (first half) and its row (second half).

    Each half is a bin's code on one axis: two dimensions of one slow wave (a quarter turn over the whole
    axis) and ``dim // 2 - 2`` Gaussian bumps spread evenly along it. The bumps single out each bin and make
    neighbours alike; the slow wave keeps the likeness falling with distance all the way to the far end. No
    part repeats, so two bins are the more alike the closer they are (notebook 12 draws it).
    """
    half = dim // 2
    if half < 4:
        raise ValueError(f"dim must be at least 8 (two slow-wave dimensions and two bumps per axis), got {dim}")
    x = (torch.arange(num_bins) + 0.5) / num_bins
    slow = torch.stack([torch.cos(0.5 * torch.pi * x), torch.sin(0.5 * torch.pi * x)], dim=1)
    bumps = torch.linspace(0.0, 1.0, half - 2)
    width = 0.5 / (half - 3)  # half the spacing of the bumps: sharp enough to single out each bin
    near = torch.exp(-0.5 * ((x[:, None] - bumps[None, :]) / width) ** 2)
    near = near / near.norm(dim=1, keepdim=True)
    axis = torch.cat([0.5 ** 0.5 * slow, 0.5 ** 0.5 * near], dim=1)  # (bins, half), unit length
    idx = torch.arange(num_bins * num_bins)
    return torch.cat([axis[idx % num_bins], axis[idx // num_bins]], dim=1)


#: What :func:`init_location_embeddings` gives the location tokens; recorded in ``training.json`` and the model card.
LOCATION_FEATURES = "features of their bin's column and row that fall steadily with distance (location_features)"


def init_location_embeddings(model, processor, scale: float = 0.08) -> None:
    """Give the ``<patch_index_NNNN>`` embeddings a spatial structure (see the module docstring)."""
    tok = processor.tokenizer
    first = tok.convert_tokens_to_ids("<patch_index_0000>")
    n = processor.num_patch_index_tokens
    emb = model.get_input_embeddings().weight
    feats = location_features(int(math.isqrt(n)), 24)
    with torch.no_grad():
        emb[first : first + n, :24] = scale * feats
        emb[first : first + n, 24:] *= 0.25


def new_model(processor, seed: int = 0, **config_kwargs):
    """A new ``Kosmos2ForConditionalGeneration`` of :func:`helpers.world.language.build_config`'s sizes
    (``config_kwargs``), with random weights from ``seed`` and location embeddings that know their place
    (:func:`init_location_embeddings`)."""
    from transformers import Kosmos2ForConditionalGeneration

    torch.manual_seed(seed)
    config = build_config(processor, **config_kwargs)
    model = Kosmos2ForConditionalGeneration(config)
    init_location_embeddings(model, processor)
    return model


def image_features(model, pixel_values: torch.Tensor):
    """Vision tower → (patch features for the dense heads, image embeddings for the text model)."""
    hidden = model.vision_model(pixel_values=pixel_values).last_hidden_state
    feats = model.vision_model.model.post_layernorm(hidden)
    embeds, _ = model.image_to_text_projection(F.normalize(feats, dim=-1))
    return feats[:, 1:], embeds


# ------------------------------------------------------------------------------------------ training


def linears_4bit(model) -> list[nn.Parameter]:
    """The weights that ``load_in_4bit=True`` turns into FP4 or NF4 codes: every ``nn.Linear`` but ``lm_head``."""
    return [m.weight for name, m in model.named_modules() if isinstance(m, nn.Linear) and not name.endswith("lm_head")]


@contextmanager
def rounded_4bit(weights: list[nn.Parameter], shares: dict[str, float], generator: torch.Generator):
    """Inside, each of ``weights`` holds its value rounded as bitsandbytes' 4-bit types round it (absmax scales
    per 64 weights, as ``load_in_4bit=True`` stores it): as ``"fp4"`` (the article's path) with probability
    ``shares["fp4"]``, as ``"nf4"`` with probability ``shares["nf4"]``, else its float value; on exit the float
    values come back. A backward pass run inside computes the gradient at the rounded weights and the optimizer
    applies it to the float ones (the straight-through estimate): the weights learn to keep their answers through
    both roundings while the passes that draw the float value keep float32 as good (quantization-aware training).
    """
    kept = []
    try:
        if any(shares.values()):
            import bitsandbytes.functional as bnb  # (train() checks first that it is there and recent enough)

            for weight in weights:
                draw, edge = torch.rand((), generator=generator).item(), 0.0
                for quant_type, share in shares.items():
                    edge += share
                    if draw < edge:
                        packed, state = bnb.quantize_4bit(weight.data.float().contiguous(), blocksize=64,
                                                          quant_type=quant_type)
                        kept.append((weight, weight.data.clone()))
                        weight.data.copy_(bnb.dequantize_4bit(packed, state).reshape(weight.shape))
                        break
        yield
    finally:
        for weight, value in kept:
            weight.data.copy_(value)


@dataclass
class TrainConfig:
    """The settings of a run of :func:`train`: the model's image and patch sizes, the stages' steps, the weights of
    the losses, the scenes drawn and where the run is saved (comments in the source explain the less obvious ones)."""

    seed: int = 0
    image_size: int = 64
    patch_size: int = 8
    vision_steps: int = 300
    heads_steps: int = 0  # first, the training-only heads alone on the frozen model (for a resumed run)
    steps: int = 2000
    batch_size: int = 48
    lr: float = 2e-3
    warmup: int = 100
    aux_weight: float = 0.5
    look_weight: float = 0.5
    minutes: float | None = None  # stop the joint stage early after this wall time
    checkpoint: Path | None = None  # save model + processor here every `checkpoint_minutes`
    checkpoint_minutes: float = 10.0
    resumed_from: dict | None = None  # the training.json of the run this one continues
    group_weight: float = 0.0  # weight of the group heads' loss (group size, caption place); 0 = off
    group_on_objects: bool = False  # the group heads' loss on the patches of objects only (not background)
    pair_share: float = 0.0  # training-only share of scenes redrawn until they hold a pair
    three_share: float = 0.0  # ... and of the rest, redrawn until they hold three kinds
    log_every: int = 25  # joint steps between two lines of the log (and of the history)
    device: str = "cpu"  # where the model trains ("cuda" on a GPU); batches are drawn on the CPU
    workers: int = 0  # processes drawing batches (0: in the training process, one seeded stream)
    bf16: bool = False  # forward passes in bfloat16 (torch.autocast); weights, optimizer and losses stay float32
    count_weight: float = 0.0  # extra loss on the first word of each grounded phrase (how many; 0 = off)
    task_weights: dict | None = None  # how often each task is drawn (None: TASK_WEIGHTS)
    fp4_share: float = 0.0  # each linear but lm_head computes with FP4-rounded weights in this share of passes
    nf4_share: float = 0.0  # ... and with NF4-rounded weights in this share (fp4_share + nf4_share at most 1)


def _check_number(name: str, value: object, *, above: bool = False, share: bool = False, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if not is_number(value, above, share):
        raise ValueError(f"{name} must be {number_rule(above, share)}{' or None' if none_ok else ''}, got {value!r}")


def check_4bit_shares(fp4_share: object, nf4_share: object,
                      names: tuple[str, str] = ("fp4_share", "nf4_share")) -> None:
    """Raise ``ValueError`` unless the two shares of quantization-aware passes are numbers >= 0 that add up to at
    most 1; the message calls them ``names`` (the command line passes ``("--fp4-share", "--nf4-share")``)."""
    if not (is_number(fp4_share) and is_number(nf4_share) and fp4_share + nf4_share <= 1.0):
        raise ValueError(f"{names[0]} and {names[1]} must be 0 or more and add up to at most 1, got "
                         f"{fp4_share} and {nf4_share}")


def check_config(cfg: TrainConfig) -> None:
    """Raise for settings :func:`train` cannot run, before anything is built.

    Raises:
        TypeError: a count that is not a whole number.
        ValueError: ``batch_size``, ``log_every``, ``image_size`` or ``patch_size`` below 1; ``steps``,
            ``vision_steps``, ``heads_steps``, ``warmup`` or ``workers`` below 0; an ``lr`` or ``minutes`` that
            is not a finite number above 0 (``minutes`` may be None); a loss weight or ``checkpoint_minutes``
            that is not a finite number >= 0; ``pair_share`` or ``three_share`` outside [0, 1];
            ``fp4_share`` and ``nf4_share`` below 0 or adding up past 1; a ``task_weights`` mix that
            :func:`parse_task_weights` would refuse; ``bf16`` on a ``device`` that is a GPU without native
            bfloat16, such as a T4 (:func:`helpers.grounding.model.check_bf16`), or that does not exist.
    """
    for name in ("batch_size", "log_every", "image_size", "patch_size"):
        check_positive_int(name, getattr(cfg, name))
    for name in ("steps", "vision_steps", "heads_steps", "warmup", "workers"):
        check_count(name, getattr(cfg, name))
    _check_number("lr", cfg.lr, above=True)
    _check_number("minutes", cfg.minutes, above=True, none_ok=True)
    for name in ("checkpoint_minutes", "aux_weight", "look_weight", "group_weight", "count_weight"):
        _check_number(name, getattr(cfg, name))
    for name in ("pair_share", "three_share"):
        _check_number(name, getattr(cfg, name), share=True)
    check_4bit_shares(cfg.fp4_share, cfg.nf4_share)
    if cfg.task_weights is not None:
        mix = cfg.task_weights
        if not (isinstance(mix, dict) and mix and set(mix) <= set(TASK_WEIGHTS)
                and all(is_number(w) for w in mix.values()) and any(mix.values())
                and math.isfinite(sum(mix.values()))):
            raise ValueError(f"task_weights must map tasks ({', '.join(TASK_WEIGHTS)}) to finite numbers >= 0, "
                             f"at least one above 0; got {mix!r}")
    if cfg.bf16:
        check_bf16(cfg.device)


def draw_batch(rng: random.Random, processor, n: int, grid: int, pair_share: float = 0.0,
               three_share: float = 0.0, groups: list | None = None, task_weights: dict | None = None):
    """``n`` encoded examples with their dense targets; ``groups`` (a list) receives each scene's group targets;
    tasks are drawn by ``task_weights`` (default :data:`TASK_WEIGHTS`)."""
    batch, whats, wheres = [], [], []
    mix = task_weights or TASK_WEIGHTS
    tasks, weights = list(mix), list(mix.values())
    for _ in range(n):
        if pair_share or three_share:
            scene = training_scene(rng, pair_share, three_share)
        else:  # the original recipe's stream of scenes, unchanged
            scene = sample_scene(rng.getrandbits(62))
        if groups is not None:
            groups.append(group_targets(scene, grid))
        task = rng.choices(tasks, weights)[0]
        options = [e for e in scene_examples(scene, rng) if e.task == task]
        ex = rng.choice(options)
        enc = encode_example(processor, scene.image, ex.prompt, ex.answer)
        n_prompt = sum(1 for v in enc.labels if v == IGNORE)
        answer_tokens = processor.tokenizer.convert_ids_to_tokens(enc.input_ids[n_prompt:])
        # the logits at position p predict token p + 1: targets sit one position before their token
        enc.look = [None] * (n_prompt - 1) + attention_targets(answer_tokens, ex, scene, grid) + [None]
        enc.count_words = [n_prompt + i for i in count_word_positions(answer_tokens)]
        batch.append(enc)
        w, wh = dense_targets(scene, grid)
        whats.append(w)
        wheres.append(wh)
    return batch, torch.stack(whats), torch.stack(wheres)


def joint_batch(rng: random.Random, processor, cfg: TrainConfig, grid: int) -> dict[str, torch.Tensor]:
    """One batch of the joint stage: the collated inputs, the dense targets and the group targets."""
    gt: list = []
    batch, what, where = draw_batch(rng, processor, cfg.batch_size, grid, cfg.pair_share, cfg.three_share, gt,
                                    cfg.task_weights)
    return {**collate(batch, processor.tokenizer.pad_token_id, grid), "what": what, "where": where,
            "count": torch.stack([t[0] for t in gt]), "place": torch.stack([t[1] for t in gt])}


def dense_batch(rng: random.Random, processor, cfg: TrainConfig, grid: int, mixed: bool) -> dict[str, torch.Tensor]:
    """One batch of the dense stages: pixels with the per-patch targets (``mixed``: the training scene mix)."""
    if mixed and (cfg.pair_share or cfg.three_share):
        scenes = [training_scene(rng, cfg.pair_share, cfg.three_share) for _ in range(cfg.batch_size)]
    else:
        scenes = [sample_scene(rng.getrandbits(62)) for _ in range(cfg.batch_size)]
    tg = [dense_targets(s, grid) for s in scenes]
    gt = [group_targets(s, grid) for s in scenes]
    return {"pixel_values": processor.image_processor([s.image for s in scenes], return_tensors="pt")["pixel_values"],
            "what": torch.stack([t[0] for t in tg]), "where": torch.stack([t[1] for t in tg]),
            "count": torch.stack([t[0] for t in gt]), "place": torch.stack([t[1] for t in gt])}


class _Stream(torch.utils.data.IterableDataset):
    """Endless batches of ``make(rng)``, one random stream per worker process (seeded by run seed and worker)."""

    def __init__(self, make, seed: int):
        self.make, self.seed = make, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(f"{self.seed}/{info.id if info else 0}")
        while True:
            yield self.make(rng)


def _worker_init(_worker: int) -> None:
    torch.set_num_threads(1)  # the workers draw pictures and tokenize; the cores are theirs, not BLAS's
    for sig in (signal.SIGTERM, signal.SIGINT):  # a stop is the training process's to handle: it saves first
        signal.signal(sig, signal.SIG_IGN)


def batches(make, rng: random.Random, cfg: TrainConfig, stream: int):
    """Batches of ``make(rng)`` on ``cfg.device``: drawn in this process from ``rng`` (``cfg.workers == 0``, the
    original single stream), or by ``cfg.workers`` processes, each with its own stream of ``stream``."""
    if cfg.workers == 0:
        source = iter(lambda: make(rng), None)
    else:
        source = iter(torch.utils.data.DataLoader(
            _Stream(make, cfg.seed * 10 + stream), batch_size=None, num_workers=cfg.workers,
            worker_init_fn=_worker_init, prefetch_factor=4, pin_memory=torch.device(cfg.device).type == "cuda"))
    for batch in source:
        yield {k: v.to(cfg.device, non_blocking=True) for k, v in batch.items()}


class _StopFlag:
    """SIGTERM / SIGINT end the current stage after its step and skip the stages after it, so the run still
    returns (and the command saves) what it has learned."""

    def __init__(self):
        self.raised: str | None = None
        self.previous = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no handlers, the run stops only by its budget
            self.previous = {}

    def _handle(self, signum, frame) -> None:
        self.raised = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class AttentionTap:
    """Keeps the attention weights of the text model's self-attention layers during a forward pass."""

    def __init__(self, model):
        self.weights: list[torch.Tensor] = []
        self.handles = [layer.self_attn.register_forward_hook(self._hook) for layer in model.text_model.model.layers]

    def _hook(self, module, args, output):
        if isinstance(output, tuple) and len(output) > 1 and output[1] is not None:
            self.weights.append(output[1])

    def loss(self, look: torch.Tensor, first_image_pos: int = 2) -> torch.Tensor:
        """-log(attention mass of head 0 on the target patches), averaged over supervised positions and layers."""
        n = look.shape[-1]
        valid = look.any(-1)
        if not self.weights or not valid.any():
            return torch.zeros((), device=look.device)
        losses = []
        for w in self.weights:
            on_image = w[:, 0, :, first_image_pos : first_image_pos + n].float()  # (B, T, n)
            mass = (on_image * look).sum(-1)
            losses.append(-torch.log(mass[valid] + 1e-4).mean())
        self.weights.clear()
        return torch.stack(losses).mean()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


#: File of a run's folder that keeps the training-only heads, so that ``--resume`` continues with them.
HEADS_FILE = "training_heads.safetensors"
#: File of a run's folder that records its settings, losses and time (:func:`write_record`) and those of the runs
#: it continues; the model card reads it.
RECORD_FILE = "training.json"
#: The command, as its messages name it.
PROG = "python -m helpers train"
#: The first line of the model card that ``python -m helpers modelcard`` writes (``README.md``).
CARD_TITLE = "# kosmos2-tiny-world — the course's bundled offline model"


def save_heads(folder: Path, heads: DenseHeads, token_heads: DenseHeads) -> None:
    """Write the training-only heads (on the patches and on the image tokens) next to a saved model."""
    from safetensors.torch import save_file

    tensors = {f"patches.{k}": v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    tensors |= {f"tokens.{k}": v.detach().cpu().contiguous() for k, v in token_heads.state_dict().items()}
    save_file(tensors, str(Path(folder) / HEADS_FILE))


def load_heads(folder: Path, heads: DenseHeads, token_heads: DenseHeads) -> list[str]:
    """Load heads saved by :func:`save_heads` (if the file is there); returns the names that were not in it.

    Heads added to the recipe after the file was written keep their fresh start.
    """
    from safetensors.torch import load_file

    path = Path(folder) / HEADS_FILE
    if not path.is_file():
        return sorted([f"patches.{k}" for k in heads.state_dict()] + [f"tokens.{k}" for k in token_heads.state_dict()])
    tensors = load_file(str(path))
    missing = []
    for prefix, module in (("patches.", heads), ("tokens.", token_heads)):
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        result = module.load_state_dict(part, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{path} holds heads this recipe does not have: {result.unexpected_keys}")
        missing += [prefix + k for k in result.missing_keys]
    return missing


#: What a training record holds, for the messages about one that cannot be read.
_RECORD_EXPECTED = f"the record of the run as `{PROG} --out DIR` writes it (or no {RECORD_FILE} at all)"


def read_training(folder: str | Path) -> dict:
    """The record of the run saved in ``folder`` (:data:`RECORD_FILE`, what ``python -m helpers train`` writes),
    or ``{}`` when it has none.

    Raises:
        ValueError: the file is not UTF-8 JSON text (the message names it: :func:`checks.read_json`).
    """
    path = Path(folder) / RECORD_FILE
    return read_json(path, "training record", _RECORD_EXPECTED) if path.exists() else {}


def recorded_runs(record: dict) -> list[dict]:
    """The runs a ``training.json`` record holds, first to last: its ``stages`` after ``--resume``, else itself."""
    return record.get("stages") or [record]


def training_problem(training: object) -> str | None:
    """Why a ``training.json`` record (what ``python -m helpers train`` writes) can neither be carried on by a
    resumed run nor shown by the model card, or ``None`` when it can."""
    if not isinstance(training, dict):
        return f"it holds a JSON {type(training).__name__}, not an object"
    runs = recorded_runs(training)

    def run_ok(run: object) -> bool:
        history = run.get("history", []) if isinstance(run, dict) else None
        return (isinstance(run, dict) and isinstance(run.get("config", {}), dict) and isinstance(history, list)
                and all(isinstance(point, dict) for point in history))

    if not isinstance(runs, list) or not all(run_ok(run) for run in runs):
        return ("its runs (the record itself, or each of its 'stages') are not objects with a 'config' object and a "
                "'history' list of objects")
    return None


def joint_curve(record: dict, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``key`` (``"text_loss"``, ``"dense_loss"``, ``"look_loss"`` …) at the joint stage's
    points of a training record (a ``training.json``, or ``{"history": history}`` of :func:`train`), every run of
    a resumed record one after another: a run's steps count on from the last joint point of the runs before, so
    every key's curve shares one axis. Points without ``key`` are left out; a record with none gives ``[]``.

    Raises:
        TypeError: ``record`` is not a dict.
    """
    if not isinstance(record, dict):
        raise TypeError(f"record must be a training record (a dict, as training.json holds), "
                        f"got {type(record).__name__}")
    points: list[tuple[int, float]] = []
    offset = 0
    for run in recorded_runs(record):
        joint = [h for h in run.get("history", []) if h.get("stage") == "joint"]
        points += [(h["step"] + offset, h[key]) for h in joint if key in h]
        offset += joint[-1]["step"] if joint else 0
    return points


def write_record(folder: Path, cfg: TrainConfig, history: list[dict], seconds: float) -> None:
    """Write :data:`RECORD_FILE`: this run's settings, losses and time; after ``--resume`` every earlier run too."""
    earlier = recorded_runs(cfg.resumed_from) if cfg.resumed_from is not None else []
    record = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in cfg.__dict__.items()
                   if k != "resumed_from"},  # JSON has no Path; the previous runs go to "stages"
        "seconds": round(seconds, 1), "history": history,
        "hardware": describe_device(cfg.device),
        "torch": torch.__version__,
        # a resumed run keeps the location tokens its first run started from (None: not recorded then)
        "location_features": earlier[0].get("location_features") if earlier else LOCATION_FEATURES,
    }
    if earlier:
        record["stages"] = [{k: v for k, v in st.items() if k != "stages"} for st in earlier] + [dict(record)]
        record["seconds"] = round(sum(st.get("seconds", 0) for st in record["stages"]), 1)
    (Path(folder) / RECORD_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")


def save_run(folder: Path, model, processor, heads: tuple[DenseHeads, DenseHeads], cfg: TrainConfig,
             history: list[dict], seconds: float) -> None:
    """Save a run into ``folder``, all that ``--resume`` continues from: the model, its processor, the training-only
    ``heads`` (on the patches, on the image tokens; :data:`HEADS_FILE`) and the record (:func:`write_record`)."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    save_heads(folder, *heads)
    write_record(folder, cfg, history, seconds)


@dataclass
class _Run:
    """What the stages of :func:`train` share: the settings, the model with its processor and training-only heads,
    the stream of random draws, the log with its history (points of the losses), the start time and the flag that
    a signal raises; each stage is a method."""

    cfg: TrainConfig
    model: object
    processor: object
    heads: DenseHeads  # on the patch features
    token_heads: DenseHeads  # on the image tokens
    rng: random.Random
    log: Callable[[str], None]
    stop: _StopFlag
    history: list[dict] = field(default_factory=list)
    start: float = field(default_factory=time.time)

    @property
    def grid(self) -> int:
        """Patches per side of an image (the image tokens are a grid of grid × grid)."""
        return self.cfg.image_size // self.cfg.patch_size

    def stream(self, make, number: int, **options):
        """The batches of ``make`` (:func:`dense_batch` or :func:`joint_batch`) for stage ``number``."""
        return batches(partial(make, processor=self.processor, cfg=self.cfg, grid=self.grid, **options), self.rng,
                       self.cfg, number)

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters of the training-only heads, those on the patches first."""
        return list(self.heads.parameters()) + list(self.token_heads.parameters())

    def autocast(self):
        """Forward passes in bfloat16 with ``cfg.bf16``, else as they are (float32)."""
        cfg = self.cfg
        return torch.autocast(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16)

    def what_where_loss(self, b, patches, embeds):
        """Both heads' what / where loss, on the patches and on the image tokens."""
        return self.heads.loss(patches, b["what"], b["where"]) + self.token_heads.loss(embeds, b["what"], b["where"])

    def group_loss(self, b, patches, embeds):
        """Both heads' group loss (group size and caption place), on the patches and on the image tokens."""
        on_objects = self.cfg.group_on_objects
        return (self.heads.group_loss(patches, b["count"], b["place"], on_objects)
                + self.token_heads.group_loss(embeds, b["count"], b["place"], on_objects))

    def dense_loss(self, b, patches, embeds):
        """The training-only heads' loss (what / where per patch, and the group targets when asked for)."""
        loss = self.what_where_loss(b, patches, embeds)
        return loss + self.group_loss(b, patches, embeds) if self.cfg.group_weight else loss

    def dense_step(self, opt, loss, stage: str, step: int, *, last: bool, every: int) -> None:
        """One optimizer step of a dense-targets stage, logged every ``every`` steps and at the last."""
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0 or last:
            self.log(f"{stage} step {step:5d}  dense loss {loss.item():.3f}  {time.time() - self.start:6.0f}s")
            self.history.append({"stage": stage, "step": step, "dense_loss": round(loss.item(), 4)})

    def heads_stage(self) -> None:
        """Stage 0 (resumed runs): fresh training-only heads learn on the frozen model first, so that their
        first, large gradients do not run through weights that are already trained."""
        cfg = self.cfg
        opt = torch.optim.AdamW(self.head_parameters(), lr=3e-3, weight_decay=0.01)
        self.model.eval()
        stream = self.stream(dense_batch, 0, mixed=False)
        for step in range(cfg.heads_steps):
            if self.stop.raised:
                break
            b = next(stream)
            with torch.no_grad(), self.autocast():
                patches, embeds = image_features(self.model, b["pixel_values"])
            loss = self.dense_loss(b, patches.float(), embeds.float())
            self.dense_step(opt, loss, "heads", step, last=step == cfg.heads_steps - 1, every=25)
        stream.close()

    def vision_stage(self) -> None:
        """Stage 1: the vision tower and the projection alone, on the dense targets (image token i ↔ patch i)."""
        cfg, model = self.cfg, self.model
        vision_params = (list(model.vision_model.parameters()) + list(model.image_to_text_projection.parameters())
                         + self.head_parameters())
        opt = torch.optim.AdamW(vision_params, lr=cfg.lr, weight_decay=0.01)
        model.train()
        stream = self.stream(dense_batch, 1, mixed=True)
        for step in range(cfg.vision_steps):
            if self.stop.raised:
                break
            b = next(stream)
            for g in opt.param_groups:
                g["lr"] = warmup_lr(cfg.lr, step, cfg.warmup)
            with self.autocast():
                patches, embeds = image_features(model, b["pixel_values"])
                loss = self.dense_loss(b, patches, embeds)
            self.dense_step(opt, loss, "vision", step, last=step == cfg.vision_steps - 1, every=50)
        stream.close()

    def joint_losses(self, b, tap: AttentionTap) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The joint stage's loss on batch ``b`` (the weighted sum) and its parts: text, dense, look, group and
        count (a part whose weight is 0 is not computed: it is 0)."""
        cfg, model = self.cfg, self.model
        with self.autocast():
            patches, embeds = image_features(model, b["pixel_values"])
            out = model(
                input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                image_embeds_position_mask=b["image_embeds_position_mask"], image_embeds=embeds,
                labels=b["labels"],
            )
            dense = self.what_where_loss(b, patches, embeds)
            off = torch.zeros((), device=cfg.device)  # the value logged for a loss that is switched off
            group = self.group_loss(b, patches, embeds) if cfg.group_weight else off
            look = tap.loss(b["look"])
        counting = count_word_loss(out.logits, b["labels"], b["count_words"]) if cfg.count_weight else off
        loss = (out.loss + cfg.aux_weight * dense + cfg.look_weight * look + cfg.group_weight * group
                + cfg.count_weight * counting)
        return loss, {"text": out.loss, "dense": dense, "look": look, "group": group, "count": counting}

    def joint_point(self, step: int, losses: dict, since: float) -> dict:
        """One point of the history: the step's losses (those that are on) and the joint stage's time so far."""
        cfg = self.cfg
        on = {"text": True, "dense": True, "look": True, "group": cfg.group_weight, "count": cfg.count_weight}
        return {"stage": "joint", "step": step,
                **{f"{k}_loss": round(v.item(), 4) for k, v in losses.items() if on[k]},
                "seconds": round(time.time() - since, 1)}

    def joint_stage(self) -> None:
        """Stage 2: everything, every task; head 0 of each text layer is shown where to look. It ends after
        ``cfg.steps`` steps, at the ``cfg.minutes`` budget or at a signal, and saves a checkpoint into
        ``cfg.checkpoint`` every ``cfg.checkpoint_minutes``."""
        cfg, model = self.cfg, self.model
        model.set_attn_implementation("eager")
        tap = AttentionTap(model)
        params = list(model.parameters()) + self.head_parameters()
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
        stream = self.stream(joint_batch, 2)
        stage_start = last_save = time.time()
        done = 0  # joint steps taken
        rounded, rounding = linears_4bit(model), torch.Generator().manual_seed(cfg.seed)
        shares = {"fp4": cfg.fp4_share, "nf4": cfg.nf4_share}
        for step in range(cfg.steps):
            frac = step / max(1, cfg.steps)
            if cfg.minutes is not None:
                frac = max(frac, (time.time() - stage_start) / (60 * cfg.minutes))
            if frac >= 1.0 and step > 0:
                self.log(f"time budget reached at step {step}")
                break
            if self.stop.raised:
                self.log(f"stopped by signal {self.stop.raised} at joint step {step}")
                break
            lr = cosine_lr(cfg.lr, step, cfg.warmup, frac)
            for g in opt.param_groups:
                g["lr"] = lr
            b = next(stream)
            with rounded_4bit(rounded, shares, rounding):  # the weights it rounds are back for the step
                loss, losses = self.joint_losses(b, tap)
                opt.zero_grad()
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            done = step + 1
            if cfg.checkpoint and time.time() - last_save > 60 * cfg.checkpoint_minutes:
                last_save = time.time()
                save_run(cfg.checkpoint, model, self.processor, (self.heads, self.token_heads), cfg, self.history,
                         time.time() - self.start)  # resumable on its own
                self.log(f"checkpoint at step {step} in {cfg.checkpoint}")
            if step % cfg.log_every == 0:
                rate = step / max(time.time() - stage_start, 1e-9)
                self.log(f"step {step:5d}  text loss {losses['text'].item():.3f}  dense {losses['dense'].item():.3f}  "
                         f"look {losses['look'].item():.3f}  "
                         + (f"group {losses['group'].item():.3f}  " if cfg.group_weight else "")
                         + (f"count {losses['count'].item():.3f}  " if cfg.count_weight else "")
                         + f"lr {lr:.2e}  {time.time() - self.start:6.0f}s  {rate:.2f} steps/s")
                self.history.append(self.joint_point(step, losses, stage_start))
        if done and (done - 1) % cfg.log_every:  # the last step is always in the history: it tells how far a run got
            self.history.append(self.joint_point(done - 1, losses, stage_start))
        stream.close()
        tap.remove()


def train(cfg: TrainConfig, processor=None, model=None, log=print, heads_from: Path | None = None,
          keep_heads: list | None = None):
    """Run the recipe; returns ``(model, processor, history)``.

    ``heads_from``: a run folder whose training-only heads (:data:`HEADS_FILE`) the run starts from.
    ``keep_heads``: a list that receives the run's heads ``(on the patches, on the image tokens)``, to save
    them with the model (:func:`save_heads`); checkpoints save them too.

    Raises:
        TypeError, ValueError: settings that cannot run (:func:`check_config`), or a model whose image tokens do
            not match the grid of patches.
        QuantizationError: 4-bit shares without a recent enough bitsandbytes.
    """
    check_config(cfg)  # before anything is built
    if cfg.fp4_share or cfg.nf4_share:
        check_available("4bit", cfg.device)  # the rounding is bitsandbytes', as the 4-bit paths load the model
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    processor = processor or build_processor(cfg.image_size)
    model = model or new_model(processor, seed=cfg.seed, image_size=cfg.image_size, patch_size=cfg.patch_size)
    grid = cfg.image_size // cfg.patch_size
    heads = DenseHeads(model.config.vision_config.hidden_size)
    token_heads = DenseHeads(model.config.text_config.embed_dim)
    if heads_from is not None:
        fresh = load_heads(heads_from, heads, token_heads)
        log(f"training heads from {heads_from}" + (f"; fresh: {', '.join(fresh)}" if fresh else ""))
    if keep_heads is not None:
        keep_heads.append((heads, token_heads))
    if model.config.latent_query_num != grid * grid:
        raise ValueError(f"the recipe pairs image token i with patch i: latent_query_num must be {grid * grid}")
    model.to(cfg.device)
    heads.to(cfg.device)
    token_heads.to(cfg.device)
    # SIGTERM / SIGINT: finish the current step, skip the rest, return what was learned
    run = _Run(cfg, model, processor, heads, token_heads, rng, log, _StopFlag())
    run.heads_stage()
    run.vision_stage()
    run.joint_stage()
    run.stop.restore()
    model.set_attn_implementation("sdpa")
    model.eval()
    model.to("cpu")  # saved and used on the CPU; the heads stay where they trained (saved from there)
    return model, processor, run.history


def _task_weights_arg(text: str) -> dict[str, float]:
    try:
        return parse_task_weights(text)
    except ValueError as err:  # argparse shows an ArgumentTypeError's own message
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m helpers train`` (its defaults are the recipe's).

    Each option's type checks its range, so a bad value stops the command before any work (exit status 2).
    """
    share, at_least_0 = number_option(share=True), number_option()
    parser = argparse.ArgumentParser(prog=PROG, formatter_class=DefaultsHelpFormatter,
                                     description="Train the bundled Kosmos-2 model on the synthetic world.")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for the model: new, empty, or holding a model, which is replaced (its "
                             "evaluation*.json and model card, which describe the old weights, are removed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new model's weights and of the scenes drawn")
    parser.add_argument("--vision-steps", type=count_option, default=300,
                        help="steps of the vision tower alone (dense supervision) before the joint stage")
    parser.add_argument("--heads-steps", type=count_option, default=0,
                        help="steps of the training-only heads alone on the frozen model before the rest "
                             "(for --resume without saved heads)")
    parser.add_argument("--steps", type=positive_int_option, default=2000,
                        help="joint steps at most (with --minutes: the cosine ends at whichever comes first)")
    parser.add_argument("--batch-size", type=positive_int_option, default=48, help="training examples per step")
    parser.add_argument("--lr", type=positive_number_option, default=2e-3,
                        help="peak learning rate (AdamW; warm-up, then cosine decay)")
    parser.add_argument("--minutes", type=positive_number_option, default=None,
                        help="wall-time budget of the joint stage (default: none, the cosine runs over --steps)")
    parser.add_argument("--threads", type=positive_int_option, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--resume", type=Path, default=None,
                        help="continue from a saved model directory (its processor too) instead of a new model")
    parser.add_argument("--warmup", type=count_option, default=100, help="warm-up steps (0: none)")
    parser.add_argument("--aux-weight", type=at_least_0, default=0.5,
                        help="weight of the dense loss in the joint stage: training-only heads predict what "
                             "covers each patch and where its box is")
    parser.add_argument("--look-weight", type=at_least_0, default=0.5,
                        help="weight of the supervised attention: head 0 of each decoder layer is shown which "
                             "image tokens belong to the object being named")
    parser.add_argument("--checkpoint", type=Path, default=None, help="save here every --checkpoint-minutes")
    parser.add_argument("--checkpoint-minutes", type=at_least_0, default=10.0,
                        help="minutes between two saves into --checkpoint")
    parser.add_argument("--group-weight", type=at_least_0, default=0.0,
                        help="weight of the training-only group heads (group size and caption place per patch)")
    parser.add_argument("--group-on-objects", action="store_true",
                        help="the group heads' loss only on patches that an object covers (not on background)")
    parser.add_argument("--pair-share", type=share, default=0.0,
                        help="share of training scenes redrawn until they hold a pair of one kind")
    parser.add_argument("--three-share", type=share, default=0.0,
                        help="share of the other training scenes redrawn until they hold three kinds")
    parser.add_argument("--count-weight", type=at_least_0, default=0.0,
                        help="weight of an extra loss on the first word of each grounded phrase (a / two …), "
                             "where a caption decides how many objects the phrase names")
    parser.add_argument("--task-weights", type=_task_weights_arg, default=None, metavar="TASK=W,…",
                        help="how often each task is drawn, e.g. comprehension=0.3,detail=0.05 (the tasks not named "
                             f"keep {', '.join(f'{k}={v}' for k, v in TASK_WEIGHTS.items())})")
    parser.add_argument("--device", default="cpu",
                        help="where the model trains: cpu, or cuda on a GPU (saved weights are the same either way)")
    parser.add_argument("--workers", type=count_option, default=0,
                        help="processes that draw and encode the batches (0: the training process itself)")
    parser.add_argument("--log-every", type=positive_int_option, default=25, help="joint steps between two log lines")
    parser.add_argument("--bf16", action="store_true",
                        help="forward passes in bfloat16 (about twice as fast on CPUs with AMX or AVX-512 BF16, "
                             "and on GPUs with native bfloat16, compute capability 8.0 or newer; refused on older "
                             "ones such as a T4); weights, optimizer state and losses stay float32")
    parser.add_argument("--fp4-share", type=share, default=0.0,
                        help="share of the joint passes in which each linear but lm_head computes with its weight "
                             "rounded as the article's 4-bit path does (bitsandbytes FP4), the gradient passed "
                             "straight through: quantization-aware training (0 = off)")
    parser.add_argument("--nf4-share", type=share, default=0.0,
                        help="the same with NF4 rounding (the course's other 4-bit path), in another share of "
                             "the passes: --fp4-share and --nf4-share add up to at most 1 (0 = off)")
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                        help="skip the held-out evaluation and model card")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed command-line options."""
    return TrainConfig(seed=args.seed, vision_steps=args.vision_steps, heads_steps=args.heads_steps, steps=args.steps,
                       batch_size=args.batch_size, lr=args.lr, minutes=args.minutes, warmup=args.warmup,
                       aux_weight=args.aux_weight, look_weight=args.look_weight,
                       checkpoint=args.checkpoint, checkpoint_minutes=args.checkpoint_minutes,
                       group_weight=args.group_weight, group_on_objects=args.group_on_objects,
                       pair_share=args.pair_share, three_share=args.three_share,
                       device=args.device, workers=args.workers, log_every=args.log_every, bf16=args.bf16,
                       count_weight=args.count_weight, task_weights=args.task_weights,
                       fp4_share=args.fp4_share, nf4_share=args.nf4_share)


def check_args(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` for what the options' types cannot see: ``--out`` or ``--checkpoint`` at (or under)
    a file or in a folder nothing can be written in (:func:`helpers.grounding.checks.out_problem`), an ``--out``
    folder holding files but no saved model (the run would mix its files in), a ``--resume`` that is not a folder
    with a saved model, a ``--device`` this machine does not have
    (:func:`helpers.grounding.finetune.device_option_problem`: not a device torch knows, ``cuda`` or ``cuda:N``
    without that GPU, ``mps`` without Apple's MPS backend)."""
    for flag, folder in (("--out", args.out), ("--checkpoint", args.checkpoint)):
        problem = None if folder is None else out_problem(flag, folder, folder=True, wanted="a folder for the model")
        if problem:
            raise ValueError(problem)
    out = args.out
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ValueError(f"--out {str(out)!r} holds files but no saved model: give a new or empty folder, or one "
                         "with a model to replace")
    if args.resume is not None:
        resume = args.resume
        if not resume.exists():
            raise ValueError(f"--resume {str(resume)!r} does not exist: give the folder of a saved run "
                             "(what `python -m helpers train --out DIR` wrote)")
        if not resume.is_dir():
            raise ValueError(f"--resume {str(resume)!r} is not a folder: give the folder of a saved run")
        if not (resume / "config.json").is_file():
            raise ValueError(f"--resume {str(resume)!r} holds no saved model (no config.json): give the folder "
                             "of a saved run (what `python -m helpers train --out DIR` wrote)")
    problem = device_option_problem(args.device)
    if problem:
        raise ValueError(problem)


def _load_run(folder: Path):
    """The model and processor of a saved run (``--resume``) and its record (:data:`RECORD_FILE`, ``None`` without
    one); the record is read first, and a ``ValueError`` names it when it is not UTF-8 JSON text or does not hold
    runs the new record and the model card can carry on (:func:`training_problem`)."""
    from transformers import AutoProcessor, Kosmos2ForConditionalGeneration

    path = folder / RECORD_FILE
    previous = read_training(folder) if path.exists() else None  # (a file holding {} is a record, and wrong)
    problem = None if previous is None else training_problem(previous)
    if problem:
        raise ValueError(f"training record {str(path)!r}: {problem}; expected {_RECORD_EXPECTED}")
    processor = AutoProcessor.from_pretrained(folder)
    model = Kosmos2ForConditionalGeneration.from_pretrained(folder, use_safetensors=True)
    return model, processor, previous


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv``; return the exit code: 0 when the model was saved, 2 with a one-line message
    on stderr for a bad option (every option, folder and the device are checked before anything is built,
    loaded or trained), 1 when the run to ``--resume`` cannot be loaded."""
    args = parse(build_parser(), argv)
    if isinstance(args, int):  # --help (0) or a bad option, which argparse has reported (2)
        return args
    cfg = config_from_args(args)
    try:
        check_4bit_shares(cfg.fp4_share, cfg.nf4_share, ("--fp4-share", "--nf4-share"))  # named as typed
        check_config(cfg)
        check_args(args)
        if cfg.fp4_share or cfg.nf4_share:
            check_available("4bit", cfg.device)  # QuantizationError is a ValueError
    except (TypeError, ValueError) as err:
        return fail(str(err), prog=PROG)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not interactive():  # KOSMOS2_PROGRESS=0, CI, a log file: no "Writing model shards" bar at each save
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if torch.device(args.device).type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matrix products: the tiny model trains in float32
    t0 = time.time()
    model = processor = None
    if args.resume:
        try:
            model, processor, cfg.resumed_from = _load_run(args.resume)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
            reason = " ".join(str(err).split())[:400]
            return fail(f"cannot load the run to resume from {str(args.resume)!r}: {type(err).__name__}: {reason}",
                        code=1, prog=PROG)
        grid = cfg.image_size // cfg.patch_size
        if model.config.latent_query_num != grid * grid:
            return fail(f"--resume {str(args.resume)!r} holds a model with {model.config.latent_query_num} image "
                        f"tokens; the recipe needs {grid * grid} (one per {cfg.patch_size}-pixel patch of "
                        f"{cfg.image_size}-pixel images)", prog=PROG)
    kept: list = []
    model, processor, history = train(cfg, processor=processor, model=model, log=lambda s: print(s, flush=True),
                                      heads_from=args.resume, keep_heads=kept)
    seconds = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    stale = sorted(args.out.glob("evaluation*.json"))  # they measured the weights this run replaces
    card = args.out / "README.md"
    if card.is_file() and card.read_text(encoding="utf-8", errors="replace").startswith(CARD_TITLE):
        stale.append(card)  # the model card written from them (a README of another kind stays)
    for path in stale:
        path.unlink()
    save_run(args.out, model, processor, kept[0], cfg, history, seconds)
    if stale:
        print(f"removed {', '.join(p.name for p in stale)} from {args.out}: they evaluated the weights replaced now "
              f"(python -m helpers modelcard {args.out} [--seed N] measures the new ones)")
    print(f"saved to {args.out} after {seconds:.0f}s")
    if args.evaluate:
        from helpers.world.modelcard import write_card

        write_card(args.out)
        print(f"model card written to {args.out / 'README.md'}")
    return 0
