"""How good are the boxes? Grounding metrics, counted per ground-truth object.

* A phrase **matches** when the two are equal after lower-casing and dropping a leading ``a``/``an``/``the``.
* A box **hits** when its IoU with the true box is at least 0.5 (the threshold of the Kosmos-2 paper's
  RefCOCO and Flickr30k Entities numbers, "accuracy at IoU ≥ 0.5").
* Captioning: *phrase recall* = share of true objects whose phrase appears among the entities;
  *box hit* = share of true objects hit by a box of a matching entity; *phrase precision* = share of
  predicted entities whose phrase names a true object.
* Comprehension, as the Kosmos-2 authors score RefCOCO and Flickr30k Entities: only the boxes the answer
  gives for the asked phrase count (the entity's phrase equals it after trimming spaces; case and articles
  count). *Accuracy@1*: the first of them hits a true box. *Upper bound*: any of them does. An answer
  without such a box is a miss for both. Counted per expression.
* Questions and referring-expression generation: the answer contains the object's name.

At its end, the runner the benchmark files share (RefCOCO and Flickr30k Entities: :func:`ground_on_files`,
:func:`check_items`, :func:`check_images_exist`): grounding their items in chunks, the authors' way.
"""

from __future__ import annotations

import functools
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from helpers.grounding.boxes import check_normalized, iou, is_one_box
from helpers.grounding.checks import is_number
from helpers.grounding.images import ImageLoadError, load_image, stored_size
from helpers.grounding.prompts import CAPTION_PROMPT, GENERATION_PROMPT, comprehension_prompt, qa_prompt
from helpers.grounding.tokens import Box, Grounding, parse_generation

#: The IoU a predicted box needs with a true box to hit it (:func:`box_hits`).
IOU_THRESHOLD = 0.5
#: The most new tokens per answer in the RefCOCO and Flickr30k Entities evaluations. An answer is ``<object>``, two
#: location tokens per box (a third, the delimiter, between boxes) and ``</object>``: 64 leave room for 20 boxes of
#: a plural phrase ("people"). A cut answer loses the phrase's boxes altogether (its ``<object>`` is not closed).
#: The authors' scripts allowed 500 tokens, a limit an answer that ends at ``</s>`` never reaches.
BENCHMARK_MAX_NEW_TOKENS = 64
#: Scenes for evaluation come from this seed; training draws its scenes from 62-bit random seeds (of
#: ``random.Random(training seed)``, or with ``--workers`` of one stream per worker process seeded from it) through
#: :func:`helpers.world.scenes.sample_scene`, never this range.
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
    """Whether two phrases are the same after :func:`normalize_phrase` (case and a leading article ignored)."""
    return normalize_phrase(a) == normalize_phrase(b)


def box_hits(pred: Sequence[float], truth: Sequence[float], threshold: float = IOU_THRESHOLD) -> bool:
    """Whether the predicted box hits the true one: their IoU is at least ``threshold``."""
    return iou(pred, truth) >= threshold


def check_threshold(threshold: object) -> float:
    """Return ``threshold`` as a float when it is a number in [0, 1] (numpy numbers too): the IoU a box needs to
    hit, or another share a score must reach.

    Raises:
        ValueError: anything else (a str, ``bool``, NaN, a number outside [0, 1]), e.g.
            ``threshold must be a number in [0, 1], got 1.5``.
    """
    if not is_number(threshold, share=True):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r:.80}")
    return float(threshold)


def _check_grounding(grounding: object) -> Grounding:
    """``grounding`` when it is a :class:`~helpers.grounding.tokens.Grounding`; ``TypeError`` saying so otherwise."""
    if not isinstance(grounding, Grounding):
        raise TypeError("grounding must be a Grounding (what ground() returns for an image, or parse_generation(text) "
                        f"for a generated text), got {type(grounding).__name__}: {grounding!r:.80}")
    return grounding


def _check_truth(truth: object) -> list:
    """``truth`` as a list of objects, each with a str ``.phrase`` and a normalized ``.box``.

    Raises:
        TypeError: ``truth`` is a scene rather than its objects, is not a list, or holds something without
            ``.phrase`` and ``.box`` (a ``(phrase, box)`` tuple, say).
        ValueError: an object's box is not a normalized box (a pixel box gets a hint how to convert it).
    """
    wanted = "truth must be a list of objects with .phrase and .box, e.g. scene.objects"
    if hasattr(truth, "objects") and hasattr(truth, "image"):
        raise TypeError(f"{wanted}; got a {type(truth).__name__} itself: pass its .objects")
    if isinstance(truth, (str, bytes)) or not isinstance(truth, Iterable):
        raise TypeError(f"{wanted}; got {type(truth).__name__}: {truth!r:.80}")
    truth = list(truth)
    for i, obj in enumerate(truth):
        if not (isinstance(getattr(obj, "phrase", None), str) and hasattr(obj, "box")):
            raise TypeError(f"{wanted}; truth[{i}] is {type(obj).__name__}: {obj!r:.80}")
        try:
            check_normalized(obj.box)
        except ValueError as err:
            raise ValueError(f"truth[{i}] ({obj.phrase!r}): {err}") from None
    return truth


def _check_scores(scores: object, kind: type) -> None:
    if scores is not None and not isinstance(scores, kind):
        raise TypeError(f"scores must be a {kind.__name__} (to add to) or None, got {type(scores).__name__}: "
                        f"{scores!r:.80}")


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

    def as_dict(self) -> dict:
        """``{"rate", "hits", "total"}`` for JSON: the rate rounded to 4 places, ``None`` when there was nothing to
        count (JSON has no NaN)."""
        return {"rate": round(self.rate, 4) if self.total else None, "hits": self.hits, "total": self.total}


def format_score(hits: int, total: int) -> str:
    """``"72.8 % (410/563)"``; ``"n/a (0/0)"`` when there was nothing to count (e.g. no predicted phrase)."""
    return f"{100 * hits / total:.1f} % ({hits}/{total})" if total else "n/a (0/0)"


#: The rows of the metrics table: label, key in :meth:`Report.as_dict` (and ``evaluation.json``), and the
#: bar: the level the course asks of its bundled model on held-out scenes of its world. The any-box upper
#: bound has none: it is printed beside accuracy@1, never as a goal of its own.
METRICS = (
    ("captioning: phrase recall", "caption_phrase_recall", "≥ 95 %"),
    ("captioning: box hit (IoU ≥ 0.5)", "caption_box_hit", "≥ 90 %"),
    ("captioning: phrase precision", "caption_phrase_precision", "≥ 95 %"),
    ("comprehension: accuracy@1 (first box of the phrase)", "comprehension_accuracy_at_1", "≥ 90 %"),
    ("comprehension: upper bound (any box of the phrase)", "comprehension_upper_bound_any_box", ""),
    ("question with a box: names the object", "qa_names_object", "≥ 95 %"),
    ("generation from a box: names the object", "generation_names_object", "≥ 95 %"),
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
    """Caption scores over the images added by :func:`score_caption`: phrase recall, box hit and phrase precision
    (see the module docstring)."""

    phrase_recall: Score = field(default_factory=Score)
    box_hit: Score = field(default_factory=Score)
    phrase_precision: Score = field(default_factory=Score)


def score_caption(truth: Iterable, grounding: Grounding, scores: CaptionScores | None = None) -> CaptionScores:
    """Add one image to caption scores; ``truth`` holds objects with ``.phrase`` and a normalized ``.box``
    (``scene.objects``).

    Raises:
        TypeError: ``truth`` is not such a list (a :class:`~helpers.world.scenes.Scene` itself, ``(phrase, box)``
            tuples …), ``grounding`` is not a :class:`~helpers.grounding.tokens.Grounding`, or ``scores`` is not
            :class:`CaptionScores` or ``None``.
        ValueError: a true box is not a normalized box (a pixel box gets a hint how to convert it).
    """
    truth = _check_truth(truth)
    _check_grounding(grounding)
    _check_scores(scores, CaptionScores)
    scores = scores or CaptionScores()
    for obj in truth:
        matching = [e for e in grounding.entities if phrases_match(e.phrase, obj.phrase)]
        scores.phrase_recall.add(bool(matching))
        scores.box_hit.add(any(box_hits(b, obj.box) for e in matching for b in e.boxes))
    for ent in grounding.entities:
        scores.phrase_precision.add(any(phrases_match(ent.phrase, o.phrase) for o in truth))
    return scores


def phrase_boxes(grounding: Grounding, phrase: str) -> list[Box]:
    """Every box the answer gives for ``phrase``, in order (entities whose phrase equals it after trimming).

    Raises:
        TypeError: ``grounding`` is not a :class:`~helpers.grounding.tokens.Grounding`, or ``phrase`` not a str.
    """
    _check_grounding(grounding)
    if not isinstance(phrase, str):
        raise TypeError(f"phrase must be a str (the asked phrase, e.g. 'the red circle'), got "
                        f"{type(phrase).__name__}: {phrase!r:.80}")
    wanted = " ".join(phrase.split())
    return [tuple(b) for e in grounding.entities if " ".join(e.phrase.split()) == wanted for b in e.boxes]


@dataclass
class PhraseScores:
    """Phrase grounding scored as the Kosmos-2 authors do (see the module docstring)."""

    accuracy_at_1: Score = field(default_factory=Score)
    upper_bound: Score = field(default_factory=Score)


def score_any_box(truth: Iterable, grounding: Grounding, score: Score | None = None) -> Score:
    """Per true object: hit when any box of the answer, under any phrase, hits it (IoU ≥ 0.5).

    A looser rule than :func:`score_phrase` (the Kosmos-2 authors' accuracy@1): the fine-tuning
    demonstration's box accuracy uses it, and says so in its key (``comprehension_box_hit``).
    """
    score = score or Score()
    boxes = [b for e in grounding.entities for b in e.boxes]
    for obj in truth:
        score.add(any(box_hits(b, obj.box) for b in boxes))
    return score


def score_phrase(truth_boxes: Sequence[Sequence[float]], grounding: Grounding, phrase: str,
                 scores: PhraseScores | None = None, threshold: float = IOU_THRESHOLD) -> dict:
    """Score one expression: the answer's boxes for ``phrase`` against its true box(es).

    A hit is IoU ≥ ``threshold`` with any of ``truth_boxes`` (several when the phrase names several
    objects). Adds to ``scores`` when given; returns the row ``{"boxes", "predicted", "iou", "best_iou",
    "hit", "hit_any"}`` where ``predicted``/``iou`` are the first matching box and its best IoU; ``hit`` and
    ``hit_any`` are plain ``bool`` (the row goes to JSON as it is).

    Raises:
        TypeError: ``truth_boxes`` is not a list of boxes, ``grounding`` is not a
            :class:`~helpers.grounding.tokens.Grounding`, ``phrase`` is not a str, or ``scores`` is not
            :class:`PhraseScores` or ``None``.
        ValueError: ``truth_boxes`` is one box not wrapped in a list, empty, or holds a box that is not a
            normalized box (a pixel box gets a hint how to convert it); ``threshold`` is not a number in [0, 1]
            (:func:`check_threshold`).
    """
    wanted = "truth_boxes must be a list of boxes, e.g. [box]"
    if isinstance(truth_boxes, (str, bytes)) or not isinstance(truth_boxes, Iterable):
        raise TypeError(f"{wanted}; got {type(truth_boxes).__name__}: {truth_boxes!r:.80}")
    truth_boxes = list(truth_boxes)
    if is_one_box(truth_boxes):
        raise ValueError(f"{wanted}; got one box {tuple(truth_boxes)}")
    try:
        truth_boxes = [tuple(t) for t in truth_boxes]
    except TypeError:
        raise TypeError(f"{wanted}; got {truth_boxes!r:.80}") from None
    if not truth_boxes:
        raise ValueError(f"the expression {phrase!r} has no true box to score against")
    for i, t in enumerate(truth_boxes):
        try:
            check_normalized(t)
        except ValueError as err:
            raise ValueError(f"truth_boxes[{i}]: {err}") from None
    _check_scores(scores, PhraseScores)
    threshold = check_threshold(threshold)
    boxes = phrase_boxes(grounding, phrase)
    ious = [max(iou(b, t) for t in truth_boxes) for b in boxes]
    row = {"boxes": boxes, "predicted": boxes[0] if boxes else None, "iou": ious[0] if ious else 0.0,
           "best_iou": max(ious, default=0.0)}
    row["hit"] = bool(boxes) and bool(row["iou"] >= threshold)
    row["hit_any"] = bool(boxes) and bool(row["best_iou"] >= threshold)
    if scores is not None:
        scores.accuracy_at_1.add(row["hit"])
        scores.upper_bound.add(row["hit_any"])
    return row


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
    comprehension: PhraseScores
    qa: Score
    generation: Score
    seconds: dict[str, float]
    #: one row per scored item (``"task"``: caption, comprehension, qa or generation), for JSON Lines
    rows: list[dict] = field(default_factory=list, repr=False)
    #: :func:`count_caption_errors` of the brief captions
    caption_errors: dict | None = None

    def as_dict(self) -> dict:
        return {
            "scenes": self.scenes, "objects": self.objects,
            "caption_phrase_recall": self.caption.phrase_recall.as_dict(),
            "caption_box_hit": self.caption.box_hit.as_dict(),
            "caption_phrase_precision": self.caption.phrase_precision.as_dict(),
            "comprehension_accuracy_at_1": self.comprehension.accuracy_at_1.as_dict(),
            "comprehension_upper_bound_any_box": self.comprehension.upper_bound.as_dict(),
            "qa_names_object": self.qa.as_dict(), "generation_names_object": self.generation.as_dict(),
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            **({"caption_errors": self.caption_errors} if self.caption_errors is not None else {}),
        }

    def table(self) -> str:
        """The metrics table (:func:`metrics_table`)."""
        return metrics_table(self.as_dict())


def evaluate(model, processor, scenes, *, batch_size: int | None = None, max_new_tokens: int = 96,
             seed: int = 0, decoding=None) -> Report:
    """Run every task on ``scenes`` and score it (prompts as in :mod:`helpers.world.language`, exact user boxes).

    ``decoding`` (a :class:`helpers.grounding.model.Decoding`) is passed to every
    :func:`~helpers.grounding.model.ground` call; ``None`` keeps ground's default.

    Raises:
        TypeError: ``scenes`` is not a list of :class:`~helpers.world.scenes.Scene` (e.g. images).
        ValueError: ``scenes`` is empty.
    """
    from helpers.grounding.model import ground
    from helpers.world.scenes import SPECIAL_KINDS, definite_phrase
    from helpers.world.language import answer_name

    scenes = _check_scenes(scenes)
    rng = random.Random(seed)
    if decoding is not None:
        ground = functools.partial(ground, decoding=decoding)
    seconds: dict[str, float] = {}
    images = [s.image for s in scenes]

    t = time.perf_counter()
    caps = ground(model, processor, images, CAPTION_PROMPT, max_new_tokens=max_new_tokens, batch_size=batch_size)
    seconds["caption"] = time.perf_counter() - t
    caption, errors = score_captions(scenes, caps)
    rows: list[dict] = [{"task": "caption", "scene": i, "truth": [[o.phrase, o.box] for o in scene.objects],
                         "caption": g.caption, "entities": [[e.phrase, e.boxes] for e in g.entities]}
                        for i, (scene, g) in enumerate(zip(scenes, caps))]

    comp_images, comp_phrases, comp_truth, comp_scene = [], [], [], []
    for i, scene in enumerate(scenes):
        for group in scene.groups:
            first = group[0]
            comp_images.append(scene.image)
            comp_phrases.append(definite_phrase(first.colour, first.shape, len(group)))
            comp_truth.append(group)
            comp_scene.append(i)
    t = time.perf_counter()
    comps = ground(model, processor, comp_images, [comprehension_prompt(p) for p in comp_phrases],
                   max_new_tokens=24, batch_size=batch_size)
    seconds["comprehension"] = time.perf_counter() - t
    comprehension = PhraseScores()
    for i, phrase, truth, g in zip(comp_scene, comp_phrases, comp_truth, comps):
        row = score_phrase([o.box for o in truth], g, phrase, comprehension)
        rows.append({"task": "comprehension", "scene": i, "expression": phrase, "truth": [o.box for o in truth],
                     **row, "caption": g.caption})

    obj_images, objs, qa_prompts, obj_scene = [], [], [], []
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            obj_images.append(scene.image)
            objs.append(obj)
            obj_scene.append(i)
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
    for i, obj, prompt, a, g in zip(obj_scene, objs, qa_prompts, qas, gens):
        name = answer_name(obj)
        for task, score, answer in (("qa", qa, answer_after(a.caption, "Answer:", prompt)),
                                    ("generation", generation, answer_after(g.caption, " is", GENERATION_PROMPT))):
            hit = names_object(answer, name)
            score.add(hit)
            rows.append({"task": task, "scene": i, "box": obj.box, "name": name, "answer": answer, "hit": hit})
    return Report(len(scenes), sum(len(s.objects) for s in scenes), caption, comprehension, qa, generation, seconds,
                  rows, errors)


def _check_scenes(scenes: object) -> list:
    """``scenes`` as a list of at least one :class:`~helpers.world.scenes.Scene`; ``TypeError`` or ``ValueError``
    saying what was expected otherwise."""
    from helpers.world.scenes import Scene

    wanted = "scenes must be a list of Scene, e.g. sample_scenes(20, seed=HELD_OUT_SEED)"
    if isinstance(scenes, Scene):
        raise TypeError(f"{wanted}; got one Scene: wrap it in a list, [scene]")
    if isinstance(scenes, (str, bytes)) or not isinstance(scenes, Iterable):
        raise TypeError(f"{wanted}; got {type(scenes).__name__}: {scenes!r:.80}")
    scenes = list(scenes)
    if not scenes:
        raise ValueError(f"{wanted}; got none: there is nothing to evaluate")
    for i, scene in enumerate(scenes):
        if not isinstance(scene, Scene):
            raise TypeError(f"{wanted} (each with its image and objects); scenes[{i}] is {type(scene).__name__}: "
                            f"{scene!r:.80}")
    return scenes


def answer_after(caption: str, marker: str, prompt: str | None = None) -> str:
    """The model's answer: the part of a processed caption after the ``marker`` that ends the prompt.

    The caption starts with the prompt's text (``"It is"`` for ``GENERATION_PROMPT``, ``"Question: What is this
    object? Answer:"`` for ``qa_prompt()``), and the answer may hold the marker again (``" a red circle that is
    next to a square."``). So the cut comes after as many markers as ``prompt``'s text holds, counted from the
    start; without ``prompt``, after the first (a marker that ends the prompt and occurs there once, as ``" is"``
    in ``GENERATION_PROMPT`` and ``"Answer:"`` in ``qa_prompt()``). The whole caption when it holds fewer.

    Raises:
        ValueError: ``prompt``'s text does not end with ``marker``.
    """
    wanted = 1
    if prompt is not None:
        text = parse_generation(prompt).caption.rstrip()
        if not marker.strip() or not text.endswith(marker.rstrip()):
            raise ValueError(f"the marker must end the prompt's text: {marker!r} does not end {text!r} "
                             f"(of prompt {prompt!r:.100})")
        wanted = text.count(marker)
    end = 0
    for _ in range(wanted):
        i = caption.find(marker, end)
        if i < 0:
            return caption
        end = i + len(marker)
    return caption[end:]


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


def evaluate_captions(model, processor, scenes, *, max_new_tokens: int = 96, batch_size: int | None = None,
                      decoding=None) -> tuple[CaptionScores, dict]:
    """Brief captions of ``scenes`` only: their scores and :func:`count_caption_errors` (for quick probes).

    Raises:
        TypeError, ValueError: ``scenes`` as for :func:`evaluate`.
    """
    from helpers.grounding.model import ground

    scenes = _check_scenes(scenes)

    extra = {} if decoding is None else {"decoding": decoding}
    caps = ground(model, processor, [s.image for s in scenes], CAPTION_PROMPT, max_new_tokens=max_new_tokens,
                  batch_size=batch_size, **extra)
    return score_captions(scenes, caps)


def score_captions(scenes: Sequence, groundings: Sequence[Grounding]) -> tuple[CaptionScores, dict]:
    """Brief captions of ``scenes`` scored (:func:`score_caption`) and their errors by type
    (:func:`count_caption_errors`): the caption part of :func:`evaluate` and :func:`evaluate_captions`."""
    scores = CaptionScores()
    for scene, g in zip(scenes, groundings):
        score_caption(scene.objects, g, scores)
    return scores, count_caption_errors(scenes, groundings)


# ------------------------------------------------------------------------------------------- benchmark files
# The runner that RefCOCO/+/g (helpers.grounding.refcoco) and Flickr30k Entities (helpers.grounding.flickr30k)
# share: their items name image files under one folder.

#: Expressions grounded per chunk; each chunk loads its images once and lets them go afterwards.
CHUNK = 256


def check_items(items: Sequence, kind: type, loader: str, threshold: float) -> list:
    """``items`` as a list when it holds at least one item and only ``kind`` (what the benchmark's ``loader``
    returns), with a ``threshold`` by :func:`check_threshold`'s rule.

    Raises:
        ValueError: ``items`` is empty or holds something else, or ``threshold`` is outside [0, 1].
    """
    items = list(items)
    if not items:
        raise ValueError(f"items is empty: load annotations with {loader}() first")
    for i, it in enumerate(items):
        if not isinstance(it, kind):
            raise ValueError(f"items[{i}] must be a {kind.__name__} (from {loader}), got {type(it).__name__}")
    check_threshold(threshold)
    return items


def check_images_exist(file_names: Iterable[str], image_root: str | os.PathLike) -> None:
    """Check that every ``image_root / name`` is a file and reads as an image, before any model call (a benchmark
    runs for hours, and an unreadable image found when its chunk comes would end the run there).

    Each image's header is read (:func:`helpers.grounding.images.stored_size`, no pixel is decoded), so an empty
    file or one that is no image is found here; pixel data cut short is found only when the image is loaded.

    Raises:
        helpers.grounding.images.ImageLoadError: the folder is missing; or some images are (their number and
            the first five names); or some cannot be read as images (the first one's reason, in the order of
            ``file_names``, and how many others, naming up to five).
    """
    root = Path(image_root)
    if not root.is_dir():
        raise ImageLoadError(f"the image folder {str(root)!r} does not exist (or is not a folder)")
    names = list(dict.fromkeys(file_names))
    missing = sorted(name for name in names if not (root / name).is_file())
    if missing:
        raise ImageLoadError(
            f"{len(missing)} image(s) the annotations name are not in {str(root)!r}, e.g. "
            f"{', '.join(missing[:5])}: is it the right folder (COCO train2014 for RefCOCO, flickr30k-images "
            "for Flickr30k Entities)?"
        )
    unreadable = []
    for name in names:
        try:
            stored_size(root / name)
        except ImageLoadError as err:
            unreadable.append((name, str(err)))
    if unreadable:
        others = [name for name, _ in unreadable[1:]]
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        also = f" (also unreadable: {', '.join(others[:5])}{more})" if others else ""
        raise ImageLoadError(f"{len(unreadable)} of the {len(names)} image(s) the annotations name cannot be read: "
                             f"{unreadable[0][1]}{also}")


def ground_on_files(model, processor, file_names: Sequence[str], prompts: Sequence[str],
                    image_root: str | os.PathLike, *, decoding=None, **ground_kwargs) -> Iterable[tuple[int, Any]]:
    """Ground ``prompts[i]`` on the image ``image_root / file_names[i]``; yields ``(i, Grounding)`` in order.

    ``decoding`` defaults to :data:`helpers.grounding.model.AUTHORS_DECODING` (greedy with
    ``no_repeat_ngram_size=3``, the Kosmos-2 authors' setting for these benchmarks); ``ground_kwargs`` go to
    :func:`helpers.grounding.model.ground`. Images are loaded as stored (``load_image(..., exif_orientation=False)``):
    annotation boxes are measured on the stored pixels, and a photo turned by its EXIF tag would put every box in
    the wrong place. Work goes in chunks of :data:`CHUNK` expressions, each image loaded once per chunk.

    Raises:
        helpers.grounding.images.ImageLoadError: an image is missing or its header cannot be read (checked for
            all before the first answer, :func:`check_images_exist`), or its pixels cannot be read when it is
            loaded (the message names the file).
    """
    from helpers.grounding.model import AUTHORS_DECODING, ground

    decoding = AUTHORS_DECODING if decoding is None else decoding
    check_images_exist(file_names, image_root)
    root = Path(image_root)
    for start in range(0, len(prompts), CHUNK):
        stop = min(start + CHUNK, len(prompts))
        cache: dict[str, Any] = {}
        images = []
        for name in file_names[start:stop]:
            if name not in cache:
                cache[name] = load_image(root / name, exif_orientation=False)
            images.append(cache[name])
        answers = ground(model, processor, images, list(prompts[start:stop]), decoding=decoding, **ground_kwargs)
        yield from enumerate(answers, start)
