"""helpers.grounding.evaluation: phrase normalisation, the caption / comprehension scores on hand-made groundings,
the report's table and JSON form, and evaluate() end to end on a tiny untrained model (structure only)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from helpers.grounding.evaluation import (
    HELD_OUT_SEED,
    IOU_THRESHOLD,
    CaptionScores,
    PhraseScores,
    Report,
    Score,
    answer_after,
    box_hits,
    evaluate,
    names_object,
    normalize_phrase,
    phrase_boxes,
    phrases_match,
    score_caption,
    score_phrase,
)
from helpers.world.scenes import SceneObject, sample_scenes
from helpers.grounding.tokens import Entity, Grounding, parse_generation

RED_A = SceneObject("red", "circle", (0.1, 0.1, 0.3, 0.3), "two red circles")
RED_B = SceneObject("red", "circle", (0.6, 0.1, 0.8, 0.3), "two red circles")
KUMO = SceneObject(None, "kumo", (0.3, 0.5, 0.7, 0.9), "Kumo")
TRUTH = [RED_A, RED_B, KUMO]


def grounding(*entities: tuple[str, list]) -> Grounding:
    """A Grounding whose caption is the phrases joined by ' and '."""
    caption, out = "", []
    for phrase, boxes in entities:
        if caption:
            caption += " and "
        out.append(Entity(phrase, (len(caption), len(caption) + len(phrase)), boxes))
        caption += phrase
    return Grounding(caption, out)


# --------------------------------------------------------------------------------------------- phrases


@pytest.mark.parametrize("raw, want", [
    ("The Red circle ", "red circle"), ("a snowman", "snowman"), ("An  apple", "apple"), ("Kumo", "kumo"),
    ("two red circles", "two red circles"), ("theatre", "theatre"), ("another circle", "another circle"),
    ("  the   blue square", "blue square"), ("a", "a"),
])
def test_normalize_phrase(raw, want) -> None:
    assert normalize_phrase(raw) == want


def test_phrases_match_ignores_case_spaces_and_one_article() -> None:
    assert phrases_match("a red circle", "The red circle")
    assert phrases_match("Kumo", "kumo ")
    assert not phrases_match("a red circle", "a red square")
    assert not phrases_match("a red circle", "two red circles")


def test_box_hits_at_iou_one_half() -> None:
    assert IOU_THRESHOLD == 0.5
    assert box_hits((0.0, 0.0, 0.5, 1.0), (0.0, 0.0, 1.0, 1.0))  # IoU exactly 0.5
    assert not box_hits((0.0, 0.0, 0.49, 1.0), (0.0, 0.0, 1.0, 1.0))
    assert box_hits((0.0, 0.0, 0.49, 1.0), (0.0, 0.0, 1.0, 1.0), threshold=0.4)


# --------------------------------------------------------------------------------------------- scores


def test_score_str_and_rate() -> None:
    s = Score()
    for hit in (True, False, True):
        s.add(hit)
    assert (s.hits, s.total) == (2, 3) and s.rate == pytest.approx(2 / 3)
    assert str(s) == "66.7 % (2/3)"


def test_an_empty_score_says_so_instead_of_printing_nan() -> None:
    assert math.isnan(Score().rate)
    assert str(Score()) == "n/a (0/0)"


def test_a_score_as_json_has_its_rate_to_four_places_and_none_for_nothing_counted() -> None:
    """Score.as_dict is the one form of a score in evaluation.json and the fine-tuning card's figures."""
    assert Score(2, 3).as_dict() == {"rate": 0.6667, "hits": 2, "total": 3}
    assert Score().as_dict() == {"rate": None, "hits": 0, "total": 0}
    assert json.dumps(Score().as_dict(), allow_nan=False) == '{"rate": null, "hits": 0, "total": 0}'


def test_score_caption_perfect_multi_box_answer() -> None:
    g = grounding(("two red circles", [RED_A.box, RED_B.box]), ("Kumo", [KUMO.box]))
    s = score_caption(TRUTH, g)
    assert (s.phrase_recall.hits, s.phrase_recall.total) == (3, 3)
    assert (s.box_hit.hits, s.box_hit.total) == (3, 3)
    assert (s.phrase_precision.hits, s.phrase_precision.total) == (2, 2)


def test_score_caption_counts_misses_and_extra_phrases() -> None:
    # one box for the pair (hits only the left circle), Kumo's box off target, one made-up phrase
    g = grounding(("two red circles", [RED_A.box]), ("Kumo", [(0.0, 0.6, 0.2, 0.8)]),
                  ("a fire", [(0.5, 0.5, 0.6, 0.6)]))
    s = score_caption(TRUTH, g)
    assert (s.phrase_recall.hits, s.phrase_recall.total) == (3, 3)
    assert (s.box_hit.hits, s.box_hit.total) == (1, 3)
    assert (s.phrase_precision.hits, s.phrase_precision.total) == (2, 3)


def test_score_caption_needs_the_right_phrase_for_a_box_to_count() -> None:
    # the box is perfect, but "a red circle" does not name "two red circles"
    g = grounding(("a red circle", [RED_A.box]), ("a cloud", [KUMO.box]))
    s = score_caption(TRUTH, g)
    assert s.phrase_recall.hits == 0 and s.box_hit.hits == 0 and s.phrase_precision.hits == 0


def test_score_caption_accumulates_over_images() -> None:
    scores = CaptionScores()
    score_caption([KUMO], grounding(("Kumo", [KUMO.box])), scores)
    score_caption([RED_A, RED_B], Grounding("nothing", []), scores)
    assert (scores.box_hit.hits, scores.box_hit.total) == (1, 3)
    assert (scores.phrase_precision.hits, scores.phrase_precision.total) == (1, 1)


def test_phrase_boxes_keeps_only_the_boxes_given_for_that_phrase_in_order() -> None:
    g = grounding(("Kumo", [KUMO.box]), ("the red circles", [RED_B.box, RED_A.box]), ("the red circles ", [KUMO.box]))
    assert phrase_boxes(g, "the red circles") == [RED_B.box, RED_A.box, KUMO.box]
    assert phrase_boxes(g, " the  red circles") == [RED_B.box, RED_A.box, KUMO.box]  # spaces are trimmed
    assert phrase_boxes(g, "The red circles") == []  # case counts, as in the authors' script
    assert phrase_boxes(g, "red circles") == []  # so does the article
    assert phrase_boxes(Grounding("", []), "Kumo") == []


def test_score_phrase_first_matching_box_and_upper_bound() -> None:
    scores = PhraseScores()
    # the first box of the phrase misses, the second hits: a miss at 1, a hit for the upper bound
    row = score_phrase([KUMO.box], grounding(("Kumo", [RED_A.box, KUMO.box])), "Kumo", scores)
    assert (row["hit"], row["hit_any"]) == (False, True)
    assert row["predicted"] == RED_A.box and row["iou"] == 0.0 and row["best_iou"] == 1.0
    # a right box given for another phrase does not count: a miss for both
    row = score_phrase([KUMO.box], grounding(("a cloud", [KUMO.box]), ("Kumo", [RED_B.box])), "Kumo", scores)
    assert (row["hit"], row["hit_any"], row["predicted"]) == (False, False, RED_B.box)
    # no box for the phrase at all
    row = score_phrase([KUMO.box], grounding(("a cloud", [KUMO.box])), "Kumo", scores)
    assert (row["hit"], row["hit_any"], row["predicted"], row["iou"], row["boxes"]) == (False, False, None, 0.0, [])
    # several true boxes (a pair): the first box hits when it hits any of them
    row = score_phrase([RED_A.box, RED_B.box], grounding(("the red circles", [RED_B.box])), "the red circles", scores)
    assert (row["hit"], row["hit_any"]) == (True, True)
    assert (scores.accuracy_at_1.hits, scores.upper_bound.hits, scores.accuracy_at_1.total) == (1, 2, 4)
    with pytest.raises(ValueError, match="no true box"):
        score_phrase([], grounding(("Kumo", [KUMO.box])), "Kumo")


def test_score_phrase_counts_an_iou_of_exactly_the_threshold_as_a_hit() -> None:
    """The authors' rule is IoU ≥ 0.5: half the true box (IoU exactly 0.5) is a hit, at 1 and for the upper bound."""
    row = score_phrase([(0.0, 0.0, 1.0, 1.0)], grounding(("Kumo", [(0.0, 0.0, 0.5, 1.0)])), "Kumo")
    assert row["iou"] == row["best_iou"] == IOU_THRESHOLD == 0.5
    assert (row["hit"], row["hit_any"]) == (True, True)


def test_score_phrase_on_a_parsed_comprehension_answer() -> None:
    text = ("<grounding><phrase> the red circles</phrase><object><patch_index_0099><patch_index_0297>"
            "</delimiter_of_multi_objects/><patch_index_0115><patch_index_0313></object>")
    row = score_phrase([RED_A.box, RED_B.box], parse_generation(text), "the red circles")
    assert row["hit"] and row["hit_any"] and len(row["boxes"]) == 2
    assert row["iou"] >= 0.5 and row["best_iou"] >= row["iou"]


@pytest.mark.parametrize("answer, name, want", [
    (" It is a red circle.", "a red circle", True),
    ("It is A RED  circle", "a red circle", True),
    (" It is a blue circle.", "a red circle", False),
    (" Kumo.", "Kumo", True),
    (" a snowman.", "a fire", False),
])
def test_names_object(answer, name, want) -> None:
    assert names_object(answer, name) is want


def test_answer_after_takes_the_text_after_the_marker_that_ends_the_prompt() -> None:
    from helpers.grounding.prompts import GENERATION_PROMPT, qa_prompt

    assert answer_after("Question: What is this object? Answer: It is Kumo.", "Answer:") == " It is Kumo."
    assert answer_after("It is a red circle.", " is") == " a red circle."
    assert answer_after("no marker", "Answer:") == "no marker"
    # the answer holds the marker again: it is the answer's, not the prompt's
    long = "It is a red circle that is next to a square."
    for prompt in (None, GENERATION_PROMPT):
        assert answer_after(long, " is", prompt) == " a red circle that is next to a square."
        assert names_object(answer_after(long, " is", prompt), "a red circle")
    asked = "Question: What is this object? Answer: It is Kumo. Answer: yes."
    assert answer_after(asked, "Answer:", qa_prompt("object")) == " It is Kumo. Answer: yes."
    # the prompt holds the marker twice: the cut is after the second
    assert answer_after("What is it? It is a red circle. It is round.", " is",
                        "<grounding> What is it?<phrase> It</phrase> is") == " a red circle. It is round."
    with pytest.raises(ValueError, match="the marker must end the prompt's text: 'Answer:' does not end 'It is'"):
        answer_after(long, "Answer:", GENERATION_PROMPT)


@pytest.mark.parametrize("truth, error", [
    (KUMO.box, ValueError),  # one box, not wrapped in a list
    (list(KUMO.box), ValueError),
    ([0.3, 0.5], TypeError),
    (None, TypeError),
    ("Kumo", TypeError),
])
def test_score_phrase_wants_a_list_of_true_boxes(truth, error) -> None:
    with pytest.raises(error, match=r"truth_boxes must be a list of boxes, e\.g\. \[box\]"):
        score_phrase(truth, grounding(("Kumo", [KUMO.box])), "Kumo")
    assert score_phrase([KUMO.box], grounding(("Kumo", [KUMO.box])), "Kumo")["hit"]


# --------------------------------------------------------------------------------------------- report


def _report() -> Report:
    caption = CaptionScores(Score(5, 6), Score(4, 6), Score(5, 5))
    return Report(scenes=3, objects=6, caption=caption, comprehension=PhraseScores(Score(4, 5), Score(5, 5)),
                  qa=Score(3, 6), generation=Score(0, 0), seconds={"caption": 1.234, "qa": 0.5})


def test_report_table() -> None:
    lines = _report().table().splitlines()
    assert lines[0] == "3 held-out scenes, 6 objects"
    assert lines[2] == "| metric | result | bar |"
    assert "| captioning: phrase recall | 83.3 % (5/6) | ≥ 95 % |" in lines
    assert "| captioning: box hit (IoU ≥ 0.5) | 66.7 % (4/6) | ≥ 90 % |" in lines
    assert "| comprehension: accuracy@1 (first box of the phrase) | 80.0 % (4/5) | ≥ 90 % |" in lines
    assert "| comprehension: upper bound (any box of the phrase) | 100.0 % (5/5) |  |" in lines
    assert "| captioning: phrase precision | 100.0 % (5/5) | ≥ 95 % |" in lines
    assert "| question with a box: names the object | 50.0 % (3/6) | ≥ 95 % |" in lines
    assert "| generation from a box: names the object | n/a (0/0) | ≥ 95 % |" in lines
    assert len(lines) == 4 + 7


def test_report_as_dict_is_strict_json() -> None:
    d = _report().as_dict()
    assert d["caption_phrase_recall"] == {"rate": 0.8333, "hits": 5, "total": 6}
    assert d["qa_names_object"] == {"rate": 0.5, "hits": 3, "total": 6}
    assert d["comprehension_accuracy_at_1"] == {"rate": 0.8, "hits": 4, "total": 5}
    assert d["comprehension_upper_bound_any_box"] == {"rate": 1.0, "hits": 5, "total": 5}
    assert "comprehension_box_hit" not in d  # the old key meant something else: it is gone, not redefined
    assert d["seconds"] == {"caption": 1.23, "qa": 0.5}
    # a score with nothing to count has no rate (JSON has no NaN)
    assert d["generation_names_object"] == {"rate": None, "hits": 0, "total": 0}
    assert json.loads(json.dumps(d, allow_nan=False)) == d


# --------------------------------------------------------------------------------------------- end to end


def test_evaluate_end_to_end_on_a_tiny_untrained_model(tiny_model) -> None:
    model, processor = tiny_model
    scenes = sample_scenes(2, seed=HELD_OUT_SEED)
    n_objects = sum(len(s.objects) for s in scenes)
    n_groups = sum(len(s.groups) for s in scenes)
    report = evaluate(model, processor, scenes, max_new_tokens=6, batch_size=2)
    assert (report.scenes, report.objects) == (2, n_objects)
    for score in (report.caption.phrase_recall, report.caption.box_hit, report.qa, report.generation):
        assert score.total == n_objects and 0 <= score.hits <= score.total
    at_1, upper = report.comprehension.accuracy_at_1, report.comprehension.upper_bound
    assert at_1.total == upper.total == n_groups  # one per expression
    assert 0 <= at_1.hits <= upper.hits <= n_groups
    assert n_groups <= n_objects
    tasks = [row["task"] for row in report.rows]
    assert [tasks.count(t) for t in ("caption", "comprehension", "qa", "generation")] == [2, n_groups, n_objects,
                                                                                         n_objects]
    comp_rows = [row for row in report.rows if row["task"] == "comprehension"]
    assert sum(row["hit"] for row in comp_rows) == at_1.hits and sum(row["hit_any"] for row in comp_rows) == upper.hits
    assert report.caption.box_hit.hits <= report.caption.phrase_recall.hits
    assert set(report.seconds) == {"caption", "comprehension", "qa", "generation"}
    assert report.table().startswith(f"2 held-out scenes, {n_objects} objects")
    json.dumps(report.as_dict(), allow_nan=False)


def test_score_any_box_counts_each_true_object_hit_by_any_box_under_any_phrase() -> None:
    from types import SimpleNamespace

    from helpers.grounding.evaluation import score_any_box
    from helpers.grounding.tokens import parse_generation

    truth = [SimpleNamespace(box=(0.0, 0.0, 0.5, 0.5)), SimpleNamespace(box=(0.5, 0.5, 1.0, 1.0))]
    # one box on the first object, under a phrase that names something else; nothing near the second
    g = parse_generation("<grounding><phrase> a dog</phrase><object><patch_index_0000><patch_index_0528></object>")
    score = score_any_box(truth, g)
    assert (score.hits, score.total) == (1, 2)


# --------------------------------------------------------------------------------------------- bad input


def test_score_phrase_refuses_pixel_truth_boxes_with_the_hint() -> None:
    """A pixel annotation (COCO, RefCOCO JSON) scored against normalized boxes gave IoU 0, a silent miss."""
    g = grounding(("a dog", [(0.25, 0.2, 0.4, 0.3)]))
    with pytest.raises(ValueError, match=r"^truth_boxes\[1\]: normalized box values must lie in \[0, 1\], got "
                                         r"\(64\.0, 96\.0, 320\.0, 288\.0\)\. It looks like a pixel box: convert it "
                                         r"with to_normalized\(box_px, image_size\)\.$"):
        score_phrase([KUMO.box, (64, 96, 320, 288)], g, "a dog")
    pixel_dog = SceneObject("brown", "dog", (64, 96, 320, 288), "a dog")
    with pytest.raises(ValueError, match=r"^truth\[0\] \('a dog'\): normalized box values .* It looks like a pixel"):
        score_caption([pixel_dog], g)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), "0.5", None, True])
def test_the_threshold_is_a_number_from_0_to_1_wherever_it_is_given(threshold) -> None:
    """score_phrase took any threshold: -0.1 made every box a hit, 1.5 or NaN none, a str failed deep inside. It is
    the rule evaluate_comprehension and ComprehensionResult.accuracy_at had on their own: now one check for all."""
    from helpers.course.playground import looks_in_world
    from helpers.grounding.evaluation import check_threshold
    from helpers.grounding.refcoco import ComprehensionResult, RefItem, evaluate_comprehension

    message = rf"^threshold must be a number in \[0, 1\], got {re.escape(repr(threshold))}$"
    g = grounding(("Kumo", [KUMO.box]))
    with pytest.raises(ValueError, match=message):
        score_phrase([KUMO.box], g, "Kumo", threshold=threshold)
    with pytest.raises(ValueError, match=message):
        ComprehensionResult(Score()).accuracy_at(threshold)
    item = RefItem("x.png", "Kumo", KUMO.box, 8, 8)
    with pytest.raises(ValueError, match=message):
        evaluate_comprehension(None, None, [item], ".", threshold=threshold)
    with pytest.raises(ValueError, match=message):
        looks_in_world(sample_scenes(1, seed=0)[0].image, threshold=threshold)
    with pytest.raises(ValueError, match=message):
        check_threshold(threshold)


def test_hits_are_plain_bools_that_json_writes() -> None:
    """With a numpy threshold the hits were numpy bools, and json.dumps(row) failed."""
    g = grounding(("Kumo", [RED_A.box, KUMO.box]))
    for threshold in (np.float64(0.5), np.float32(0.5), 0.5, 1, 0):
        row = score_phrase([KUMO.box], g, "Kumo", threshold=threshold)
        assert type(row["hit"]) is bool and type(row["hit_any"]) is bool
        assert json.loads(json.dumps(row))["hit_any"] is True
    assert score_phrase([KUMO.box], g, "Kumo", threshold=np.float64(0.5))["hit"] is False


@pytest.mark.parametrize("call, error, message", [
    (lambda g: score_phrase([KUMO.box], g, None), TypeError, r"^phrase must be a str \(the asked phrase, "),
    (lambda g: score_phrase([KUMO.box], "Kumo", "Kumo"), TypeError, r"^grounding must be a Grounding \(what ground\(\) "
                                                                    r"returns .*got str: 'Kumo'$"),
    (lambda g: score_phrase([KUMO.box], None, "Kumo"), TypeError, r"^grounding must be a Grounding .*got NoneType"),
    (lambda g: score_phrase([KUMO.box], g, "Kumo", CaptionScores()), TypeError,
     r"^scores must be a PhraseScores \(to add to\) or None, got CaptionScores"),
    (lambda g: score_caption(sample_scenes(1, seed=0)[0], g), TypeError,
     r"^truth must be a list of objects with \.phrase and \.box, e\.g\. scene\.objects; got a Scene itself: pass "
     r"its \.objects$"),
    (lambda g: score_caption([("Kumo", KUMO.box)], g), TypeError,
     r"^truth must be a list of objects .*; truth\[0\] is tuple: \('Kumo', "),
    (lambda g: score_caption(None, g), TypeError, r"^truth must be a list of objects .*; got NoneType: None$"),
    (lambda g: score_caption([KUMO], None), TypeError, r"^grounding must be a Grounding .*got NoneType: None$"),
    (lambda g: score_caption([KUMO], "Kumo"), TypeError, r"^grounding must be a Grounding .*got str: 'Kumo'$"),
    (lambda g: score_caption([KUMO], g, PhraseScores()), TypeError,
     r"^scores must be a CaptionScores \(to add to\) or None, got PhraseScores"),
])
def test_wrong_arguments_to_the_scores_say_which_and_what_is_expected(call, error, message) -> None:
    """They failed deep inside with AttributeErrors ('str' object has no attribute 'entities' …)."""
    g = grounding(("Kumo", [KUMO.box]))
    with pytest.raises(error, match=message):
        call(g)
    scores, caption = PhraseScores(), CaptionScores()  # the right arguments still score as before
    assert score_phrase([KUMO.box], g, "Kumo", scores)["hit"] and scores.accuracy_at_1.hits == 1
    assert score_caption([KUMO], g, caption) is caption and caption.box_hit.hits == 1


@pytest.mark.parametrize("scenes, error, message", [
    ([], ValueError, r"^scenes must be a list of Scene, e\.g\. sample_scenes\(20, seed=HELD_OUT_SEED\); got none: "
                     r"there is nothing to evaluate$"),
    (lambda: [sample_scenes(1, seed=0)[0].image], TypeError, r"\(each with its image and objects\); scenes\[0\] is "
                                                             r"Image: "),
    (lambda: sample_scenes(1, seed=0)[0], TypeError, r"; got one Scene: wrap it in a list, \[scene\]$"),
    (None, TypeError, r"^scenes must be a list of Scene, .*; got NoneType: None$"),
])
def test_evaluate_wants_scenes(scenes, error, message) -> None:
    """evaluate(model, processor, []) returned a report of zeros, and a list of images an AttributeError; both are
    refused before the model is used (None stands for it here)."""
    from helpers.grounding.evaluation import evaluate_captions

    scenes = scenes() if callable(scenes) else scenes
    for run in (evaluate, evaluate_captions):
        with pytest.raises(error, match=message):
            run(None, None, scenes)
