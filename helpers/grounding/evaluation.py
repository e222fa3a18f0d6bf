"""How good are the boxes? Grounding metrics, counted per ground-truth object.

* A phrase **matches** when the two are equal after lower-casing and dropping a leading ``a``/``an``/``the``.
* A box **hits** when its IoU with the true box is at least 0.5 (the threshold of the Kosmos-2 paper's
  RefCOCO and Flickr30k Entities numbers, "accuracy at IoU ≥ 0.5").
* Captioning: *phrase recall* = share of true objects whose phrase appears among the entities;
  *box hit* = share of true objects hit by a box of a matching entity; *phrase precision* = share of
  predicted entities whose phrase names a true object.
* Comprehension: a true object is hit when any box of the answer hits it.
* Questions and referring-expression generation: the answer contains the object's name.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from helpers.grounding.boxes import iou
from helpers.grounding.tokens import Grounding

IOU_THRESHOLD = 0.5
#: Scenes for evaluation come from this seed; training draws its scenes from 62-bit random seeds
#: of ``random.Random(training seed)`` through :func:`helpers.world.scenes.sample_scene`, never this range.
HELD_OUT_SEED = 20_231_114

_ARTICLES = ("a ", "an ", "the ")


def normalize_phrase(phrase: str) -> str:
    """``"The Red circle "`` → ``"red circle"``: lower-case, trimmed, without a leading article."""
    p = " ".join(str(phrase).lower().split())
    for art in _ARTICLES:
        if p.startswith(art):
            return p[len(art):]
    return p


def phrases_match(a: str, b: str) -> bool:
    return normalize_phrase(a) == normalize_phrase(b)


def box_hits(pred: Sequence[float], truth: Sequence[float], threshold: float = IOU_THRESHOLD) -> bool:
    return iou(pred, truth) >= threshold


@dataclass
class Score:
    """A running count: ``hits`` out of ``total``."""

    hits: int = 0
    total: int = 0

    def add(self, hit: bool) -> None:
        self.hits += bool(hit)
        self.total += 1

    @property
    def rate(self) -> float:
        return self.hits / self.total if self.total else float("nan")

    def __str__(self) -> str:
        return format_score(self.hits, self.total)


def format_score(hits: int, total: int) -> str:
    """``"72.8 % (410/563)"``; ``"n/a (0/0)"`` when there was nothing to count (e.g. no predicted phrase)."""
    return f"{100 * hits / total:.1f} % ({hits}/{total})" if total else "n/a (0/0)"


#: The rows of the metrics table: label, key in :meth:`Report.as_dict` (and ``evaluation.json``), the
#: project's goal for the bundled model.
METRICS = (
    ("captioning: phrase recall", "caption_phrase_recall", "≥ 95 %"),
    ("captioning: box hit (IoU ≥ 0.5)", "caption_box_hit", "≥ 90 %"),
    ("captioning: phrase precision", "caption_phrase_precision", ""),
    ("comprehension: box hit", "comprehension_box_hit", "≥ 90 %"),
    ("question with a box: names the object", "qa_names_object", "≥ 90 %"),
    ("generation from a box: names the object", "generation_names_object", "≥ 90 %"),
)


def metrics_table(result: dict) -> str:
    """The Markdown table of an evaluation: :meth:`Report.as_dict`, or an ``evaluation.json`` read back."""
    lines = [f"{result['scenes']} held-out scenes, {result['objects']} objects", "",
             "| metric | result | bar |", "| --- | --- | --- |"]
    for name, key, bar in METRICS:
        lines.append(f"| {name} | {format_score(result[key]['hits'], result[key]['total'])} | {bar} |")
    return "\n".join(lines)


@dataclass
class CaptionScores:
    phrase_recall: Score = field(default_factory=Score)
    box_hit: Score = field(default_factory=Score)
    phrase_precision: Score = field(default_factory=Score)


def score_caption(truth: Iterable, grounding: Grounding, scores: CaptionScores | None = None) -> CaptionScores:
    """Add one image to caption scores; ``truth`` holds objects with ``.phrase`` and ``.box``."""
    scores = scores or CaptionScores()
    truth = list(truth)
    for obj in truth:
        matching = [e for e in grounding.entities if phrases_match(e.phrase, obj.phrase)]
        scores.phrase_recall.add(bool(matching))
        scores.box_hit.add(any(box_hits(b, obj.box) for e in matching for b in e.boxes))
    for ent in grounding.entities:
        scores.phrase_precision.add(any(phrases_match(ent.phrase, o.phrase) for o in truth))
    return scores


def score_boxes(truth: Iterable, grounding: Grounding, score: Score | None = None) -> Score:
    """Comprehension: each true object is hit when any box in the answer hits it."""
    score = score or Score()
    boxes = [b for e in grounding.entities for b in e.boxes]
    for obj in truth:
        score.add(any(box_hits(b, obj.box) for b in boxes))
    return score


def names_object(answer: str, name: str) -> bool:
    """Does the answer text contain the object's name (compared without a leading article)?"""
    return normalize_phrase(name) in " ".join(answer.lower().split())


# ----------------------------------------------------------------------------------------- whole model


@dataclass
class Report:
    """Every metric of the bundled-model evaluation, with the numbers behind them."""

    scenes: int
    objects: int
    caption: CaptionScores
    comprehension: Score
    qa: Score
    generation: Score
    seconds: dict[str, float]
    caption_errors: dict | None = None  # count_caption_errors() of the captions

    def as_dict(self) -> dict:
        def s(x: Score) -> dict:
            # no rate when there was nothing to count: JSON has no NaN
            return {"rate": round(x.rate, 4) if x.total else None, "hits": x.hits, "total": x.total}

        return {
            "scenes": self.scenes, "objects": self.objects,
            "caption_phrase_recall": s(self.caption.phrase_recall),
            "caption_box_hit": s(self.caption.box_hit),
            "caption_phrase_precision": s(self.caption.phrase_precision),
            "comprehension_box_hit": s(self.comprehension),
            "qa_names_object": s(self.qa), "generation_names_object": s(self.generation),
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            **({"caption_errors": self.caption_errors} if self.caption_errors is not None else {}),
        }

    def table(self) -> str:
        """The metrics table (:func:`metrics_table`)."""
        return metrics_table(self.as_dict())


def evaluate(model, processor, scenes, *, batch_size: int | None = None, max_new_tokens: int = 96,
             seed: int = 0) -> Report:
    """Run every task on ``scenes`` and score it (prompts as in :mod:`helpers.world.language`, exact user boxes)."""
    from helpers.grounding.model import ground
    from helpers.grounding.prompts import CAPTION_PROMPT, GENERATION_PROMPT, comprehension_prompt, qa_prompt
    from helpers.world.scenes import SPECIAL_KINDS, definite_phrase
    from helpers.world.language import answer_name

    rng = random.Random(seed)
    seconds: dict[str, float] = {}
    images = [s.image for s in scenes]

    t = time.perf_counter()
    caps = ground(model, processor, images, CAPTION_PROMPT, max_new_tokens=max_new_tokens, batch_size=batch_size)
    seconds["caption"] = time.perf_counter() - t
    caption = CaptionScores()
    for scene, g in zip(scenes, caps):
        score_caption(scene.objects, g, caption)
    errors = count_caption_errors(scenes, caps)

    comp_images, comp_prompts, comp_truth = [], [], []
    for scene in scenes:
        for group in scene.groups:
            first = group[0]
            comp_images.append(scene.image)
            comp_prompts.append(comprehension_prompt(definite_phrase(first.colour, first.shape, len(group))))
            comp_truth.append(group)
    t = time.perf_counter()
    comps = ground(model, processor, comp_images, comp_prompts, max_new_tokens=24, batch_size=batch_size)
    seconds["comprehension"] = time.perf_counter() - t
    comprehension = Score()
    for truth, g in zip(comp_truth, comps):
        score_boxes(truth, g, comprehension)

    obj_images, objs, qa_prompts = [], [], []
    for scene in scenes:
        for obj in scene.objects:
            obj_images.append(scene.image)
            objs.append(obj)
            noun = "character" if obj.shape in SPECIAL_KINDS and rng.random() < 0.5 else "object"
            qa_prompts.append(qa_prompt(noun))
    boxes = [[o.box] for o in objs]
    t = time.perf_counter()
    qas = ground(model, processor, obj_images, qa_prompts, bboxes=boxes, max_new_tokens=16, batch_size=batch_size)
    seconds["qa"] = time.perf_counter() - t
    gens = ground(model, processor, obj_images, GENERATION_PROMPT, bboxes=boxes, max_new_tokens=16,
                  batch_size=batch_size)
    seconds["generation"] = time.perf_counter() - t - seconds["qa"]
    qa, generation = Score(), Score()
    for obj, a, g in zip(objs, qas, gens):
        name = answer_name(obj)
        qa.add(names_object(answer_after(a.caption, "Answer:"), name))
        generation.add(names_object(answer_after(g.caption, " is"), name))
    return Report(len(scenes), sum(len(s.objects) for s in scenes), caption, comprehension, qa, generation, seconds,
                  errors)


def answer_after(caption: str, marker: str) -> str:
    """The part of a processed caption after the prompt's last ``marker`` (the model's answer)."""
    i = caption.rfind(marker)
    return caption[i + len(marker):] if i >= 0 else caption


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m helpers evaluate [--scenes N] [--model DIR]``: evaluate a model on held-out scenes."""
    import argparse
    import json

    from helpers.grounding.model import load
    from helpers.world.scenes import sample_scenes

    parser = argparse.ArgumentParser(prog="python -m helpers evaluate",
                                     description="Evaluate a model on held-out scenes of the synthetic world.")
    parser.add_argument("--scenes", type=int, default=220)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--model", default=None)
    parser.add_argument("--json", default=None, help="also write the report as JSON here")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=None,
                        help="decode with this no_repeat_ngram_size (set on the generation configs)")
    parser.add_argument("--captions-only", action="store_true",
                        help="only the brief captions: their scores and errors by type (a quarter of the time)")
    args = parser.parse_args(argv)
    model, processor = load(args.model)
    if args.no_repeat_ngram_size is not None:
        # Kosmos-2 generates through its text model, which reads its own generation config
        for part in (model, getattr(model, "text_model", None)):
            if getattr(part, "generation_config", None) is not None:
                part.generation_config.no_repeat_ngram_size = args.no_repeat_ngram_size
    scenes = sample_scenes(args.scenes, seed=args.seed)
    if args.captions_only:
        scores, errors = evaluate_captions(model, processor, scenes)
        for name, score in (("phrase recall", scores.phrase_recall), ("box hit", scores.box_hit),
                            ("phrase precision", scores.phrase_precision)):
            print(f"captioning: {name}: {score}")
        print()
        print(caption_error_table(errors))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"caption_phrase_recall": [scores.phrase_recall.hits, scores.phrase_recall.total],
                           "caption_box_hit": [scores.box_hit.hits, scores.box_hit.total],
                           "caption_phrase_precision": [scores.phrase_precision.hits, scores.phrase_precision.total],
                           "caption_errors": errors}, f, indent=1)
        return
    report = evaluate(model, processor, scenes)
    print(report.table())
    print()
    print(caption_error_table(report.caption_errors))
    print("seconds:", {k: round(v, 1) for k, v in report.seconds.items()})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.as_dict(), f, indent=1)


# ----------------------------------------------------------------------------------------- caption errors

#: The kinds of caption error, in the order they are printed, with what each one counts.
CAPTION_ERROR_TYPES: dict[str, str] = {
    "missed": "a group of objects that no phrase names (its kind never appears)",
    "written_twice": "a phrase beyond the first that names a group already named",
    "pair_split": "a pair written as single phrases (\"a red circle, a red circle\") instead of one",
    "wrong_count": "a group named with the wrong number (\"a red circle\" for two, \"two …\" for one)",
    "wrong_kind": "a phrase naming a kind that is not in the image, or no kind of the world",
    "wrong_box": "an object whose own phrase is right but none of whose boxes hits it",
    "extra_box": "a box under a right phrase that hits none of that group's objects",
}


def _phrase_kinds() -> dict[str, tuple[tuple[str | None, str], int]]:
    from helpers.world.scenes import KINDS, definite_phrase, indefinite_phrase

    table = {}
    for colour, shape in KINDS:
        for count in (1, 2):
            for phrase in (indefinite_phrase(colour, shape, count), definite_phrase(colour, shape, count)):
                table.setdefault(normalize_phrase(phrase), ((colour, shape), count))
    return table


def caption_errors(truth: Iterable, grounding: Grounding) -> dict[str, int]:
    """Count one caption's errors by type (:data:`CAPTION_ERROR_TYPES`); a perfect caption gives all zeros.

    ``truth`` holds the scene's objects (``.colour``, ``.shape``, ``.box``, ``.phrase``); objects of one kind
    form one group, as in the world. A predicted phrase is read as a kind and a count ("two red circles"
    is two red circles); ``missed``, ``pair_split`` and ``wrong_count`` count groups, ``written_twice`` and
    ``wrong_kind`` count phrases, ``wrong_box`` counts objects and ``extra_box`` counts boxes. Phrases and
    boxes are compared by the same rules as :func:`score_caption`.
    """
    table = _phrase_kinds()
    groups: dict[tuple, list] = {}
    for obj in truth:
        groups.setdefault((obj.colour, obj.shape), []).append(obj)
    errors = dict.fromkeys(CAPTION_ERROR_TYPES, 0)
    read = [table.get(normalize_phrase(e.phrase), (None, 0)) for e in grounding.entities]
    errors["wrong_kind"] = sum(1 for kind, _ in read if kind not in groups)
    for kind, objects in groups.items():
        named = [(ent, count) for ent, (k, count) in zip(grounding.entities, read) if k == kind]
        if not named:
            errors["missed"] += 1
            continue
        counts = [count for _, count in named]
        if len(objects) in counts:
            errors["written_twice"] += len(named) - 1
        elif len(objects) == 2 and counts.count(1) >= 2:
            errors["pair_split"] += 1
            errors["written_twice"] += len(named) - 2
        else:
            errors["wrong_count"] += 1
            errors["written_twice"] += len(named) - 1
        right = [ent for ent, _ in named if phrases_match(ent.phrase, objects[0].phrase)]
        if right:
            boxes = [b for ent in right for b in ent.boxes]
            errors["wrong_box"] += sum(1 for obj in objects if not any(box_hits(b, obj.box) for b in boxes))
            errors["extra_box"] += sum(1 for b in boxes if not any(box_hits(b, obj.box) for obj in objects))
    return errors


def count_caption_errors(scenes: Sequence, groundings: Sequence[Grounding]) -> dict:
    """Errors by type over many captions, with ``scenes`` / ``perfect`` (captions without any error) / ``groups``."""
    if len(scenes) != len(groundings):
        raise ValueError(f"one grounding per scene expected: {len(scenes)} scenes, {len(groundings)} groundings")
    total = dict.fromkeys(CAPTION_ERROR_TYPES, 0)
    perfect = groups = 0
    for scene, g in zip(scenes, groundings):
        errors = caption_errors(scene.objects, g)
        for k, v in errors.items():
            total[k] += v
        perfect += not any(errors.values())
        groups += len({(o.colour, o.shape) for o in scene.objects})
    return {"scenes": len(scenes), "perfect": perfect, "groups": groups, **total}


def caption_error_table(counts: dict) -> str:
    """The Markdown table of :func:`count_caption_errors`' result."""
    lines = [f"{counts['perfect']} of {counts['scenes']} captions without any error ({counts['groups']} groups)", "",
             "| error | count | what is counted |", "| --- | --- | --- |"]
    lines += [f"| {k.replace('_', ' ')} | {counts[k]} | {what} |" for k, what in CAPTION_ERROR_TYPES.items()]
    return "\n".join(lines)


def evaluate_captions(model, processor, scenes, *, max_new_tokens: int = 96) -> tuple[CaptionScores, dict]:
    """Brief captions of ``scenes`` only: their scores and :func:`count_caption_errors` (for quick probes)."""
    from helpers.grounding.model import ground
    from helpers.grounding.prompts import CAPTION_PROMPT

    caps = ground(model, processor, [s.image for s in scenes], CAPTION_PROMPT, max_new_tokens=max_new_tokens)
    scores = CaptionScores()
    for scene, g in zip(scenes, caps):
        score_caption(scene.objects, g, scores)
    return scores, count_caption_errors(scenes, caps)
