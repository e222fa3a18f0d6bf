"""Evaluate a trained world model and write its model card (``README.md``) and ``evaluation.json``.

``python -m helpers modelcard data/kosmos2-tiny-world`` — the last step of rebuilding the bundled model
(``python -m helpers train`` calls it too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Sequence

import torch

from helpers.grounding.checks import (DefaultsHelpFormatter, check_positive_int, fail, is_number, out_problem,
                                      parse, positive_int_option, read_json, write_files)
from helpers.grounding.evaluation import (CAPTION_ERROR_TYPES, HELD_OUT_SEED, METRICS, caption_error_table, evaluate,
                                          metrics_table)
from helpers.grounding.model import ModelLoadError, describe_device, load
from helpers.grounding.prompts import CAPTION_PROMPT
from helpers.world.scenes import sample_scenes
from helpers.world.training import (CARD_TITLE, HEADS_FILE, LOCATION_FEATURES, RECORD_FILE, build_parser,
                                    read_training, recorded_runs, training_problem)

#: Settings of a run that are not part of its recipe (where it saves, how it logs, which device computes).
#: ``workers`` is part of it: the processes drawing the batches each have a stream of scenes of their own.
_NOT_RECIPE = {"out", "resume", "checkpoint", "checkpoint_minutes", "threads", "evaluate", "log_every", "device"}


def run_commands(training: dict, out: str) -> list[str]:
    """The ``python -m helpers train`` commands that repeat the runs recorded in ``training``, in order.

    Run *k* writes ``run<k>`` and continues ``run<k-1>``; the last one writes ``out``. A flag appears when its
    recorded value differs from the command's default; settings recorded before a flag existed take its default.
    """
    parser = build_parser()
    runs = recorded_runs(training)
    commands = []
    for k, run in enumerate(runs, 1):
        config = run.get("config", {})
        last = k == len(runs)
        words = ["python -m helpers train", "--out", out if last else f"run{k}"]
        if k > 1:
            words += ["--resume", f"run{k - 1}"]
        for action in parser._actions:
            if action.dest in _NOT_RECIPE or action.dest not in config or not action.option_strings:
                continue
            value = config[action.dest]
            if value == action.default:
                continue
            flag = action.option_strings[0]
            if isinstance(value, dict):  # --task-weights
                value = ",".join(f"{task}={weight}" for task, weight in value.items())
            words += [flag] if action.nargs == 0 else [flag, str(value)]  # a switch takes no value
        words += ["--threads", "2"] + ([] if last else ["--no-evaluate"])
        commands.append(" ".join(words))
    return commands


def last_joint_point(run: dict) -> dict:
    """The last point of a recorded run's joint stage in its history (``{}`` when it has none)."""
    joint = [h for h in run.get("history", []) if h.get("stage") == "joint"]
    return joint[-1] if joint else {}


def joint_steps(run: dict) -> int:
    """Joint steps a recorded run took, from its last history point (records written before the last step was
    always logged end at the last multiple of the logging interval)."""
    last = last_joint_point(run)
    return last["step"] + 1 if last else 0


def caption_latency(model, processor, image, new_tokens: int = 32, repeats: int = 5, batch: int = 1) -> float:
    """Median seconds per image to generate exactly ``new_tokens`` tokens for a brief caption."""
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=[CAPTION_PROMPT] * batch, images=[image] * batch, return_tensors="pt", padding=True)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            start = time.perf_counter()
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            if i:  # the first run warms up
                times.append((time.perf_counter() - start) / batch)
    return statistics.median(times)


def write_card(model_dir: Path, scenes: int = 220, seed: int = HELD_OUT_SEED) -> dict:
    """Evaluate the model in ``model_dir`` on held-out scenes and write ``evaluation.json`` and ``README.md``.

    With another ``seed`` (a second set of unseen scenes) the result goes to ``evaluation-seed<seed>.json``
    and the card shows it beside the main one. ``training.json`` is optional
    (:func:`helpers.world.training.read_training`; without one the card says that its training runs were not
    recorded).

    Raises:
        TypeError, ValueError: ``scenes`` is not a positive int, or a JSON file the card reads is broken
            (:func:`card_files_problem`); both checked before the model loads.
        ModelLoadError: ``model_dir`` holds no model that loads.
    """
    check_positive_int("scenes", scenes)
    model_dir = Path(model_dir)
    _check_card_files(model_dir, render_only=False, seed=seed)
    model, processor = load(str(model_dir), device="cpu", verbose=False)
    held_out = sample_scenes(scenes, seed=seed)
    report = evaluate(model, processor, held_out)
    latency_1 = caption_latency(model, processor, held_out[0].image, batch=1)
    latency_8 = caption_latency(model, processor, held_out[0].image, batch=8, repeats=3)
    result = report.as_dict()
    result.update(
        seed=seed,
        caption_seconds_per_image_32_tokens={"batch_1": round(latency_1, 4), "batch_8": round(latency_8, 4)},
        machine=f"{describe_device('cpu')}, torch {torch.__version__}",
        date=time.strftime("%Y-%m-%d"),
    )
    if seed != HELD_OUT_SEED and (model_dir / "evaluation.json").exists():
        result_main = json.loads((model_dir / "evaluation.json").read_text(encoding="utf-8"))
    else:
        result_main = result
    write_files({model_dir / evaluation_file(seed): json.dumps(result, indent=1) + "\n",
                 model_dir / "README.md": _card_text(model, result_main, read_training(model_dir))})
    return result


def evaluation_file(seed: int) -> str:
    """The name of the file that holds an evaluation on the scenes of ``seed``: ``evaluation.json`` for the held-out
    seed (the card's main one), else ``evaluation-seed<seed>.json``."""
    return "evaluation.json" if seed == HELD_OUT_SEED else f"evaluation-seed{seed}.json"


def render_card(model_dir: Path) -> None:
    """Rewrite ``README.md`` from the saved ``evaluation.json`` and, when there is one, ``training.json`` (no
    re-evaluation).

    Raises:
        ValueError: ``evaluation.json`` is missing, or a JSON file the card reads is broken (checked before the
            model loads).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "evaluation.json").is_file():
        raise ValueError(f"{str(model_dir / 'evaluation.json')!r} does not exist: write the card with write_card "
                         "first, which measures it")
    _check_card_files(model_dir, render_only=True)
    model, _ = load(str(model_dir), device="cpu", verbose=False)
    result = json.loads((model_dir / "evaluation.json").read_text(encoding="utf-8"))
    write_files({model_dir / "README.md": _card_text(model, result, read_training(model_dir))})


def schedule(config: dict) -> str:
    """The run line's words on the learning-rate schedule after the warm-up: a cosine over the ``--minutes``
    budget when the run had one, else over its ``--steps``."""
    if config.get("minutes") is not None:
        return f"cosine over a {config['minutes']}-minute budget"
    return f"cosine over {config.get('steps', '?')} steps"


def rounding_4bit(config: dict) -> str:
    """The run line's words on quantization-aware training (``--fp4-share``, ``--nf4-share``); empty when off."""
    shares = [f"{kind} in {config[key]} of the passes" for kind, key in
              (("FP4, the article's,", "fp4_share"), ("NF4", "nf4_share")) if config.get(key)]
    return ("; each linear but lm_head computed with its weights rounded as bitsandbytes' 4-bit types round them: "
            + ", ".join(shares)) if shares else ""


#: The card's opening: what the model is, and what it is for.
_INTRO = (
    CARD_TITLE,
    "",
    "A small model with the **Kosmos-2 architecture** (`Kosmos2ForConditionalGeneration`, `Kosmos2Processor`,",
    "the same special tokens, 1 024 location tokens and prompts as `microsoft/kosmos-2-patch14-224`), trained",
    "from scratch by this project on synthetic scenes it draws itself. It only knows that world: coloured",
    "circles, squares and triangles (red, green, blue, yellow, purple), a snowman, a fire and the course",
    "mascot Kumo. It exists so that every notebook shows real grounding offline; for photos, load the real",
    "model. Its outputs are its own — never a stand-in for what the real model says.",
    "",
)

#: The card's last section.
_LICENCE = (
    "## Licence",
    "MIT, like the rest of the course. Kosmos-2 itself is Microsoft's (MIT licence on its model card);",
    "this model shares its architecture and token conventions, not its weights.",
    "",
)


def _card_text(model, result: dict, training: dict) -> str:
    """The model card of ``model`` (``README.md``), from its evaluation ``result`` and its ``training.json`` record
    (``{}``: none), a section per heading."""
    others = _other_evaluations(Path(model.name_or_path))
    return "\n".join([*_INTRO, *_architecture_lines(model), *_data_lines(result, training),
                      *_training_lines(training, others), *_evaluation_lines(result, others), *_LICENCE])


def _architecture_lines(model) -> list[str]:
    """The card's "Architecture": size, weights on disk, the vision tower, the text decoder, the image tokens."""
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    weights = sum(f.stat().st_size for f in Path(model.name_or_path).glob("*.safetensors")
                  if f.name != HEADS_FILE) / 1e6  # the training-only heads are not part of the model
    return [
        "## Architecture",
        f"- {params / 1e6:.2f} M parameters, {weights:.1f} MB of float32 safetensors",
        f"- vision tower: {cfg.vision_config.num_hidden_layers} layers, width {cfg.vision_config.hidden_size}, "
        f"{cfg.vision_config.image_size}-pixel images, {cfg.vision_config.patch_size}-pixel patches",
        f"- text decoder: {cfg.text_config.layers} layers, width {cfg.text_config.embed_dim}, "
        f"vocabulary {cfg.text_config.vocab_size} (world words + Kosmos-2 tags + 1 024 location tokens)",
        f"- {cfg.latent_query_num} image tokens (latent queries), as in Kosmos-2",
        "- image preprocessing: resize to a square without centre-cropping (CLIP statistics), like the real checkpoint",
        "",
    ]


def _data_lines(result: dict, training: dict) -> list[str]:
    """The card's "Data": the scenes, the tasks, where the training scenes came from (``training``: the
    ``training.json`` record) and the seed of the evaluation scenes."""
    workers = any(run.get("config", {}).get("workers") for run in recorded_runs(training))
    return [
        "## Data",
        "Scenes from `helpers.world.scenes.sample_scene`: 1–3 kinds of object, a quarter of scenes with two of one",
        "kind (one phrase, two boxes), random image sizes and aspect ratios, pale backgrounds. Every scene gives",
        "GRIT-style texts for five tasks (`helpers.world.language.scene_examples`): brief caption, detailed caption,",
        "referring-expression comprehension, a question about a user box, and referring-expression generation.",
        "Training scenes are drawn from 62-bit seeds of `random.Random(training seed)`; evaluation scenes come",
        f"from `sample_scenes(n, seed={result['seed']})`, never used in training.",
        *(["In the runs with `--workers N` (their commands below say so), N processes drew the training scenes, each",
           "from a stream of its own (seeded by the training seed, the stage and the process's number)."]
          if workers else []),
        "",
    ]


def _training_lines(training: dict, others: list[tuple[Path, dict]]) -> list[str]:
    """The card's "Training": the recipe, a line per recorded run and the commands that rebuild the model (a
    card without a ``training.json`` record says that its runs are not recorded)."""
    lines = [
        "## Training",
        "Recipe in `helpers/world/training.py`: location-token embeddings initialised with "
        f"{_location_features(training)};",
        "training-only dense heads on the vision tower and on the image tokens (what covers each",
        "patch, and that object's box); supervised attention (head 0 of each decoder layer is shown which image",
        "tokens belong to the object being named); a vision-only warm-up stage, then all tasks together.",
        "",
    ]
    if not training:
        return lines + [f"This folder has no `{RECORD_FILE}` (what `python -m helpers train` writes beside the "
                        "model), so", "its training runs, their settings, losses and time, are not recorded here.", ""]
    for i, run in enumerate(recorded_runs(training), 1):
        lines += [_run_line(i, run), ""]
    return lines + _rebuild_lines(training, others)


def _run_line(i: int, run: dict) -> str:
    """The card's line on recorded run ``i``: its settings, steps, speed, time and last logged losses."""
    tc = run.get("config", {})
    last = last_joint_point(run)
    steps = joint_steps(run)
    rate = f", {steps / last['seconds']:.2f} joint steps per second" if last.get("seconds") else ""
    extra = [f"{name} {tc[key]}" for name, key in (("group", "group_weight"), ("count word", "count_weight"))
             if tc.get(key)]
    if tc.get("task_weights"):
        extra.append("tasks drawn " + ", ".join(f"{k} {v}" for k, v in tc["task_weights"].items()))
    mix = (f"; scenes redrawn for a pair {tc.get('pair_share', 0.0)}, for three kinds "
           f"{tc.get('three_share', 0.0)} of the time"
           if tc.get("pair_share") or tc.get("three_share") else "")
    return (
        f"Run {i}: seed {tc.get('seed')}, batch {tc.get('batch_size')}, peak learning rate {tc.get('lr')} "
        f"(AdamW, warm-up {tc.get('warmup')} steps, {schedule(tc)}), "
        + (f"{tc['heads_steps']} heads-only steps, " if tc.get("heads_steps") else "")
        + f"{tc.get('vision_steps')} vision-only steps, then {steps} joint steps{rate}; "
        f"loss weights dense {tc.get('aux_weight')}, look {tc.get('look_weight')}"
        + "".join(f", {e}" for e in extra)
        + (" (group heads on object patches only)" if tc.get("group_on_objects") else "")
        + mix + ("; forward passes in bfloat16" if tc.get("bf16") else "")
        + rounding_4bit(tc)
        + f"; {run.get('seconds', 0) / 60:.1f} min. Last logged losses: text {last.get('text_loss', '?')}, "
        f"dense {last.get('dense_loss', '?')}, look {last.get('look_loss', '?')}."
    )


def _rebuild_lines(training: dict, others: list[tuple[Path, dict]]) -> list[str]:
    """The end of the card's "Training": the time and machine of all runs, and the commands that rebuild the model
    and measure every evaluation the card shows."""
    minutes = training.get("seconds", 0) / 60
    return [
        f"In all {minutes:.0f} min on {training.get('hardware', '?')}, "
        f"torch {training.get('torch', '?')}; the loss history is in `{RECORD_FILE}`. The probes that chose",
        "the recipe (short runs judged on a development seed of scenes, 12345, by their errors) are logged with",
        "their commands, steps per second and figures in the course's `runs/README.md`.",
        "",
        f"Rebuild from scratch (about {minutes:.0f} minutes on two CPU cores; the time budgets make the step counts",
        "depend on the machine's speed"
        + (", and today's recipe starts the location tokens otherwise than the first run did (above)"
           if _location_features(training) != LOCATION_FEATURES else "")
        + ", so a rebuild is close to, not bit-identical with, the shipped weights):",
        "",
        "```bash",
        *run_commands(training, "data/kosmos2-tiny-world"),
        "python -m helpers modelcard data/kosmos2-tiny-world",
        *[f"python -m helpers modelcard data/kosmos2-tiny-world --seed {other['seed']}" for _, other in others],
        "```",
        "",
    ]


def _evaluation_lines(result: dict, others: list[tuple[Path, dict]]) -> list[str]:
    """The card's "Evaluation": how it was counted, the metrics and caption errors of ``result`` and of the other
    seeds' evaluations, and the time per caption."""
    latency = result["caption_seconds_per_image_32_tokens"]
    return [
        "## Evaluation",
        f"Measured on {result['date']} with `python -m helpers modelcard` on {result['machine']}.",
        "Counted per ground-truth object; phrases match after lower-casing and dropping a leading a/an/the; a box",
        "hits at IoU ≥ 0.5 (`helpers.grounding.evaluation`). Comprehension is counted per expression and scored as the",
        "Kosmos-2 authors score RefCOCO: only boxes given for the asked phrase count, accuracy@1 takes the first,",
        "the upper bound any. User boxes in the question and generation tasks are the objects' true boxes.",
        "",
        metrics_table(result),
        "",
        *_error_lines(result),
        *_other_seed_lines(others),
        "Time per image for a 32-token brief caption (greedy, float32, CPU): "
        f"{latency['batch_1']:.3f} s at batch 1, {latency['batch_8']:.3f} s per image at batch 8.",
        "",
    ]


#: How the location-token embeddings of runs recorded before ``training.json`` named them were initialised.
EARLIEST_LOCATION_FEATURES = ("sine/cosine features of their bin "
                              "(the recipe's first version, which repeat every few bins)")


def _location_features(training: dict) -> str:
    """How the first recorded run initialised the location tokens (a card without a record says it is unknown)."""
    if not training:
        return f"features of their bin (which ones is not recorded: no `{RECORD_FILE}`)"
    return recorded_runs(training)[0].get("location_features", EARLIEST_LOCATION_FEATURES)


def _error_lines(result: dict) -> list[str]:
    if "caption_errors" not in result:
        return []
    return ["Brief-caption errors by type (`helpers.grounding.evaluation.caption_errors`):", "",
            caption_error_table(result["caption_errors"]), ""]


def _other_evaluations(model_dir: Path) -> list[tuple[Path, dict]]:
    """The evaluations on other seeds in ``model_dir`` (``evaluation-seed*.json``), each file read once."""
    return [(path, json.loads(path.read_text(encoding="utf-8")))
            for path in sorted(model_dir.glob("evaluation-seed*.json"))]


def _other_seed_lines(others: list[tuple[Path, dict]]) -> list[str]:
    lines = []
    for path, other in others:
        lines += [f"A second set of unseen scenes, `sample_scenes(n, seed={other['seed']})` (`{path.name}`):", "",
                  metrics_table(other), "", *_error_lines(other)]
    return lines


def evaluation_problem(result: object) -> str | None:
    """What the card cannot show of an evaluation read back from ``evaluation*.json`` (the layout :func:`write_card`
    writes), or ``None``."""
    if not isinstance(result, dict):
        return f"it holds a JSON {type(result).__name__}, not an object"

    def count(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def counts(value: object, keys: Sequence[str]) -> bool:
        return isinstance(value, dict) and all(count(value.get(k)) for k in keys)

    bad = [key for key in ("scenes", "objects", "seed") if not count(result.get(key))]
    bad += [key for key in ("date", "machine") if not isinstance(result.get(key), str)]
    bad += [key for _, key, _ in METRICS if not counts(result.get(key), ("hits", "total"))]
    latency = result.get("caption_seconds_per_image_32_tokens")
    if not (isinstance(latency, dict) and all(is_number(latency.get(k)) for k in ("batch_1", "batch_8"))):
        bad.append("caption_seconds_per_image_32_tokens")
    if "caption_errors" in result and not counts(result["caption_errors"],
                                                 ("perfect", "scenes", "groups", *CAPTION_ERROR_TYPES)):
        bad.append("caption_errors")
    if not bad:
        return None
    one = len(bad) == 1
    return (f"its {'entry' if one else 'entries'} {', '.join(map(repr, bad))} {'is' if one else 'are'} missing or "
            "malformed")


def card_files_problem(model_dir: Path, render_only: bool, seed: int = HELD_OUT_SEED) -> str | None:
    """Why the card could not be written from the JSON files in ``model_dir`` that it reads (``training.json``, the
    evaluations: ``evaluation.json`` with ``render_only`` or another ``seed``, ``evaluation-seed*.json`` but the one
    this run replaces), or ``None``: checked before the model loads or any scene is evaluated."""
    replaced = None if render_only else model_dir / evaluation_file(seed)
    files = [(model_dir / RECORD_FILE, training_problem, "`python -m helpers train` writes it",
              "restore it, or remove it (the card then says that the training runs are not recorded)")]
    files += [(path, evaluation_problem, f"`{PROG} {model_dir}` writes it", "run the command without --render-only "
               "to measure it again" if path.name == "evaluation.json" else "remove it or measure that seed again")
              for path in [model_dir / "evaluation.json", *sorted(model_dir.glob("evaluation-seed*.json"))]]
    for path, problem_of, writer, remedy in files:
        if path == replaced or not path.exists():
            continue
        try:
            data = read_json(path, "the card's file", f"JSON as {writer}")
        except ValueError as err:  # not UTF-8, empty or not JSON
            return f"{err}: {remedy}"
        problem = problem_of(data)
        if problem:
            return f"the card needs {str(path)!r} as {writer}, but {problem}: {remedy}"
    return None


def _check_card_files(model_dir: Path, render_only: bool, seed: int = HELD_OUT_SEED) -> None:
    problem = card_files_problem(model_dir, render_only, seed)
    if problem:
        raise ValueError(problem)


PROG = "python -m helpers modelcard"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv``; return the exit code: 0; 2 with a one-line message on stderr for a bad
    option (``--scenes`` below 1, checked before the model loads), with ``--render-only`` a missing
    ``evaluation.json``, a file the card reads that is not JSON of the layout written (:func:`card_files_problem`)
    or a model folder nothing can be written in (both also checked before the model loads); 1 when ``model_dir``
    holds no model that loads (not a folder, no ``config.json``, missing or corrupt weights), as ``ground``,
    ``evaluate`` and ``finetune`` say it."""
    parser = argparse.ArgumentParser(prog=PROG, formatter_class=DefaultsHelpFormatter,
                                     description="Evaluate a world model and write its model card.")
    parser.add_argument("model_dir", type=Path,
                        help="folder of a saved world model (what `python -m helpers train --out DIR` writes, such "
                             "as data/kosmos2-tiny-world): evaluation.json and README.md are written into it")
    parser.add_argument("--scenes", type=positive_int_option, default=220, help="held-out scenes to evaluate on")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED,
                        help="scene seed; another than the held-out one writes evaluation-seed<SEED>.json")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite README.md from evaluation.json (and training.json, when there is one)")
    args = parse(parser, argv)
    if isinstance(args, int):  # --help (0) or a bad option, which argparse has reported (2)
        return args
    if not args.model_dir.is_dir():
        what = "is not a folder" if args.model_dir.exists() else "does not exist"
        return fail(f"model folder {str(args.model_dir)!r} {what}: expected a saved world model such as "
                    "data/kosmos2-tiny-world (what `python -m helpers train --out DIR` writes)", code=1, prog=PROG)
    evaluation = args.model_dir / "evaluation.json"
    if args.render_only and not evaluation.is_file():
        return fail(f"--render-only needs {str(evaluation)!r}, which does not exist: run "
                    f"`{PROG} {args.model_dir}` without --render-only first", prog=PROG)
    problem = card_files_problem(args.model_dir, args.render_only, args.seed) or out_problem(
        "model folder", args.model_dir, folder=True, wanted="a folder the card can be written in")
    if problem:
        return fail(problem, prog=PROG)
    try:
        if args.render_only:
            render_card(args.model_dir)
            return 0
        result = write_card(args.model_dir, scenes=args.scenes, seed=args.seed)
    except ModelLoadError as err:  # a model that cannot be loaded: 1, as for ground, evaluate and finetune
        return fail(str(err), code=1, prog=PROG)
    print(json.dumps(result, indent=1))
    print(metrics_table(result))
    print()
    print(caption_error_table(result["caption_errors"]))
    return 0
