"""Tests for helpers.grounding.refcoco: reading RefCOCO-style annotations and scoring comprehension on them."""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import helpers.course.solutions_more
import helpers.grounding.evaluation
import helpers.grounding.model
import helpers.grounding.refcoco
from helpers.course.paths import bundled_model_dir
from helpers.grounding.boxes import iou
from helpers.grounding.evaluation import score_phrase
from helpers.grounding.images import ImageLoadError
from helpers.grounding.refcoco import (
    COCO_TRAIN2014_PATTERN,
    ComprehensionResult,
    RefCocoFormatError,
    RefItem,
    evaluate_comprehension,
    comprehension_prompt_for,
    load_refcoco,
    scenes_to_refcoco,
)
from helpers.course.solutions_more import find_boxes, miss_reasons
from helpers.grounding.prompts import comprehension_prompt
from helpers.world.scenes import definite_phrase, draw_scene, sample_scenes
from helpers.grounding.tokens import Entity, Grounding, parse_generation, patch_index_to_box


def record(**over) -> dict:
    rec = {"file_name": "a.png", "bbox": [20, 10, 40, 30], "sentences": [{"sent": "the red circle"}],
           "width": 200, "height": 100}
    rec.update(over)
    return rec


@pytest.fixture()
def drawn(tmp_path) -> tuple[Path, list[dict]]:
    """Two images the test draws, and hand-written annotations for them (COCO boxes in pixels)."""
    a = draw_scene([("red", "circle", (0.1, 0.2, 0.4, 0.8)), (None, "snowman", (0.6, 0.1, 0.9, 0.9))], size=(200, 100))
    b = draw_scene([("blue", "square", (0.25, 0.25, 0.75, 0.75))], size=(80, 120))
    a.image.save(tmp_path / "a.png")
    b.image.save(tmp_path / "b.png")
    records = [
        {"ref_id": 1, "file_name": "a.png", "bbox": [20, 20, 60, 60], "width": 200, "height": 100,
         "sentences": [{"sent": "the red circle"}, {"sent": "red  circle "}], "split": "val"},
        {"ref_id": 2, "file_name": "a.png", "bbox": [120, 10, 60, 80], "width": 200, "height": 100,
         "sentences": [{"sent": "the snowman"}], "split": "test"},
        {"ref_id": 3, "file_name": "b.png", "bbox": [20, 30, 40, 60], "width": 80, "height": 120,
         "expression": "the blue square", "split": "val"},
    ]
    return tmp_path, records


# --------------------------------------------------------------------------------------------- loading


def test_coco_box_becomes_normalized_xyxy_and_each_sentence_an_item(drawn) -> None:
    _, records = drawn
    items = load_refcoco(records)
    assert [it.expression for it in items] == ["the red circle", "red circle", "the snowman", "the blue square"]
    assert items[0].box == pytest.approx((0.1, 0.2, 0.4, 0.8))
    assert items[0].box_px == pytest.approx((20, 20, 80, 80))
    assert items[2].box == pytest.approx((0.6, 0.1, 0.9, 0.9))
    assert items[3].box == pytest.approx((0.25, 0.25, 0.75, 0.75))
    assert (items[3].width, items[3].height, items[3].ref_id, items[3].split) == (80, 120, 3, "val")


def test_file_object_and_split(drawn, tmp_path) -> None:
    _, records = drawn
    path = tmp_path / "refs.json"
    path.write_text(json.dumps({"refs": records}))
    assert len(load_refcoco(path)) == 4
    assert [it.expression for it in load_refcoco(str(path), split="test")] == ["the snowman"]
    with pytest.raises(RefCocoFormatError, match=r"no expression is in split 'testB'.*'test', 'val'"):
        load_refcoco(records, split="testB")


def test_sentence_forms_and_image_id_pattern() -> None:
    items = load_refcoco([
        {"image_id": 42, "bbox": [0, 0, 10, 10], "width": 10, "height": 10,
         "sentences": ["plain string", {"raw": "raw form"}]},
    ])
    assert [it.expression for it in items] == ["plain string", "raw form"]
    assert items[0].file_name == COCO_TRAIN2014_PATTERN.format(image_id=42) == "COCO_train2014_000000000042.jpg"
    without_name = {k: v for k, v in record().items() if k != "file_name"} | {"image_id": "x7"}
    custom = load_refcoco([without_name], file_pattern="img_{image_id}.png")
    assert custom[0].file_name == "img_x7.png"
    with pytest.raises(RefCocoFormatError, match="image_id='x7'.*file_pattern"):
        load_refcoco([without_name])  # the default pattern needs an int


def test_size_read_from_the_image_when_missing(drawn) -> None:
    root, records = drawn
    rec = {k: v for k, v in records[2].items() if k not in ("width", "height")}
    (item,) = load_refcoco([rec], image_root=root)
    assert (item.width, item.height) == (80, 120)
    with pytest.raises(RefCocoFormatError, match="no 'width'/'height'.*image_root"):
        load_refcoco([rec])
    with pytest.raises(RefCocoFormatError, match=r"record 0 \(ref_id 3\): has no 'width'/'height', and the size of "
                                                 r"its image could not be read: no image file at .*nope\.png"):
        load_refcoco([rec | {"file_name": "nope.png"}], image_root=root)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG file whose header announces ``width`` x ``height`` pixels, with (almost) no pixels after it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    pixels = chunk(b"IDAT", zlib.compress(b"\x00" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + pixels + chunk(b"IEND", b"")


def test_sizes_are_read_as_the_course_reads_them(tmp_path) -> None:
    """The size came from a bare Image.open: a picture beyond Pillow's pixel limit raised its
    DecompressionBombError, and a file that is no picture a message of its own. It is images.stored_size now:
    the header's size, and its errors as RefCocoFormatError naming the record."""
    (tmp_path / "huge.png").write_bytes(_png_header_only(20_000, 10_000))  # 200 M pixels, over Pillow's limit
    (tmp_path / "notes.png").write_text("not a picture")
    rec = {"file_name": "huge.png", "bbox": [100, 200, 3000, 4000], "expression": "the thing"}
    (item,) = load_refcoco([rec], image_root=tmp_path)
    assert (item.width, item.height) == (20_000, 10_000)
    assert item.box == pytest.approx((100 / 20_000, 0.02, 3100 / 20_000, 0.42))
    with pytest.raises(RefCocoFormatError, match=r"^records: record 1 \(ref_id 7\): has no 'width'/'height', and "
                                                 r"the size of its image could not be read: file .*notes\.png' is not "
                                                 r"an image Pillow can read"):
        load_refcoco([rec, rec | {"file_name": "notes.png", "ref_id": 7}], image_root=tmp_path)


def test_numpy_sizes_count_as_ints() -> None:
    """The sizes are checked by checks.is_positive_int, as elsewhere: numpy ints count, and come back as ints."""
    (item,) = load_refcoco([record(width=np.int64(200), height=np.int32(100))])
    assert (item.width, item.height) == (200, 100) and type(item.width) is int and type(item.height) is int
    with pytest.raises(RefCocoFormatError, match=r"'height' must be a positive int \(pixels\), got True"):
        load_refcoco([record(height=True)])


def test_edge_overshoot_within_a_pixel_is_clipped() -> None:
    (item,) = load_refcoco([record(bbox=[150.5, 60, 50, 40.4])])
    assert item.box == pytest.approx((150.5 / 200, 0.6, 1.0, 1.0))


@pytest.mark.parametrize("bbox", [[200.5, 10, 0.4, 30], [200, 10, 0.5, 30], [20, 100.3, 40, 0.5]])
def test_a_box_starting_beyond_the_image_is_refused_naming_the_record(bbox) -> None:
    """Within the pixel of tolerance, but nothing of it inside the image: it used to come back inverted
    ((1.0025, 0.1, 1.0, 0.4), a plain ValueError) or without area."""
    with pytest.raises(RefCocoFormatError, match=r"record 1: 'bbox' .* lies outside the image of 200 x 100 pixels"):
        load_refcoco([record(), record(bbox=bbox)])


@pytest.mark.parametrize(
    "rec, message",
    [
        (record(bbox=[20, 10, 40]), r"record 0: 'bbox' must be \[x, y, w, h\]"),
        (record(bbox="20 10 40 30"), r"'bbox' must be \[x, y, w, h\]"),
        (record(bbox=[20, 10, 0, 30]), "has no area"),
        (record(bbox=[50, 20, 30, 10]), None),  # a valid box, for contrast
        (record(bbox=[20, 10, "40", 30]), "must be a number"),
        (record(bbox=[20, 10, float("nan"), 30]), "must be finite"),
        (record(bbox=[180, 10, 40, 30]), "reaches beyond the image of 200 x 100"),
        (record(width=0), "'width' must be a positive int"),
        ({k: v for k, v in record().items() if k != "height"}, "give both 'width' and 'height'"),
        ({k: v for k, v in record().items() if k != "bbox"}, "needs 'bbox'"),
        ({k: v for k, v in record().items() if k != "sentences"}, "needs 'sentences'.*or 'expression'"),
        ({k: v for k, v in record().items() if k != "file_name"}, "needs 'file_name' or 'image_id'"),
        (record(sentences=[{"text": "x"}]), "sentence 0 must have a 'sent'"),
        (record(sentences=["  "]), "non-empty string"),
        (record(sentences=[]), "non-empty string"),
        (record(sentences="the red circle"), "'sentences' must be a list"),
        (record(file_name=""), "'file_name' must be a non-empty str"),
    ],
)
def test_bad_records_give_clear_errors(rec, message) -> None:
    if message is None:
        assert len(load_refcoco([rec])) == 1
        return
    with pytest.raises(RefCocoFormatError, match=message):
        load_refcoco([rec])


def test_bad_sources(tmp_path) -> None:
    with pytest.raises(RefCocoFormatError, match="does not exist"):
        load_refcoco(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RefCocoFormatError, match="not valid JSON"):
        load_refcoco(bad)
    with pytest.raises(RefCocoFormatError, match="under 'refs' or\n?.*'annotations'"):
        load_refcoco({"images": []})
    with pytest.raises(RefCocoFormatError, match="got int"):
        load_refcoco(3)
    with pytest.raises(RefCocoFormatError, match="record 1: expected a dict"):
        load_refcoco([record(), "oops"])
    with pytest.raises(RefCocoFormatError, match="hold no expressions"):
        load_refcoco([])
    assert issubclass(RefCocoFormatError, ValueError)


def test_scenes_to_refcoco_round_trip(tmp_path) -> None:
    scenes = sample_scenes(6, seed=3)
    records = scenes_to_refcoco(scenes, tmp_path / "images")
    (tmp_path / "refs.json").write_text(json.dumps(records))
    items = load_refcoco(tmp_path / "refs.json", image_root=tmp_path / "images")
    truth = [(o, len(g)) for s in scenes for g in s.groups for o in g]
    assert len(items) == len(truth)
    for item, (obj, n) in zip(items, truth):
        assert item.box == pytest.approx(obj.box, abs=0.01)
        assert obj.name.lower() in item.expression.lower()
        assert (" left " in item.expression or " right " in item.expression) == (n > 1)
        assert (tmp_path / "images" / item.file_name).is_file()


# --------------------------------------------------------------------------------------------- evaluating


def test_scoring_follows_the_authors_rules_on_hand_made_answers(drawn, monkeypatch) -> None:
    root, records = drawn
    items = load_refcoco(records)
    assert [it.expression for it in items] == ["the red circle", "red circle", "the snowman", "the blue square"]
    answers = {
        # a near-exact box for the expression, then a box for another phrase
        "the red circle": "<grounding><phrase> the red circle</phrase><object><patch_index_0195><patch_index_0812>"
                          "</object> next to<phrase> a snowman</phrase>"
                          "<object><patch_index_0000><patch_index_0033></object>",
        # the right place, but given for another phrase: a miss, however good the box
        "red circle": "<grounding><phrase> a circle</phrase><object><patch_index_0195><patch_index_0812></object>",
        # no box at all
        "the snowman": "<grounding><phrase> the snowman</phrase> is not here",
        # two boxes for the expression: the first is wrong, the second right (a miss at 1, within the upper bound)
        "the blue square": "<grounding><phrase> the blue square</phrase><object><patch_index_0000><patch_index_0033>"
                           "</delimiter_of_multi_objects/><patch_index_0264><patch_index_0791></object>",
    }
    seen = {}

    def fake_ground(model, processor, images, prompts, **kwargs):
        seen["images"], seen["prompts"], seen["kwargs"] = images, prompts, kwargs
        return [parse_generation(answers[p.split("<phrase> ")[1].split("</phrase>")[0]]) for p in prompts]

    monkeypatch.setattr(helpers.grounding.model, "ground", fake_ground)
    result = evaluate_comprehension(None, None, items, root)
    assert seen["prompts"][0] == "<grounding><phrase> the red circle</phrase>"
    assert seen["images"][0] is seen["images"][1]  # each image is loaded once
    assert (seen["kwargs"]["decoding"] == helpers.grounding.model.AUTHORS_DECODING
            == helpers.grounding.model.Decoding(1, 3))
    assert [r["hit"] for r in result.rows] == [True, False, False, False]
    assert [r["hit_any"] for r in result.rows] == [True, False, False, True]
    assert result.rows[0]["iou"] == pytest.approx((9 / 32) * (19 / 32) / 0.18)
    assert result.rows[0]["boxes"] == [result.rows[0]["predicted"]]  # the snowman's box is not the circle's
    assert result.rows[1]["predicted"] is None and result.rows[1]["iou"] == 0.0
    assert result.rows[2]["predicted"] is None and result.rows[2]["boxes"] == []
    assert result.rows[3]["predicted"] == pytest.approx((1 / 64, 1 / 64, 3 / 64, 3 / 64))
    assert result.rows[3]["best_iou"] >= 0.5 > result.rows[3]["iou"]
    assert (result.score.hits, result.score.total, result.accuracy) == (1, 4, 0.25)
    assert (result.upper_bound.hits, result.upper_bound.total) == (2, 4)
    assert result.accuracy_at(0.0) == 0.5  # answers without a box for the expression stay misses
    assert str(result) == ("accuracy@1 at IoU ≥ 0.5: 25.0 % (1/4); "
                           "upper bound (any box of the expression): 50.0 % (2/4)")
    evaluate_comprehension(None, None, items[:1], root, decoding=helpers.grounding.model.GREEDY)
    assert seen["kwargs"]["decoding"] == helpers.grounding.model.Decoding()


def test_predicted_box_and_argument_checks(drawn) -> None:
    root, records = drawn
    g = parse_generation("<phrase> x</phrase><object><patch_index_0000><patch_index_1023></object>")
    truth = [(0.0, 0.0, 1.0, 1.0)]
    assert score_phrase(truth, g, "x")["predicted"] == (1 / 64, 1 / 64, 1 - 1 / 64, 1 - 1 / 64)
    assert score_phrase(truth, g, "y")["predicted"] is None
    assert score_phrase(truth, parse_generation("nothing"), "x")["predicted"] is None
    with pytest.raises(ValueError, match="items is empty"):
        evaluate_comprehension(None, None, [], root)
    with pytest.raises(ValueError, match=r"items\[0\] must be a RefItem"):
        evaluate_comprehension(None, None, records, root)
    with pytest.raises(ValueError, match="threshold"):
        evaluate_comprehension(None, None, load_refcoco(records), root, threshold=1.5)
    with pytest.raises(ValueError, match="threshold"):
        ComprehensionResult(score=None).accuracy_at(-0.1)  # type: ignore[arg-type]


def test_missing_image_is_named(tiny_model, drawn) -> None:
    root, records = drawn
    items = load_refcoco([records[0] | {"file_name": "gone.png"}])
    with pytest.raises(ImageLoadError, match="gone.png"):
        evaluate_comprehension(*tiny_model, items, root)


def test_an_unreadable_image_late_in_the_list_is_refused_before_any_answer(drawn, monkeypatch) -> None:
    """Images were only checked to exist: a 0-byte or corrupt image was found when its chunk came (CHUNK = 256
    expressions), after every earlier chunk had been grounded, and the run ended there with nothing kept."""
    root, records = drawn
    (root / "zero.png").write_bytes(b"")
    (root / "text.png").write_text("hello")
    late = [record(file_name="a.png", sentences=[{"sent": f"the thing {i}"}]) for i in range(300)]
    items = load_refcoco(late + [record(file_name="zero.png"), record(file_name="text.png")])

    def no_ground(*args, **kwargs):
        raise AssertionError("ground() was called: the images should have been checked before")

    monkeypatch.setattr(helpers.grounding.model, "ground", no_ground)
    with pytest.raises(ImageLoadError) as refused:
        evaluate_comprehension(None, None, items, root)
    assert str(refused.value) == (f"2 of the 3 image(s) the annotations name cannot be read: file "
                                  f"{str(root / 'zero.png')!r} is empty (0 bytes), expected an image file (also "
                                  "unreadable: text.png)")
    with pytest.raises(ImageLoadError, match=r"^1 of the 1 image\(s\) the annotations name cannot be read: file "
                                             r".*text\.png' is not an image Pillow can read"):
        helpers.grounding.evaluation.check_images_exist(["text.png", "text.png"], root)
    helpers.grounding.evaluation.check_images_exist(["a.png", "b.png"], root)  # readable images pass


def test_evaluate_with_a_real_model_on_drawn_images(tiny_model, drawn) -> None:
    root, records = drawn
    items = load_refcoco(records)
    result = evaluate_comprehension(*tiny_model, items, root, batch_size=3, max_new_tokens=6)
    assert result.score.total == len(items) == len(result.rows)
    for item, row in zip(items, result.rows):
        assert row["expression"] == item.expression and row["truth"] == item.box
        assert row["caption"].startswith(item.expression)  # the prompt's phrase opens the caption
        assert 0.0 <= row["iou"] <= 1.0
        assert row["hit"] == (row["predicted"] is not None and row["iou"] >= 0.5)
        assert row["hit_any"] == any(iou(b, item.box) >= 0.5 for b in row["boxes"])
    assert result.score.hits == sum(r["hit"] for r in result.rows)
    assert result.upper_bound.hits == sum(r["hit_any"] for r in result.rows) >= result.score.hits
    assert isinstance(items[0], RefItem)
    Image.open(root / "a.png").verify()


def test_miss_reasons_solution() -> None:
    rows = [{"predicted": None, "iou": 0.0}, {"predicted": (0, 0, 1, 1), "iou": 0.7},
            {"predicted": (0, 0, 1, 1), "iou": 0.3}, {"predicted": (0, 0, 1, 1), "iou": 0.05},
            {"predicted": (0, 0, 1, 1), "iou": 0.5}]
    assert miss_reasons(rows) == {"no box": 1, "hit": 2, "loose box": 1, "wrong place": 1}
    assert miss_reasons(rows, threshold=0.75, near=0.0) == {"no box": 1, "loose box": 4}
    with pytest.raises(ValueError, match="near <= threshold"):
        miss_reasons(rows, threshold=0.3, near=0.4)


def test_miss_reasons_tells_the_right_object_boxed_second() -> None:
    """Notebook 09's one miss (the right object, boxed second) was counted as a box in the wrong place."""
    truth = (0.5, 0.5, 1.0, 1.0)
    second = parse_generation("<grounding><phrase> the right square</phrase><object><patch_index_0000>"
                              "<patch_index_0264></delimiter_of_multi_objects/><patch_index_0528>"
                              "<patch_index_1023></object>")
    row = score_phrase([truth], second, "the right square")
    assert not row["hit"] and row["hit_any"] and row["iou"] == 0.0
    assert miss_reasons([row]) == {"right object, not first": 1}
    assert miss_reasons([row], threshold=0.9) == {"wrong place": 1}  # no box hits at 0.9
    # a box given only under another phrase does not count for the asked one: "no box", as in accuracy@1
    other = parse_generation("<grounding><phrase> the right square</phrase> next to<phrase> a square</phrase>"
                             "<object><patch_index_0528><patch_index_1023></object>")
    assert miss_reasons([score_phrase([truth], other, "the right square")]) == {"no box": 1}


@pytest.fixture(scope="module")
def bundled():
    return helpers.grounding.model.load(bundled_model_dir(), device="cpu", verbose=False)


def test_find_boxes_solution(tiny_model, drawn, bundled, monkeypatch) -> None:
    image = Image.open(drawn[0] / "a.png").convert("RGB")
    answer = "<grounding><phrase> the circles</phrase><object><patch_index_0000><patch_index_0033>" \
             "</delimiter_of_multi_objects/><patch_index_0528><patch_index_1023></object>"
    calls = []

    def fake_ground(model, processor, images, prompts, **kwargs):
        calls.append(prompts)
        return [parse_generation(answer)]

    monkeypatch.setattr(helpers.course.solutions_more, "ground", fake_ground)
    assert find_boxes(*tiny_model, image, " the circles ") == [(1 / 64, 1 / 64, 3 / 64, 3 / 64),
                                                              (16.5 / 32, 16.5 / 32, 31.5 / 32, 31.5 / 32)]
    assert calls == ["<grounding><phrase> the circles</phrase>"]
    answer += "<phrase> a square</phrase><object><patch_index_0100><patch_index_0200></object>"
    assert len(find_boxes(*tiny_model, image, "the circles")) == 2  # the square's box is not the circles'
    with pytest.raises(ValueError, match="non-empty"):
        find_boxes(*tiny_model, image, " ")
    monkeypatch.undo()
    # the real call path, on the bundled model (the random one gives no boxes): its box for a drawn object
    scene = sample_scenes(1, seed=5)[0]  # a snowman, a green square and a blue triangle
    (target,) = scene.groups[1]
    boxes = find_boxes(*bundled, scene.image, definite_phrase(target.colour, target.shape, 1))
    assert len(boxes) == 1 and iou(boxes[0], target.box) >= 0.5, (target, boxes)


def _answer_with(n_boxes: int):
    """A fake ``ground`` whose model answers with ``n_boxes`` boxes and, like generate, stops after
    ``max_new_tokens`` tokens (each tag and location token is one token)."""
    tokens = ["<object>"]
    for i in range(n_boxes):
        tokens += (["</delimiter_of_multi_objects/>"] if i else []) + [f"<patch_index_{33 * i:04d}>",
                                                                         f"<patch_index_{33 * i + 33:04d}>"]
    tokens.append("</object>")

    def fake_ground(model, processor, images, prompts, max_new_tokens=128, **kwargs):
        return [parse_generation(prompts + "".join(tokens[:max_new_tokens]))]

    return fake_ground


def test_find_boxes_has_room_for_many_boxes_and_refuses_a_cut_off_answer(tiny_model, drawn, monkeypatch) -> None:
    """24 new tokens cut an answer of 8 boxes off; its phrase was dropped, and [] read as "the model gave none"."""
    image = Image.open(drawn[0] / "a.png").convert("RGB")
    monkeypatch.setattr(helpers.course.solutions_more, "ground", _answer_with(8))
    assert find_boxes(*tiny_model, image, "the circles") == [patch_index_to_box(33 * i, 33 * i + 33) for i in range(8)]
    monkeypatch.setattr(helpers.course.solutions_more, "ground", _answer_with(30))  # 91 tokens
    with pytest.raises(ValueError, match=r"not well formed.*found the end of the text.*larger max_new_tokens than 64"):
        find_boxes(*tiny_model, image, "the circles")
    assert len(find_boxes(*tiny_model, image, "the circles", max_new_tokens=91)) == 30


def test_find_boxes_reads_the_phrase_as_the_tokenizer_spells_it(tiny_model, drawn, bundled) -> None:
    """The world's tokenizer has no "é": the answer names "the caf", which "the café" never equalled, so the
    model's box was lost."""
    scene = sample_scenes(1, seed=5)[0]
    (answer,) = helpers.grounding.model.ground(*bundled, [scene.image], comprehension_prompt("the café"),
                                               max_new_tokens=64)
    assert [e.phrase for e in answer.entities] == ["the caf"] and answer.entities[0].boxes
    assert find_boxes(*bundled, scene.image, "the café") == answer.entities[0].boxes
    image = Image.open(drawn[0] / "a.png").convert("RGB")
    with pytest.raises(ValueError, match="keeps nothing of the phrase"):
        find_boxes(*tiny_model, image, "日本")  # no token of the world's vocabulary: the phrase would be empty


def test_answers_of_later_chunks_are_scored_against_their_own_items(drawn, monkeypatch) -> None:
    """Work goes in chunks of CHUNK expressions: every chunk's answers must keep their place in ``items``
    (numbering them from 0 again scored the second chunk's answers against the first chunk's items)."""
    root, records = drawn
    items = load_refcoco(records)
    by_expression = {it.expression: it.box for it in items}
    sizes = []

    def fake_ground(model, processor, images, prompts, **kwargs):
        sizes.append(len(prompts))
        out = []
        for p in prompts:  # each answer gives exactly its own expression's box
            expr = p.split("<phrase> ")[1].split("</phrase>")[0]
            out.append(Grounding(expr, [Entity(expr, (0, len(expr)), [by_expression[expr]])]))
        return out

    monkeypatch.setattr(helpers.grounding.model, "ground", fake_ground)
    monkeypatch.setattr(helpers.grounding.evaluation, "CHUNK", 2)
    result = evaluate_comprehension(None, None, items, root)
    assert sizes == [2, 2]  # two chunks
    assert [r["expression"] for r in result.rows] == [it.expression for it in items]
    assert [r["truth"] for r in result.rows] == [it.box for it in items]
    assert [r["hit"] for r in result.rows] == [True] * 4
    assert (result.score.hits, result.score.total) == (4, 4)


def test_images_are_grounded_as_stored_not_turned_by_exif(tmp_path, monkeypatch) -> None:
    """Annotation boxes are measured on the stored pixels: a JPEG whose EXIF tag says "rotate 90°" must reach
    the model unturned (60 x 40, not 40 x 60), or every box lands in the wrong place."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    Image.new("RGB", (60, 40), "white").save(tmp_path / "turned.jpg", exif=exif)
    assert Image.open(tmp_path / "turned.jpg").getexif()[0x0112] == 6
    items = load_refcoco([record(file_name="turned.jpg", bbox=[10, 5, 20, 10], width=60, height=40)])
    seen = []

    def fake_ground(model, processor, images, prompts, **kwargs):
        seen.extend(im.size for im in images)
        return [parse_generation("<grounding><phrase> the red circle</phrase> is here") for _ in prompts]

    monkeypatch.setattr(helpers.grounding.model, "ground", fake_ground)
    evaluate_comprehension(None, None, items, tmp_path)
    assert seen == [(60, 40)]


def test_the_comprehension_prompt_makes_white_space_single_and_refuses_no_expression() -> None:
    assert comprehension_prompt_for("  the\tred  circle ") == "<grounding><phrase> the red circle</phrase>"
    with pytest.raises(ValueError, match=r"^phrase must be a non-empty str such as 'the red circle', got "):
        comprehension_prompt_for(" ")
    with pytest.raises(TypeError, match=r"^phrase must be a str such as 'the red circle', got NoneType: None"):
        comprehension_prompt_for(None)


@pytest.mark.parametrize("content, reason", [
    (b"", "is empty"),
    (b" \n", "is empty"),
    (b"\x89PNG\r\n\x1a\n", r"is not UTF-8 JSON text \(byte 0 is not UTF-8\)"),
    (b'{"images": ', "is not valid JSON: Expecting value: line 1 column 12 \\(char 11\\)"),
])
def test_refcoco_and_finetune_say_the_same_of_an_annotation_file_that_is_no_json(tmp_path, content, reason) -> None:
    """One reader (helpers.grounding.checks.read_json): RefCOCO said "is not valid JSON: Expecting value" of an empty
    file and "is not text (JSON)" of a binary one, where fine-tuning said "is empty" and "is not UTF-8 JSON text";
    each message ends with what the reader expected (for RefCOCO, that a refs file is a pickle named *.p)."""
    from helpers.grounding.finetune import FinetuneError, read_coco

    path = tmp_path / "annotations.json"
    path.write_bytes(content)
    start = rf"^annotation file {re.escape(repr(str(path)))} {reason}; expected "
    refs = r"an MDETR finetune_\*\.json, .*a pickle, named \*\.p: refs\(unc\)\.p …\)$"
    with pytest.raises(RefCocoFormatError, match=start + refs):
        load_refcoco(path)
    with pytest.raises(FinetuneError, match=start + "COCO detection JSON with 'images', 'annotations' and "
                                                    "'categories'$"):
        read_coco(path, tmp_path)
