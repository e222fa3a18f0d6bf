"""A fine-tuning task the bundled model cannot do: stars, a kind of object its world never had.

Scenes hold one star (sometimes two of one colour, sometimes a second star of another colour) beside
objects of the world (:data:`helpers.world.scenes.KINDS`), at least one of them in the star's colour, so that
"the red star" cannot be found by its colour alone. Stars come in the world's five colours; the word
*star* is not a piece of the world's tokenizer and is spelled with its letter pieces (``▁s t a r``).
Everything here lives outside ``KINDS`` and :func:`helpers.world.scenes.sample_scene`: the world's seeded
scenes do not change.

``python -m helpers finetune-demo --out DIR`` runs the whole demonstration: it writes training and held-out
data in COCO detection format, measures the bundled model, fine-tunes LoRA adapters with
:mod:`helpers.grounding.finetune`, measures again (the stars, and the model's own world) and puts the figures in the
adapters' card. Every option (and the output folder, which must be new or empty, and the data folder, which must be
new, empty or one an earlier run wrote its data into) is checked before anything is drawn, written or loaded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from helpers.course.paths import bundled_model_dir
from helpers.grounding.checks import (DefaultsHelpFormatter, check_seed, count_option, fail, out_problem, parse,
                                      positive_int_option, positive_number_option)
from helpers.grounding.boxes import normalized_to_coco
from helpers.grounding.evaluation import HELD_OUT_SEED, evaluate
from helpers.world import scenes as world
from helpers.world.scenes import COLOURS, KINDS, SEED_STRIDE, Scene

#: The new kinds: a star in each colour of the world.
STAR_KINDS = tuple((c, "star") for c in COLOURS)

#: Seeds of the demonstration's data (held-out scenes never overlap the training ones).
STARS_TRAIN_SEED, STARS_HELD_OUT_SEED = 7, 8
#: Scene ``i`` of a seed is drawn from ``seed * SEED_STRIDE + i`` (:data:`helpers.world.scenes.SEED_STRIDE`, as
#: :func:`helpers.world.scenes.sample_scenes` does), so more than
#: ``(STARS_HELD_OUT_SEED - STARS_TRAIN_SEED) * SEED_STRIDE`` training scenes would reach the held-out seeds:
#: ``--train-images`` stops there.
MAX_TRAIN_IMAGES = (STARS_HELD_OUT_SEED - STARS_TRAIN_SEED) * SEED_STRIDE


def draw_star(draw: ImageDraw.ImageDraw, colour: str, box_px) -> tuple[float, float, float, float]:
    """Draw a five-pointed star filling ``box_px`` in one of the world's colours; returns its tight pixel box."""
    if colour not in COLOURS:
        raise ValueError(f"a star needs a colour, one of {tuple(COLOURS)}; got {colour!r}")
    x0, y0, x1, y1 = box_px
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    points = []
    for i in range(10):
        angle = -math.pi / 2 + i * math.pi / 5
        r = 1.0 if i % 2 == 0 else 0.45
        points.append((cx + r * rx * math.cos(angle), cy + r * ry * math.sin(angle)))
    draw.polygon(points, fill=COLOURS[colour], outline=world.outline_colour(colour),
                 width=world.outline_width(x1 - x0, y1 - y0))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


def star_scene(seed: int) -> Scene:
    """One seeded scene with a star (see the module docstring); sizes and placement as in the world.

    Raises:
        TypeError: a ``seed`` that is not a whole number (numpy ints are one), as for
            :func:`helpers.world.scenes.sample_scene`.
    """
    seed = check_seed("seed", seed)
    rng = random.Random(seed)
    width, height = world.random_size(rng)
    colour = rng.choice(list(COLOURS))
    kinds: list[tuple[str | None, str]] = [(colour, "star")]
    counts = [2 if rng.random() < 0.2 else 1]
    kinds.append(rng.choice([k for k in KINDS if k[0] == colour]))
    counts.append(1)
    extra = rng.random()
    if extra < 0.3:
        kinds.append(rng.choice([k for k in STAR_KINDS if k not in kinds]))
        counts.append(1)
    elif extra < 0.6:
        kinds.append(rng.choice([k for k in KINDS if k not in kinds]))
        counts.append(1)
    image = Image.new("RGB", (width, height), world.random_background(rng))
    placed = world.place_objects(rng, ImageDraw.Draw(image), kinds, counts, width, height, draw_one=_draw_one)
    return world.scene_from_placed(image, placed, seed)


def _draw_one(draw: ImageDraw.ImageDraw, colour: str | None, shape: str, box_px) -> tuple[float, float, float, float]:
    """Draw a star or an object of the world in ``box_px``; return the tight pixel box of what was drawn."""
    if shape == "star":
        return draw_star(draw, colour, box_px)
    world.draw_object(draw, colour, shape, box_px)
    return box_px


def write_coco(folder: str | Path, n: int, seed: int, name: str, world_scenes: int = 0) -> Path:
    """Draw ``n`` star scenes into ``folder/images`` and write their COCO annotations to ``folder/{name}.json``.

    ``world_scenes`` more images are scenes of the world itself (:func:`helpers.world.scenes.sample_scenes` of
    ``seed``, far from the held-out seed of its evaluation): training on them too keeps what the model knows.
    """
    seed = check_seed("seed", seed)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    kinds = list(KINDS) + list(STAR_KINDS)
    categories = [{"id": i + 1, "name": world.kind_name(c, s)} for i, (c, s) in enumerate(kinds)]
    cat_id = {k: i + 1 for i, k in enumerate(kinds)}
    images, annotations = [], []
    scenes = [star_scene(seed * SEED_STRIDE + i) for i in range(n)] + world.sample_scenes(world_scenes, seed=seed)
    for i, scene in enumerate(scenes):
        file_name = f"{name}_{i:05d}.png"
        scene.image.save(folder / "images" / file_name)
        w, h = scene.image.size
        images.append({"id": i, "file_name": file_name, "width": w, "height": h})
        for obj in scene.objects:
            annotations.append({"id": len(annotations), "image_id": i, "category_id": cat_id[(obj.colour, obj.shape)],
                                "bbox": normalized_to_coco(obj.box, (w, h))})
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}),
                    encoding="utf-8")
    return path


def is_data_folder(folder: Path) -> bool:
    """Whether ``folder`` may take the demonstration's data: it is missing or empty, or holds only what
    :func:`write_coco` writes there (``train.json``, ``held_out.json`` and ``images/`` of ``train_NNNNN.png`` and
    ``held_out_NNNNN.png``), so that a later run may replace it (the default ``--data`` is one folder for every
    run)."""
    if not folder.is_dir():
        return True
    images = folder / "images"
    return ({p.name for p in folder.iterdir()} <= {"train.json", "held_out.json", "images"}
            and (not images.exists() or images.is_dir() and all(
                p.is_file() and re.fullmatch(r"(train|held_out)_\d{5,}\.png", p.name) for p in images.iterdir())))


def is_star(obj) -> bool:
    return obj.category.name.endswith(" star")


def world_figures(model, processor, scenes: int = 220) -> dict:
    """The model's own-world figures (:func:`helpers.grounding.evaluation.evaluate` on the held-out world scenes)."""
    return evaluate(model, processor, world.sample_scenes(scenes, seed=HELD_OUT_SEED)).as_dict()


_WORLD_ROWS = (("own world: caption phrase recall", "caption_phrase_recall"),
               ("own world: caption box hit", "caption_box_hit"),
               ("own world: comprehension accuracy@1", "comprehension_accuracy_at_1"),
               ("own world: question names the object", "qa_names_object"),
               ("own world: generation names the object", "generation_names_object"))


PROG = "python -m helpers finetune-demo"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, formatter_class=DefaultsHelpFormatter,
                                     description="The stars demonstration: data, fine-tuning, figures.")
    parser.add_argument("--out", type=Path, required=True, help="folder for the adapters (must be new or empty)")
    parser.add_argument("--data", type=Path, default=Path("finetune-stars-data"),
                        help="folder for the generated data: new or empty, or one an earlier run wrote (replaced)")
    parser.add_argument("--train-images", type=positive_int_option, default=1500,
                        help="star scenes in the training data")
    parser.add_argument("--world-images", type=count_option, default=4500,
                        help="scenes of the world in the training data (they keep what the base knows)")
    parser.add_argument("--held-out-images", type=positive_int_option, default=240,
                        help="held-out star scenes the figures are measured on")
    parser.add_argument("--minutes", type=positive_number_option, default=9.5, help="wall-time budget of the training")
    parser.add_argument("--steps", type=positive_int_option, default=None,
                        help="optimizer steps at most (default: as many as --minutes allows)")
    parser.add_argument("--batch-size", type=positive_int_option, default=16, help="training texts per optimizer step")
    parser.add_argument("--lr", type=positive_number_option, default=1.5e-3, help="peak learning rate")
    parser.add_argument("--rank", type=positive_int_option, default=16, help="LoRA rank")
    parser.add_argument("--vision", action="store_true", help="adapters in the vision tower too")
    parser.add_argument("--threads", type=positive_int_option, default=2, help="torch CPU threads")
    parser.add_argument("--bf16", action="store_true", help="forward passes in bfloat16 (see finetune --bf16)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demonstration; return the exit code: 0 when it ran, 2 for a bad option or output folder (checked
    before anything is drawn, written or loaded), 1 when the bundled model cannot be loaded."""
    from helpers.grounding.finetune import (BaseModelError, FinetuneConfig, FinetuneError, check_config, check_kosmos2,
                                            check_output)

    args = parse(build_parser(), argv)
    if isinstance(args, int):  # --help (0) or a bad option, which argparse has reported (2)
        return args
    cfg = FinetuneConfig(steps=args.steps, minutes=args.minutes, batch_size=args.batch_size, lr=args.lr,
                         rank=args.rank, vision=args.vision, new_words=("star", "stars"), device="cpu",
                         threads=args.threads, bf16=args.bf16)
    base = os.path.relpath(bundled_model_dir())  # recorded in the card as given: relative to where it runs
    try:  # every check before anything is drawn, written or loaded
        check_config(cfg)
        if args.train_images > MAX_TRAIN_IMAGES:
            raise FinetuneError(f"--train-images must be at most {MAX_TRAIN_IMAGES} (more would draw the held-out "
                                f"scenes' seeds too), got {args.train_images}")
        check_output(args.out, resumable=False)
        problem = out_problem("--data", args.data, folder=True, wanted="a folder for the generated data")
        if problem:
            raise FinetuneError(problem)
        if not is_data_folder(args.data):
            raise FinetuneError(f"--data {str(args.data)!r} holds files that finetune-demo did not write; give a new "
                                "or empty folder, or one an earlier finetune-demo wrote (its data is replaced)")
        out = args.out.resolve()
        if args.data.resolve() == out or out in args.data.resolve().parents:
            raise FinetuneError(f"--data {str(args.data)!r} must not be --out {str(args.out)!r} or inside it "
                                "(--out gets the adapters only)")
        check_kosmos2(base)
    except BaseModelError as err:
        return fail(str(err), code=1, prog=PROG)
    except FinetuneError as err:
        return fail(str(err), prog=PROG)
    try:
        return _run(args, cfg, base, list(sys.argv[1:] if argv is None else argv))
    except BaseModelError as err:
        return fail(str(err), code=1, prog=PROG)
    except FinetuneError as err:
        return fail(str(err), prog=PROG)


def _run(args: argparse.Namespace, cfg, base: str, argv: list[str]) -> int:
    """The demonstration itself, once :func:`main` has checked its arguments."""
    import torch

    from helpers.grounding.finetune import BaseModelError, add_figures, box_accuracy, finetune, read_coco
    from helpers.grounding.model import load

    torch.set_num_threads(args.threads)
    train_file = write_coco(args.data, args.train_images, STARS_TRAIN_SEED, "train", world_scenes=args.world_images)
    held_file = write_coco(args.data, args.held_out_images, STARS_HELD_OUT_SEED, "held_out")
    records = read_coco(train_file, args.data / "images")
    held_out = read_coco(held_file, args.data / "images")
    try:
        model, processor = load(base, device="cpu", verbose=False)
    except ValueError as err:  # ModelLoadError: the bundled model is missing or broken
        raise BaseModelError(str(err)) from err
    before = box_accuracy(model, processor, held_out, only=is_star)
    world_before = world_figures(model, processor)
    print("before:", json.dumps(before), flush=True)
    t0 = time.time()
    source = (f"helpers.world.new_kinds.write_coco(n={args.train_images}, seed={STARS_TRAIN_SEED}, "
              f"world_scenes={args.world_images})")
    model, processor, card = finetune(base, records, args.out, cfg, log=lambda s: print(s, flush=True),
                                      data_source={"annotations": source})
    seconds = time.time() - t0
    after = box_accuracy(model, processor, held_out, only=is_star)
    world_after = world_figures(model, processor)
    figures = {
        f"stars (held out, {after['objects']} stars): comprehension box hit":
            {"before": before["comprehension_box_hit"], "after": after["comprehension_box_hit"]},
        f"stars (held out, {after['objects']} stars): caption box hit":
            {"before": before["caption_box_hit"], "after": after["caption_box_hit"]},
    }
    for name, key in _WORLD_ROWS:
        counted = "expressions" if key.startswith("comprehension") else "objects"
        figures[f"{name} ({world_after[key]['total']} {counted})"] = {"before": world_before[key],
                                                                      "after": world_after[key]}
    figures["notes"] = (f"Stars: `helpers.world.new_kinds.write_coco(n={args.held_out_images}, "
                        f"seed={STARS_HELD_OUT_SEED})`. "
                        "Own world: the bundled model's held-out scenes (`helpers.grounding.evaluation.evaluate`). "
                        f"Fine-tuning took {seconds / 60:.1f} min (loading and saving included) with "
                        f"{args.threads} torch threads; command: `python -m helpers finetune-demo "
                        + " ".join(argv) + "`.")
    add_figures(args.out, figures)
    print(json.dumps(figures, indent=1))
    return 0

