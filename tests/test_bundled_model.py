"""The shipped model still grounds: the issue's bars on a small seeded held-out set, and the illustrations.

These run the real bundled weights (data/kosmos2-tiny-world) on the CPU; greedy decoding in float32 is
deterministic, so a fixed seed gives the same figures on every run.
"""

from __future__ import annotations

import json

import pytest

from helpers.grounding.boxes import iou
from helpers.grounding.evaluation import HELD_OUT_SEED, evaluate, phrases_match
from helpers.grounding.model import ground, load
from helpers.course.paths import bundled_model_dir
from helpers.world.scenes import character_illustration, sample_scenes, snowman_illustration
from helpers.grounding.prompts import CAPTION_PROMPT, qa_prompt


@pytest.fixture(scope="module")
def bundled(monkeypatch_module):
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch_module.delenv("KOSMOS2_MODEL", raising=False)
    return load(verbose=False)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_offline_default_is_the_bundled_model(bundled):
    model, processor = bundled
    assert model.load_info.bundled
    assert type(processor).__name__ == "Kosmos2Processor"
    weights = sum(p.stat().st_size for p in bundled_model_dir().glob("*.safetensors"))
    assert 0 < weights <= 20_000_000


#: The level the shipped weights reach on the seeded set below (100 % for captions, questions and generation,
#: 89.3 % comprehension accuracy@1 when measured; the model card's 220 scenes reach every bar of the course).
#: A retrained model must not fall below this floor.
FLOOR = {"phrase_recall": 0.9, "box_hit": 0.9, "precision": 0.9, "comprehension": 0.85, "qa": 0.95,
         "generation": 0.95}


def test_shipped_level_on_a_small_seeded_held_out_set(bundled):
    model, processor = bundled
    # scenes far from the model card's 220 (a different slice of the held-out seed's range)
    scenes = sample_scenes(12, seed=HELD_OUT_SEED + 1)
    report = evaluate(model, processor, scenes, batch_size=16)
    assert report.objects >= 25
    assert report.caption.phrase_recall.rate >= FLOOR["phrase_recall"], report.table()
    assert report.caption.box_hit.rate >= FLOOR["box_hit"], report.table()
    assert report.caption.phrase_precision.rate >= FLOOR["precision"], report.table()
    assert report.comprehension.accuracy_at_1.rate >= FLOOR["comprehension"], report.table()
    assert report.qa.rate >= FLOOR["qa"], report.table()
    assert report.generation.rate >= FLOOR["generation"], report.table()


def test_grounds_the_snowman_illustration(bundled):
    model, processor = bundled
    scene = snowman_illustration()
    (result,) = ground(model, processor, scene.image, CAPTION_PROMPT)
    for obj in scene.objects:
        matching = [e for e in result.entities if phrases_match(e.phrase, obj.phrase)]
        assert matching, (obj.phrase, result.caption)
        assert max(iou(b, obj.box) for e in matching for b in e.boxes) >= 0.5, (obj.phrase, result.entities)
    assert result.problems == []


def test_answers_a_question_about_kumo(bundled):
    model, processor = bundled
    scene = character_illustration()
    kumo = scene.objects[0]
    (result,) = ground(model, processor, scene.image, qa_prompt("character"), bboxes=[[kumo.box]])
    answer = result.caption.split("Answer:")[-1]
    assert "Kumo" in answer, result.caption


def test_model_card_matches_the_weights():
    card = (bundled_model_dir() / "README.md").read_text()
    evaluation = json.loads((bundled_model_dir() / "evaluation.json").read_text())
    assert evaluation["objects"] >= 500
    for key in ("caption_phrase_recall", "caption_box_hit", "comprehension_accuracy_at_1",
                "comprehension_upper_bound_any_box", "qa_names_object", "generation_names_object"):
        assert f"({evaluation[key]['hits']}/{evaluation[key]['total']})" in card
