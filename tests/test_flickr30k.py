"""helpers.grounding.flickr30k on two hand-written Flickr30k Entities images (Sentences/*.txt + Annotations/*.xml in the
data set's layout), its bad inputs, and the phrase-grounding score on hand-made answers."""

from __future__ import annotations

from pathlib import Path

import pytest

import helpers.grounding.model
from helpers.grounding.flickr30k import (
    SKIP_NOT_ANNOTATED,
    SKIP_NOT_VISIBLE,
    SKIP_SCENE,
    Flickr30kFormatError,
    PhraseItem,
    evaluate_phrase_grounding,
    load_flickr30k_entities,
    parse_sentence,
    read_annotation,
)
from helpers.world.scenes import draw_scene
from helpers.grounding.tokens import parse_generation

SENTENCES = {
    "1000092795": (
        "[/EN#18/people Two young guys] with [/EN#19/bodyparts shaggy hair] look at [/EN#20/bodyparts their hands] "
        "while hanging out in [/EN#21/scene the yard] .\n"
        "[/EN#18/people Two young , White males] are outside near [/EN#22/other many bushes] .\n"
        "[/EN#23/people/other A man in a blue shirt] stands in [/EN#0/notvisual front] of a wall .\n"
    ),
    "10002456": (
        "[/EN#1/people Several men] in [/EN#2/clothing hard hats] are operating [/EN#3/other a giant pulley system] .\n"
        "[/EN#1/people Workers] look down from [/EN#4/scene up above] on [/EN#3/other a piece of equipment] .\n"
    ),
}

ANNOTATIONS = {
    "1000092795": """<annotation>
  <folder>flickr30k_images</folder>
  <filename>1000092795.jpg</filename>
  <size><width>200</width><height>100</height><depth>3</depth></size>
  <object><name>18</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>60</xmax><ymax>100</ymax></bndbox></object>
  <object><name>18</name><bndbox><xmin>120</xmin><ymin>10</ymin><xmax>180</xmax><ymax>90</ymax></bndbox></object>
  <object><name>19</name><bndbox><xmin>20</xmin><ymin>10</ymin><xmax>40</xmax><ymax>30</ymax></bndbox></object>
  <object><name>20</name><nobndbox>1</nobndbox><scene>0</scene></object>
  <object><name>21</name><name>22</name><nobndbox>0</nobndbox><scene>1</scene></object>
  <object><name>23</name><name>18</name><bndbox><xmin>70</xmin><ymin>0</ymin><xmax>110</xmax><ymax>100</ymax></bndbox></object>
</annotation>
""",
    "10002456": """<annotation>
  <filename>10002456.jpg</filename>
  <size><width>80</width><height>120</height><depth>3</depth></size>
  <object><name>1</name><bndbox><xmin>20</xmin><ymin>30</ymin><xmax>60</xmax><ymax>90</ymax></bndbox></object>
  <object><name>2</name><bndbox><xmin>20</xmin><ymin>30</ymin><xmax>60</xmax><ymax>45</ymax></bndbox></object>
  <object><name>3</name><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>80</xmax><ymax>30</ymax></bndbox></object>
  <object><name>4</name><scene>1</scene><nobndbox>0</nobndbox></object>
</annotation>
""",
}


@pytest.fixture()
def flickr(tmp_path) -> Path:
    """flickr30k_entities/{Sentences,Annotations,test.txt,val.txt} and flickr30k-images/ with drawn images."""
    root = tmp_path / "flickr30k_entities"
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for image_id in SENTENCES:
        (root / "Sentences" / f"{image_id}.txt").write_text(SENTENCES[image_id], encoding="utf-8")
        (root / "Annotations" / f"{image_id}.xml").write_text(ANNOTATIONS[image_id], encoding="utf-8")
    (root / "test.txt").write_text("10002456\n")
    (root / "val.txt").write_text("1000092795\n10002456\n")
    images = tmp_path / "flickr30k-images"
    images.mkdir()
    draw_scene([(None, "snowman", (0.05, 0.1, 0.3, 1.0))], size=(200, 100)).image.save(images / "1000092795.jpg")
    draw_scene([("blue", "square", (0.25, 0.25, 0.75, 0.75))], size=(80, 120)).image.save(images / "10002456.jpg")
    return tmp_path


def test_parse_sentence() -> None:
    sentence, phrases = parse_sentence(SENTENCES["1000092795"].splitlines()[2], "x")
    assert sentence == "A man in a blue shirt stands in front of a wall ."
    assert phrases == [
        {"phrase": "A man in a blue shirt", "first_word": 0, "entity_id": "23", "types": ("people", "other")},
        {"phrase": "front", "first_word": 8, "entity_id": "0", "types": ("notvisual",)},
    ]


def test_read_annotation_keeps_every_box_of_an_entity_and_the_boxless_ones(flickr) -> None:
    ann = read_annotation(flickr / "flickr30k_entities" / "Annotations" / "1000092795.xml")
    assert (ann["width"], ann["height"]) == (200, 100)
    assert ann["boxes"] == {"18": [(10, 10, 60, 100), (120, 10, 180, 90), (70, 0, 110, 100)],
                            "19": [(20, 10, 40, 30)], "23": [(70, 0, 110, 100)]}
    assert ann["nobox"] == {"20"} and ann["scene"] == {"21", "22"}


def test_load_all_images(flickr) -> None:
    data = load_flickr30k_entities(flickr / "flickr30k_entities")
    assert (data.images, data.sentences) == (2, 5)
    phrases = [(it.image_id, it.sentence_index, it.phrase) for it in data.items]
    assert phrases == [  # image ids in the order of the file names
        ("1000092795", 0, "Two young guys"), ("1000092795", 0, "shaggy hair"),
        ("1000092795", 1, "Two young , White males"),
        ("1000092795", 2, "A man in a blue shirt"),
        ("10002456", 0, "Several men"), ("10002456", 0, "hard hats"), ("10002456", 0, "a giant pulley system"),
        ("10002456", 1, "Workers"), ("10002456", 1, "a piece of equipment"),
    ]
    # skipped, counted by reason: "their hands" (not visible), "the yard", "many bushes", "up above" (scene),
    # "front" (entity 0, not in the annotation file)
    assert dict(data.skipped) == {SKIP_NOT_VISIBLE: 1, SKIP_SCENE: 3, SKIP_NOT_ANNOTATED: 1}
    assert data.summary() == ("2 images, 5 captions, 9 phrases with boxes; skipped phrases: 1 no box: not in the "
                              "annotation file, 1 no box: not visible, 3 no box: the whole scene")
    guys = data.items[0]
    # entity 18 has three boxes (one shared with entity 23); they stay separate (not merged)
    assert [list(b) for b in guys.boxes] == [pytest.approx(b) for b in
                                             ([0.05, 0.1, 0.3, 1.0], [0.6, 0.1, 0.9, 0.9], [0.35, 0.0, 0.55, 1.0])]
    assert (guys.width, guys.height, guys.types, guys.entity_id) == (200, 100, ("people",), "18")
    assert guys.file_name == "1000092795.jpg"
    hair = data.items[1]
    assert hair.prefix == "Two young guys with"
    assert hair.prompt == "<grounding> Two young guys with<phrase> shaggy hair</phrase>"
    assert guys.prompt == "<grounding><phrase> Two young guys</phrase>"
    assert data.items[3].types == ("people", "other")


def test_splits_and_image_ids(flickr) -> None:
    root = flickr / "flickr30k_entities"
    assert {it.image_id for it in load_flickr30k_entities(root, split="test").items} == {"10002456"}
    assert len(load_flickr30k_entities(root, split="val")) == 9
    assert len(load_flickr30k_entities(root, image_ids=["1000092795"])) == 4
    with pytest.raises(Flickr30kFormatError, match="split file .*train.txt' does not exist"):
        load_flickr30k_entities(root, split="train")
    with pytest.raises(Flickr30kFormatError, match="unknown split 'testA'"):
        load_flickr30k_entities(root, split="testA")
    with pytest.raises(ValueError, match="not both"):
        load_flickr30k_entities(root, split="test", image_ids=["1"])
    with pytest.raises(Flickr30kFormatError, match=r"sentence file .*Sentences/123.txt' does not exist"):
        load_flickr30k_entities(root, image_ids=["123"])
    with pytest.raises(Flickr30kFormatError, match="should hold the folders Sentences/ and Annotations/"):
        load_flickr30k_entities(flickr)


@pytest.mark.parametrize("ids", ["1000092795", b"1000092795", 1000092795])
def test_image_ids_must_be_a_list(flickr, ids) -> None:
    """A single id as a str was read character by character: images '1', '0', '0' …"""
    with pytest.raises(TypeError, match=r"^image_ids must be a list of image ids, e\.g\. \['1000092795'\], got "
                                        rf"{type(ids).__name__}: "):
        load_flickr30k_entities(flickr / "flickr30k_entities", image_ids=ids)
    assert len(load_flickr30k_entities(flickr / "flickr30k_entities", image_ids=("1000092795",))) == 4


def test_an_unreadable_image_is_refused_before_any_answer(flickr, monkeypatch) -> None:
    """The same check as RefCOCO's (evaluation.check_images_exist): an image that is no image stops the run before
    the first phrase is grounded, not when its chunk comes."""
    data = load_flickr30k_entities(flickr / "flickr30k_entities", split="val")
    (flickr / "flickr30k-images" / "10002456.jpg").write_bytes(b"")

    def no_ground(*args, **kwargs):
        raise AssertionError("ground() was called: the images should have been checked before")

    monkeypatch.setattr(helpers.grounding.model, "ground", no_ground)
    with pytest.raises(ValueError, match=r"^1 of the 2 image\(s\) the annotations name cannot be read: file "
                                         r".*10002456\.jpg' is empty \(0 bytes\), expected an image file$"):
        evaluate_phrase_grounding(None, None, data, flickr / "flickr30k-images")


def _write(flickr: Path, image_id: str, sentences: str | None = None, xml: str | None = None) -> Path:
    root = flickr / "flickr30k_entities"
    if sentences is not None:
        (root / "Sentences" / f"{image_id}.txt").write_text(sentences)
    if xml is not None:
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
    return root


@pytest.mark.parametrize("sentences, message", [
    ("[/EN#1/people Several men in hats .\n", r"10002456.txt: line 1: the phrase of entity 1 is never closed"),
    ("A [man] walks .\n", r"10002456.txt: line 1: '\[man\]' should open a phrase as \[/EN#<entity id>/<type>"),
    ("[/EN#people Workers] .\n", r"line 1: '\[/EN#people' should open a phrase"),
    ("ok .\n[/EN#1/people ] .\n", r"line 2: the phrase of entity 1 has no words"),
])
def test_bad_sentence_files_name_file_and_line(flickr, sentences, message) -> None:
    root = _write(flickr, "10002456", sentences=sentences)
    with pytest.raises(Flickr30kFormatError, match=message):
        load_flickr30k_entities(root)


def test_a_file_that_is_not_utf8_is_named(flickr) -> None:
    root = _write(flickr, "10002456")
    (root / "Sentences" / "10002456.txt").write_bytes("A man in a caf\u00e9 .\n".encode("latin-1"))
    with pytest.raises(Flickr30kFormatError, match=r"sentence file .*10002456.txt' is not UTF-8 text \(byte 14\)"):
        load_flickr30k_entities(root)
    (root / "Sentences" / "10002456.txt").write_text("A man in a caf\u00e9 .\n", encoding="utf-8")
    (root / "test.txt").write_bytes(b"10002456\n\xff\n")
    with pytest.raises(Flickr30kFormatError, match=r"split file .*test.txt' is not UTF-8 text"):
        load_flickr30k_entities(root, split="test")


XML = "<annotation><size><width>80</width><height>120</height></size>{}</annotation>"


@pytest.mark.parametrize("xml, message", [
    ("<annotation><object>", "10002456.xml' is not valid XML"),
    ("<annotation><object><name>1</name></object></annotation>", r"10002456.xml: has no <size>"),
    (XML.format("<object><name>1</name><bndbox><xmin>20</xmin><ymin>30</ymin><xmax>95</xmax><ymax>90</ymax>"
                "</bndbox></object>"),
     r"10002456.xml: <object> 0 \(entity 1\): the box \(20, 30, 95, 90\) reaches beyond the image of 80 x 120"),
    (XML.format("<object><name>1</name><bndbox><xmin>60</xmin><ymin>30</ymin><xmax>20</xmax><ymax>90</ymax>"
                "</bndbox></object>"), r"<object> 0 \(entity 1\): the box \(60, 30, 20, 90\) has no area"),
    (XML.format("<object><name>1</name><bndbox><xmin>80</xmin><ymin>30</ymin><xmax>81</xmax><ymax>90</ymax>"
                "</bndbox></object>"),  # within the tolerance, but nothing of it is inside the image
     r"<object> 0 \(entity 1\): the box \(80, 30, 81, 90\) lies outside the image of 80 x 120 pixels"),
    # the same two checks on y (every case above fails on x)
    (XML.format("<object><name>1</name><bndbox><xmin>20</xmin><ymin>30</ymin><xmax>60</xmax><ymax>125</ymax>"
                "</bndbox></object>"),
     r"<object> 0 \(entity 1\): the box \(20, 30, 60, 125\) reaches beyond the image of 80 x 120"),
    (XML.format("<object><name>1</name><bndbox><xmin>20</xmin><ymin>120</ymin><xmax>60</xmax><ymax>121</ymax>"
                "</bndbox></object>"),
     r"<object> 0 \(entity 1\): the box \(20, 120, 60, 121\) lies outside the image of 80 x 120 pixels"),
    (XML.format("<object><name>1</name><bndbox><xmin>a</xmin></bndbox></object>"),
     r"<object> 0 \(entity 1\): <xmin> must hold an integer, got 'a'"),
    (XML.format("<object><bndbox/></object>"), r"<object> 0 has no <name>"),
])
def test_bad_annotation_files_name_file_and_entity(flickr, xml, message) -> None:
    root = _write(flickr, "10002456", xml=xml)
    with pytest.raises(Flickr30kFormatError, match=message):
        load_flickr30k_entities(root)


def test_an_overshoot_within_the_tolerance_is_clipped_to_the_image(flickr) -> None:
    """A box a pixel past the right and bottom edges (81 x 121 on 80 x 120) loads, clipped to the image on x and
    on y, each by its own side."""
    root = _write(flickr, "10002456", xml=XML.format("<object><name>1</name><bndbox><xmin>20</xmin><ymin>30</ymin>"
                                                     "<xmax>81</xmax><ymax>121</ymax></bndbox></object>"))
    assert read_annotation(root / "Annotations" / "10002456.xml")["boxes"] == {"1": [(20, 30, 81, 121)]}
    items = load_flickr30k_entities(root, image_ids=["10002456"]).items
    assert [it.phrase for it in items] == ["Several men", "Workers"]
    for it in items:
        assert it.boxes == (pytest.approx((0.25, 0.25, 1.0, 1.0)),)


def test_a_missing_annotation_file_is_named(flickr) -> None:
    root = flickr / "flickr30k_entities"
    (root / "Annotations" / "10002456.xml").unlink()
    with pytest.raises(Flickr30kFormatError, match=r"annotation file .*10002456.xml' does not exist"):
        load_flickr30k_entities(root)
    assert read_annotation(root / "Annotations" / "1000092795.xml")["scene"] == {"21", "22"}


# --------------------------------------------------------------------------------------------- scoring


def test_phrase_grounding_scored_as_the_authors_score(flickr, monkeypatch) -> None:
    data = load_flickr30k_entities(flickr / "flickr30k_entities", image_ids=["1000092795"])
    assert [it.phrase for it in data.items] == ["Two young guys", "shaggy hair", "Two young , White males",
                                                "A man in a blue shirt"]
    answers = {
        # the first box is the second true box of entity 18 (boxes are not merged: any true box counts)
        "Two young guys": "<phrase> Two young guys</phrase><object><patch_index_0115><patch_index_0924></object>",
        # a box in the right place, given for another phrase: a miss
        "shaggy hair": "<phrase> hair</phrase><object><patch_index_0099><patch_index_0300></object>",
        # a wrong first box, a right second one: a miss at 1, a hit for the upper bound
        "Two young , White males": "<phrase> Two young , White males</phrase><object><patch_index_0000>"
                                   "<patch_index_0033></delimiter_of_multi_objects/><patch_index_0097>"
                                   "<patch_index_1001></object>",
        # no box
        "A man in a blue shirt": "<phrase> A man in a blue shirt</phrase> stands",
    }
    seen = {}

    def fake_ground(model, processor, images, prompts, **kwargs):
        seen["prompts"], seen["kwargs"] = prompts, kwargs
        return [parse_generation(p.split("<phrase>")[0] + answers[p.split("<phrase> ")[1].split("</phrase>")[0]])
                for p in prompts]

    monkeypatch.setattr(helpers.grounding.model, "ground", fake_ground)
    result = evaluate_phrase_grounding(None, None, data, flickr / "flickr30k-images")
    assert seen["prompts"][1] == "<grounding> Two young guys with<phrase> shaggy hair</phrase>"
    assert seen["kwargs"]["decoding"] == helpers.grounding.model.AUTHORS_DECODING
    assert [r["hit"] for r in result.rows] == [True, False, False, False]
    assert [r["hit_any"] for r in result.rows] == [True, False, True, False]
    assert (result.scores.accuracy_at_1.hits, result.scores.upper_bound.hits, result.scores.accuracy_at_1.total) \
        == (1, 2, 4)
    assert {k: (s.accuracy_at_1.hits, s.accuracy_at_1.total) for k, s in result.by_type.items()} == \
        {"people": (1, 3), "bodyparts": (0, 1), "other": (0, 1)}
    assert result.skipped == data.skipped
    assert result.rows[0]["types"] == ["people"] and result.rows[0]["entity_id"] == "18"
    assert result.table().splitlines()[2] == "| all | 25.0 % (1/4) | 50.0 % (2/4) |"
    assert str(result) == ("R@1 (accuracy@1) at IoU ≥ 0.5: 25.0 % (1/4); "
                           "upper bound (any box of the phrase): 50.0 % (2/4)")


def test_argument_checks(flickr) -> None:
    with pytest.raises(ValueError, match="items is empty: load annotations with load_flickr30k_entities"):
        evaluate_phrase_grounding(None, None, [], flickr)
    with pytest.raises(ValueError, match=r"items\[0\] must be a PhraseItem"):
        evaluate_phrase_grounding(None, None, ["x"], flickr)
    assert PhraseItem.__dataclass_params__.frozen


def test_with_a_real_model_the_images_are_read_and_every_phrase_gets_a_row(tiny_model, flickr) -> None:
    data = load_flickr30k_entities(flickr / "flickr30k_entities", split="test")
    result = evaluate_phrase_grounding(*tiny_model, data, flickr / "flickr30k-images", max_new_tokens=6, batch_size=4)
    assert len(result.rows) == len(data.items) == result.scores.accuracy_at_1.total == 5
    for item, row in zip(data.items, result.rows):
        assert row["caption"].startswith(item.prefix)  # the caption so far opens the answer
        assert row["hit"] <= row["hit_any"]
    (flickr / "flickr30k-images" / "10002456.jpg").unlink()
    with pytest.raises(ValueError, match="10002456.jpg"):
        evaluate_phrase_grounding(*tiny_model, data, flickr / "flickr30k-images", max_new_tokens=2)


def test_scenes_written_in_the_flickr30k_layout_load_back(tmp_path) -> None:
    from helpers.grounding.flickr30k import scenes_to_flickr30k
    from helpers.world.scenes import sample_scenes

    scenes = sample_scenes(3, seed=5)
    ids = scenes_to_flickr30k(scenes, tmp_path / "f30k", tmp_path / "images")
    data = load_flickr30k_entities(tmp_path / "f30k", split="test")
    groups = sum(len(s.groups) for s in scenes)
    assert (data.images, data.sentences, len(data.items)) == (3, 6, groups + 3)
    assert dict(data.skipped) == {SKIP_SCENE: 3}
    first = [it for it in data.items if it.image_id == ids[0] and it.sentence_index == 0]
    assert [it.phrase for it in first] == [g[0].phrase for g in scenes[0].groups]
    for it, group in zip(first, scenes[0].groups):
        assert len(it.boxes) == len(group)
        for box, obj in zip(it.boxes, group):
            assert box == pytest.approx(obj.box, abs=1 / min(scenes[0].image.size))
    assert (tmp_path / "images" / f"{ids[0]}.jpg").is_file()
