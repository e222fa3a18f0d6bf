"""data/article_outputs.json: what the Kosmos-2 article printed, reproduced by helpers.grounding.tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers.models.kosmos2.processing_kosmos2 import clean_text_and_extract_entities_with_bboxes

from helpers.course.article import article_outputs, article_outputs_path
from helpers.grounding.tokens import box_to_patch_index, location_tokens, parse_generation, strip_image_prefix

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "article_outputs.json"


def _tuples(entities: list) -> list:
    """JSON lists back into the processor's tuples."""
    return [(name, tuple(span), [tuple(b) for b in boxes]) for name, span, boxes in entities]


@pytest.fixture()
def outputs() -> dict:
    return article_outputs()


def test_source_names_the_article_and_the_run(outputs: dict) -> None:
    source = outputs["source"]
    assert "KOSMOS-2" in source["article"]
    assert source["what"] == ("recorded outputs of microsoft/kosmos-2-patch14-224 as printed in the article "
                              "(4-bit, Colab GPU, 2023)")


def test_the_snowman_generation_gives_the_printed_caption_and_entities(outputs: dict) -> None:
    snowman = outputs["snowman"]
    g = parse_generation(snowman["raw_generation"])
    assert g.caption == snowman["processed_text"] == "An image of a snowman warming up by a fire"
    assert g.entity_tuples() == _tuples(snowman["entities"])
    assert g.entity_tuples() == [
        ("a snowman", (12, 21), [(0.390625, 0.046875, 0.984375, 0.828125)]),
        ("a fire", (36, 42), [(0.203125, 0.015625, 0.484375, 0.859375)]),
    ]
    assert g.problems == []
    assert strip_image_prefix(snowman["raw_generation"]) == snowman["caption_after_eoi"]


def test_the_full_precision_note(outputs: dict) -> None:
    full = outputs["snowman"]["full_precision"]
    g = parse_generation(full["generation"])
    assert g.caption == full["processed_text"]
    assert "<patch_index_0005><patch_index_0911>" in full["generation"] and "0005" in full["note"]
    assert g.entity_tuples() == clean_text_and_extract_entities_with_bboxes(full["generation"])[1]
    assert g.entity_tuples() != _tuples(outputs["snowman"]["entities"])  # 4-bit gave other words and boxes


def test_the_grounded_question_prompt_gives_the_printed_entity(outputs: dict) -> None:
    qa = outputs["grounded_qa"]
    user_box = qa["user_box_normalized"]
    assert box_to_patch_index(user_box) == (385, 1004) == tuple(qa["user_box_patch_indices"])
    tokens = location_tokens(user_box)
    inserted = qa["prompt_english"].replace("</phrase>", f"</phrase><object>{tokens}</object>")
    assert qa["prompt_english_with_box"] == inserted
    # the prompt followed by an answer-free generation
    g = parse_generation(qa["prompt_english_with_box"])
    assert g.caption == "Question: What is this character? Answer:"
    assert g.entity_tuples() == [("this character", (18, 32), [(0.046875, 0.390625, 0.390625, 0.984375)])]
    assert g.entity_tuples() == _tuples(qa["entities"])
    assert (g.caption, g.entity_tuples()) == clean_text_and_extract_entities_with_bboxes(qa["prompt_english_with_box"])
    assert g.problems == []
    # as decoded from the model: image prefix first, and an end of sentence when the answer is empty
    decoded = "<image>. the, to and of</image>" + qa["prompt_english_with_box"] + "</s>"
    assert parse_generation(decoded).entity_tuples() == g.entity_tuples()
    assert "not recorded" in qa["answer_note"]


def test_the_processor_inserts_the_same_user_box_tokens(outputs: dict) -> None:
    from helpers.world.language import build_processor

    qa = outputs["grounded_qa"]
    processor = build_processor(64)
    encoded = processor(text=qa["prompt_english"], bboxes=[tuple(qa["user_box_normalized"])])
    decoded = processor.tokenizer.decode(encoded["input_ids"])
    with_box = qa["prompt_english_with_box"]
    head = with_box[: with_box.index("</object>") + len("</object>")]
    assert decoded.startswith("<s>" + head)


def test_the_file_is_read_through_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.loads(SHIPPED.read_text(encoding="utf-8"))
    data["source"]["article"] = "a copy"
    (tmp_path / "article_outputs.json").write_text(json.dumps(data), encoding="utf-8")
    monkeypatch.setenv("KOSMOS2_COURSE_DATA", str(tmp_path))
    assert article_outputs_path() == tmp_path / "article_outputs.json"
    assert article_outputs()["source"]["article"] == "a copy"


def test_a_moved_data_folder_without_the_file_falls_back_to_the_shipped_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KOSMOS2_COURSE_DATA", str(tmp_path))
    assert article_outputs_path() == SHIPPED
    assert article_outputs()["snowman"]["processed_text"] == "An image of a snowman warming up by a fire"


def test_a_broken_file_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "article_outputs.json").write_text('{"snowman": {}}', encoding="utf-8")
    monkeypatch.setenv("KOSMOS2_COURSE_DATA", str(tmp_path))
    with pytest.raises(ValueError, match="should be a JSON object with the keys"):
        article_outputs()


def test_each_call_gives_a_fresh_dict(outputs: dict) -> None:
    outputs["snowman"]["processed_text"] = "changed"
    assert article_outputs()["snowman"]["processed_text"] == "An image of a snowman warming up by a fire"


def test_draw_like_the_article_draws_only_the_first_box_of_each_phrase_in_red() -> None:
    from PIL import Image

    from helpers.course.article import draw_like_the_article

    image = Image.new("RGB", (200, 100), (255, 255, 255))
    entities = [("two squares", (0, 11), [(0.1, 0.2, 0.3, 0.6), (0.6, 0.2, 0.8, 0.6)]),
                ("a circle", (16, 24), [(0.4, 0.7, 0.5, 0.9)])]
    drawn = draw_like_the_article(image, entities)
    red = (255, 0, 0)
    assert drawn.getpixel((20, 50)) == red and drawn.getpixel((60, 50)) == red  # first box, both sides
    assert drawn.getpixel((120, 50)) == (255, 255, 255) and drawn.getpixel((160, 50)) == (255, 255, 255)  # second: none
    assert drawn.getpixel((80, 80)) == red  # the second phrase's (only) box
    assert image.getpixel((20, 50)) == (255, 255, 255)  # the input is left as it was
    # the article rounds to two decimals before scaling: 0.123 -> 0.12 -> x = 24, not 24.6 -> 25
    shifted = draw_like_the_article(Image.new("RGB", (200, 100), (255, 255, 255)),
                                    [("x", None, [(0.123, 0.1, 0.5, 0.5)])])
    assert shifted.getpixel((24, 30)) == red and shifted.getpixel((25, 30)) != red


def test_a_moved_data_folder_finds_the_shipped_model_as_it_finds_the_shipped_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers.course.paths import BUNDLED_MODEL_NAME, bundled_model_dir, repo_root

    monkeypatch.setenv("KOSMOS2_COURSE_DATA", str(tmp_path))
    assert bundled_model_dir() == repo_root() / "data" / BUNDLED_MODEL_NAME
    assert article_outputs_path() == SHIPPED
    (tmp_path / BUNDLED_MODEL_NAME).mkdir()  # a copy in the moved folder wins
    assert bundled_model_dir() == tmp_path / BUNDLED_MODEL_NAME
