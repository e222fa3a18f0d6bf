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
        if not self.total:
            return "n/a (0/0)"  # nothing to count (e.g. no predicted phrase for precision)
        return f"{100 * self.rate:.1f} % ({self.hits}/{self.total})"


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
        }

    def table(self) -> str:
        rows = [
            ("captioning: phrase recall", self.caption.phrase_recall, "≥ 95 %"),
            ("captioning: box hit (IoU ≥ 0.5)", self.caption.box_hit, "≥ 90 %"),
            ("captioning: phrase precision", self.caption.phrase_precision, ""),
            ("comprehension: box hit", self.comprehension, "≥ 90 %"),
            ("question with a box: names the object", self.qa, "≥ 90 %"),
            ("generation from a box: names the object", self.generation, "≥ 90 %"),
        ]
        lines = [f"{self.scenes} held-out scenes, {self.objects} objects", "",
                 "| metric | result | bar |", "| --- | --- | --- |"]
        lines += [f"| {name} | {score} | {bar} |" for name, score, bar in rows]
        return "\n".join(lines)


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
    return Report(len(scenes), sum(len(s.objects) for s in scenes), caption, comprehension, qa, generation, seconds)


def answer_after(caption: str, marker: str) -> str:
    """The part of a processed caption after the prompt's last ``marker`` (the model's answer)."""
    i = caption.rfind(marker)
    return caption[i + len(marker):] if i >= 0 else caption


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m helpers evaluate [--scenes N] [--model DIR]``: evaluate a model on held-out scenes."""
    import argparse
    import json

    from helpers.grounding.model import load
    from helpers.grounding.quantization import QUANTIZATIONS
    from helpers.world.scenes import sample_scenes

    parser = argparse.ArgumentParser(prog="python -m helpers evaluate",
                                     description="Evaluate a model on held-out scenes of the synthetic world.")
    parser.add_argument("--scenes", type=int, default=220)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--model", default=None)
    parser.add_argument("--quantization", default=None, choices=QUANTIZATIONS,
                        help="load the model with these weights (see load()); default: load() chooses")
    parser.add_argument("--json", default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    model, processor = load(args.model, quantization=args.quantization)
    scenes = sample_scenes(args.scenes, seed=args.seed)
    report = evaluate(model, processor, scenes)
    print(report.table())
    print("seconds:", {k: round(v, 1) for k, v in report.seconds.items()})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.as_dict(), f, indent=1)

