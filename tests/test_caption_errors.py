"""helpers.grounding.evaluation.caption_errors: a caption's errors by type, on hand-made scenes and captions."""

from __future__ import annotations

import pytest

from helpers.grounding.evaluation import CAPTION_ERROR_TYPES, caption_error_table, caption_errors, count_caption_errors
from helpers.world.scenes import SceneObject, sample_scenes
from helpers.grounding.tokens import Entity, Grounding

BOX_A, BOX_B, BOX_C = (0.05, 0.1, 0.3, 0.35), (0.6, 0.1, 0.85, 0.35), (0.35, 0.55, 0.65, 0.9)
RED_A = SceneObject("red", "circle", BOX_A, "two red circles")
RED_B = SceneObject("red", "circle", BOX_B, "two red circles")
YELLOW = SceneObject("yellow", "square", BOX_C, "a yellow square")
KUMO = SceneObject(None, "kumo", BOX_C, "Kumo")
FAR = (0.9, 0.9, 0.99, 0.99)


def caption(*entities: tuple[str, list]) -> Grounding:
    text, out = "", []
    for phrase, boxes in entities:
        text += ", " if text else ""
        out.append(Entity(phrase, (len(text), len(text) + len(phrase)), boxes))
        text += phrase
    return Grounding(text, out)


def only(**counts: int) -> dict[str, int]:
    return {k: counts.get(k, 0) for k in CAPTION_ERROR_TYPES}


def test_a_perfect_caption_has_no_error() -> None:
    g = caption(("two red circles", [BOX_A, BOX_B]), ("a yellow square", [BOX_C]))
    assert caption_errors([RED_A, RED_B, YELLOW], g) == only()


@pytest.mark.parametrize("entities, want", [
    # the pair never named, the square named twice in its place
    ([("a yellow square", [BOX_C]), ("a yellow square", [BOX_C])], only(missed=1, written_twice=1)),
    # a pair written as two single phrases, each with one right box
    ([("a red circle", [BOX_A]), ("a red circle", [BOX_B]), ("a yellow square", [BOX_C])], only(pair_split=1)),
    # a pair written as one single object
    ([("a red circle", [BOX_A]), ("a yellow square", [BOX_C])], only(wrong_count=1)),
    # the "two" on the wrong group: circles missed, the square written twice (once right, once as a pair)
    ([("a yellow square", [BOX_C]), ("two yellow squares", [BOX_C, FAR])], only(missed=1, written_twice=1)),
    # a kind that is not in the image, and words that name no kind at all
    ([("two red circles", [BOX_A, BOX_B]), ("a yellow square", [BOX_C]), ("a blue triangle", [FAR]),
      ("a cat", [FAR])], only(wrong_kind=2)),
    # right phrase, one box on the wrong place: one object not hit, one box for nothing
    ([("two red circles", [BOX_A, FAR]), ("a yellow square", [BOX_C])], only(wrong_box=1, extra_box=1)),
    # right phrase with one box too many
    ([("two red circles", [BOX_A, BOX_B]), ("a yellow square", [BOX_C, FAR])], only(extra_box=1)),
])
def test_errors_by_type(entities, want) -> None:
    assert caption_errors([RED_A, RED_B, YELLOW], caption(*entities)) == want


def test_a_single_object_written_as_a_pair_is_a_wrong_count() -> None:
    assert caption_errors([KUMO], caption(("two Kumos", [BOX_C, FAR]))) == only(wrong_count=1)
    assert caption_errors([KUMO], caption(("Kumo", [BOX_C]))) == only()


def test_an_empty_caption_misses_every_group() -> None:
    assert caption_errors([RED_A, RED_B, YELLOW], Grounding("", [])) == only(missed=2)


def test_counting_over_scenes_and_the_table() -> None:
    scenes = sample_scenes(3, seed=5)
    from helpers.world.language import caption_answer
    from helpers.grounding.tokens import parse_generation

    right = [parse_generation(caption_answer(s)) for s in scenes]
    counts = count_caption_errors(scenes, right)
    assert counts == {"scenes": 3, "perfect": 3, "groups": sum(len(s.groups) for s in scenes), **only()}
    empty = count_caption_errors(scenes, [Grounding("", [])] * 3)
    assert empty["perfect"] == 0 and empty["missed"] == empty["groups"]
    table = caption_error_table(empty).splitlines()
    assert table[0] == f"0 of 3 captions without any error ({empty['groups']} groups)"
    assert f"| missed | {empty['groups']} | {CAPTION_ERROR_TYPES['missed']} |" in table
    with pytest.raises(ValueError, match="one grounding per scene"):
        count_caption_errors(scenes, right[:2])


def test_evaluate_captions_scores_and_classifies_every_scene() -> None:
    from helpers.grounding.evaluation import evaluate_captions
    from helpers.world.language import build_processor
    from helpers.world.training import new_model

    processor = build_processor(64)
    model = new_model(processor, vision_layers=1, text_layers=1, vision_dim=32, text_dim=48, heads=2).eval()
    scenes = sample_scenes(2, seed=9)
    scores, errors = evaluate_captions(model, processor, scenes, max_new_tokens=6)
    n_objects = sum(len(s.objects) for s in scenes)
    assert scores.phrase_recall.total == scores.box_hit.total == n_objects
    assert errors["scenes"] == 2 and errors["groups"] == sum(len(s.groups) for s in scenes)
    # six tokens of an untrained model name nothing right: every group is missed
    assert scores.phrase_recall.hits == 0 and errors["missed"] == errors["groups"] and errors["perfect"] == 0


def test_the_evaluate_command_with_captions_only_writes_scores_and_errors(tmp_path, capsys) -> None:
    import json

    from helpers.course.cli_evaluate import main
    from helpers.world.language import build_processor
    from helpers.world.training import new_model

    processor = build_processor(64)
    model = new_model(processor, vision_layers=1, text_layers=1, vision_dim=32, text_dim=48, heads=2)
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    out = tmp_path / "r.jsonl"
    assert main(["world", "--model", str(tmp_path / "m"), "--scenes", "2", "--seed", "9", "--captions-only",
                 "--no-repeat-ngram-size", "3", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "captioning: phrase recall:" in printed and "| pair split |" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    n_objects = sum(len(s.objects) for s in sample_scenes(2, seed=9))
    assert rows[0]["metric"] == "phrase recall" and rows[0]["total"] == n_objects
    assert rows[-1]["errors"]["scenes"] == 2
