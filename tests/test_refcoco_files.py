"""load_refcoco on RefCOCO files in the layouts they are distributed in, written here by hand.

* the refer toolkit's ``refs(unc).p``: a pickle as Python 2's ``cPickle.dump(refs, f, 2)`` writes it (byte
  strings for ``str``), with its ``instances.json``;
* MDETR's ``finetune_refcoco_testA.json`` (one ``images[]`` entry per expression, boxes in ``annotations[]``);
* and every bad input the loader must refuse clearly.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
from pathlib import Path

import pytest

import helpers.grounding.model
from helpers.grounding.refcoco import (RefCocoFormatError, evaluate_comprehension, load_refcoco, read_plain_pickle,
                                       split_matches)
from helpers.world.scenes import draw_scene
from helpers.grounding.tokens import parse_generation

IMAGE_A = "COCO_train2014_000000000042.jpg"
IMAGE_B = "COCO_train2014_000000000077.jpg"


def py2_pickle(obj) -> bytes:
    """Protocol 2 as Python 2 writes it: ``str`` as byte strings (SHORT_BINSTRING), no memo."""
    out = io.BytesIO()
    out.write(b"\x80\x02")

    def put(x) -> None:
        if isinstance(x, dict):
            out.write(b"}(")  # EMPTY_DICT, MARK
            for k, v in x.items():
                put(k)
                put(v)
            out.write(b"u")  # SETITEMS
        elif isinstance(x, list):
            out.write(b"](")  # EMPTY_LIST, MARK
            for v in x:
                put(v)
            out.write(b"e")  # APPENDS
        elif isinstance(x, bool) or x is None:
            out.write({True: b"\x88", False: b"\x89", None: b"N"}[x])
        elif isinstance(x, int):
            out.write(b"J" + struct.pack("<i", x))  # BININT
        elif isinstance(x, float):
            out.write(b"G" + struct.pack(">d", x))  # BINFLOAT
        elif isinstance(x, str):
            data = x.encode("utf-8")
            assert len(data) < 256
            out.write(b"U" + bytes([len(data)]) + data)  # SHORT_BINSTRING: a Python 2 str
        else:
            raise TypeError(type(x))

    put(obj)
    out.write(b".")
    return out.getvalue()


def sentence(sent_id: int, text: str) -> dict:
    return {"tokens": text.split(), "raw": text.capitalize() + " ", "sent_id": sent_id, "sent": text}


#: Refs as the refer toolkit's pickles hold them (RefCOCO, split by UNC); file names carry the ann_id.
REFS = [
    {"sent_ids": [0, 1], "file_name": "COCO_train2014_000000000042_900.jpg", "ann_id": 900, "ref_id": 0,
     "image_id": 42, "split": "testA", "category_id": 1,
     "sentences": [sentence(0, "left red circle"), sentence(1, "red ball on the left")]},
    {"sent_ids": [2], "file_name": "COCO_train2014_000000000042_901.jpg", "ann_id": 901, "ref_id": 1,
     "image_id": 42, "split": "testB", "category_id": 2, "sentences": [sentence(2, "snowman")]},
    {"sent_ids": [3], "file_name": "COCO_train2014_000000000077_902.jpg", "ann_id": 902, "ref_id": 2,
     "image_id": 77, "split": "val", "category_id": 3, "sentences": [sentence(3, "blue square")]},
    {"sent_ids": [4], "file_name": "COCO_train2014_000000000077_903.jpg", "ann_id": 903, "ref_id": 3,
     "image_id": 77, "split": "train", "category_id": 3, "sentences": [sentence(4, "the other square")]},
]

INSTANCES = {
    "info": {"description": "hand-written fixture in the layout of the refer toolkit's instances.json"},
    "images": [
        {"license": 1, "file_name": IMAGE_A, "coco_url": "", "height": 100, "width": 200, "date_captured": "",
         "flickr_url": "", "id": 42},
        {"license": 1, "file_name": IMAGE_B, "coco_url": "", "height": 120, "width": 80, "date_captured": "",
         "flickr_url": "", "id": 77},
    ],
    "annotations": [
        {"segmentation": [[20.0, 20.0, 80.0, 20.0, 80.0, 80.0]], "area": 3600.0, "iscrowd": 0, "image_id": 42,
         "bbox": [20.0, 20.0, 60.0, 60.0], "category_id": 1, "id": 900},
        {"segmentation": [[120.0, 10.0, 180.0, 90.0]], "area": 4800.0, "iscrowd": 0, "image_id": 42,
         "bbox": [120.0, 10.0, 60.0, 80.0], "category_id": 2, "id": 901},
        {"segmentation": [[20.0, 30.0, 60.0, 90.0]], "area": 2400.0, "iscrowd": 0, "image_id": 77,
         "bbox": [20.0, 30.0, 40.0, 60.0], "category_id": 3, "id": 902},
        {"segmentation": [[0.0, 0.0, 10.0, 10.0]], "area": 100.0, "iscrowd": 0, "image_id": 77,
         "bbox": [0.0, 0.0, 10.0, 10.0], "category_id": 3, "id": 903},
    ],
    "categories": [{"supercategory": "shape", "id": 1, "name": "circle"},
                   {"supercategory": "shape", "id": 2, "name": "snowman"},
                   {"supercategory": "shape", "id": 3, "name": "square"}],
}


def mdetr(split: str = "testA") -> dict:
    """finetune_refcoco_<split>.json as MDETR's conversion writes it: one images[] entry per expression."""
    images, annotations = [], []
    for ref in REFS:
        if not split_matches(split, ref["split"]):
            continue
        ann = next(a for a in INSTANCES["annotations"] if a["id"] == ref["ann_id"])
        image = next(i for i in INSTANCES["images"] if i["id"] == ref["image_id"])
        for s in ref["sentences"]:
            n = len(images)
            images.append({"file_name": image["file_name"], "height": image["height"], "width": image["width"],
                           "id": n, "original_id": ref["image_id"], "caption": s["sent"], "dataset_name": "refcoco",
                           "tokens_negative": [[0, len(s["sent"])]], "tokens_positive_eval": [[[0, len(s["sent"])]]]})
            annotations.append({"area": ann["area"], "iscrowd": 0, "image_id": n, "category_id": ann["category_id"],
                                "id": n, "bbox": ann["bbox"], "original_id": ref["ann_id"],
                                "tokens_positive": [[0, len(s["sent"])]]})
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations,
            "categories": INSTANCES["categories"]}


@pytest.fixture()
def refer(tmp_path) -> Path:
    """refcoco/refs(unc).p and refcoco/instances.json, and the two images under train2014/."""
    folder = tmp_path / "refcoco"
    folder.mkdir()
    (folder / "refs(unc).p").write_bytes(py2_pickle(REFS))
    (folder / "instances.json").write_text(json.dumps(INSTANCES))
    images = tmp_path / "train2014"
    images.mkdir()
    draw_scene([("red", "circle", (0.1, 0.2, 0.4, 0.8)), (None, "snowman", (0.6, 0.1, 0.9, 0.9))],
               size=(200, 100)).image.save(images / IMAGE_A)
    draw_scene([("blue", "square", (0.25, 0.25, 0.75, 0.75))], size=(80, 120)).image.save(images / IMAGE_B)
    return tmp_path


# --------------------------------------------------------------------------------------------- refer toolkit


def test_the_fixture_is_a_python2_style_pickle_that_plain_pickle_reads_too(refer) -> None:
    data = (refer / "refcoco" / "refs(unc).p").read_bytes()
    assert data[:2] == b"\x80\x02" and b"U\x06ref_id" in data  # byte strings, as Python 2 writes str
    assert pickle.loads(data) == REFS  # what the refer toolkit itself gets back
    assert read_plain_pickle(refer / "refcoco" / "refs(unc).p") == REFS


def test_refer_pickle_with_instances(refer) -> None:
    items = load_refcoco(refer / "refcoco" / "refs(unc).p", instances=refer / "refcoco" / "instances.json")
    assert [it.expression for it in items] == ["left red circle", "red ball on the left", "snowman", "blue square",
                                               "the other square"]
    first = items[0]
    assert first.file_name == IMAGE_A  # the real image, not the ref's COCO_train2014_000000000042_900.jpg
    assert (first.width, first.height) == (200, 100)
    assert first.box == pytest.approx((0.1, 0.2, 0.4, 0.8))  # [20, 20, 60, 60] of a 200 x 100 image
    assert (first.ref_id, first.image_id, first.ann_id, first.sent_id, first.split) == (0, 42, 900, 0, "testA")
    assert items[1].sent_id == 1 and items[1].box == first.box
    assert items[3].box == pytest.approx((0.25, 0.25, 0.75, 0.75))
    # instances may be given already loaded, and the refs too
    again = load_refcoco(REFS, instances=INSTANCES)
    assert again == items


@pytest.mark.parametrize("split, expressions", [
    ("testA", ["left red circle", "red ball on the left"]),
    ("testB", ["snowman"]),
    ("test", ["left red circle", "red ball on the left", "snowman"]),  # every test split
    ("val", ["blue square"]),
    ("train", ["the other square"]),
    (None, ["left red circle", "red ball on the left", "snowman", "blue square", "the other square"]),
])
def test_refer_split_rules(refer, split, expressions) -> None:
    items = load_refcoco(refer / "refcoco" / "refs(unc).p", instances=refer / "refcoco" / "instances.json",
                         split=split)
    assert [it.expression for it in items] == expressions


def test_split_matches_the_refer_toolkit() -> None:
    assert split_matches("testA", "testAB") and split_matches("testB", "testAB")
    assert not split_matches("testC", "testAB")
    assert split_matches("test", "testB") and split_matches("test", "test") and not split_matches("test", "val")
    assert split_matches("testAB", "testAB") and not split_matches("testAB", "testA")
    assert not split_matches("val", "valid") and not split_matches("train", None)


def test_an_unknown_split_or_an_empty_one_is_an_error(refer) -> None:
    refs, instances = refer / "refcoco" / "refs(unc).p", refer / "refcoco" / "instances.json"
    with pytest.raises(RefCocoFormatError, match=r"unknown split 'validation': expected one of train, val, test"):
        load_refcoco(refs, instances=instances, split="validation")
    with pytest.raises(RefCocoFormatError, match=r"refs\(unc\).p: no expression is in split 'testC'; the splits "
                                                 r"present are \['testA', 'testB', 'train', 'val'\]"):
        load_refcoco(refs, instances=instances, split="testC")


def test_a_refs_pickle_needs_its_instances(refer) -> None:
    with pytest.raises(RefCocoFormatError, match=r"refs\(unc\).p is a refer toolkit refs file.*instances="):
        load_refcoco(refer / "refcoco" / "refs(unc).p")
    with pytest.raises(RefCocoFormatError, match="looks like COCO's instances.json.*instances="):
        load_refcoco(refer / "refcoco" / "instances.json")
    with pytest.raises(RefCocoFormatError, match=r"instances= \(--instances\) goes with a refer toolkit refs pickle"):
        load_refcoco({"refs": []}, instances=INSTANCES)


def test_a_truncated_pickle_is_named(refer, tmp_path) -> None:
    data = (refer / "refcoco" / "refs(unc).p").read_bytes()
    cut = tmp_path / "refs(umd).p"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(RefCocoFormatError, match=r"refs\(umd\).p' is not a complete pickle"):
        load_refcoco(cut, instances=INSTANCES)


def test_a_pickle_holding_a_class_is_refused_and_runs_nothing(tmp_path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "refs(google).p"
    # the classic: a pickle that calls os.system when loaded (GLOBAL posix system, then REDUCE)
    evil.write_bytes(b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(RefCocoFormatError, match=r"refs\(google\).p' was refused: it refers to the Python object "
                                                 r"posix.system; only plain lists"):
        load_refcoco(evil, instances=INSTANCES)
    assert not marker.exists()
    # a harmless class is refused just the same: nothing but plain data is read
    (tmp_path / "set.p").write_bytes(pickle.dumps([{"ref_id": 1, "tags": {1, 2}}], protocol=2))
    with pytest.raises(RefCocoFormatError, match=r"set.p' was refused: it refers to the Python object __builtin__.set"):
        read_plain_pickle(tmp_path / "set.p")


def test_a_json_file_that_is_a_pickle_is_read_as_one(refer, tmp_path) -> None:
    renamed = tmp_path / "refs.json"  # a binary pickle under another name is recognized by its first byte
    renamed.write_bytes((refer / "refcoco" / "refs(unc).p").read_bytes())
    assert len(load_refcoco(renamed, instances=INSTANCES)) == 5


def test_an_annotation_missing_from_instances_is_named(refer) -> None:
    instances = json.loads(json.dumps(INSTANCES))
    instances["annotations"] = [a for a in instances["annotations"] if a["id"] != 901]
    with pytest.raises(RefCocoFormatError, match=r"refs\(unc\).p: ref 1 \(ref_id 1\): its annotation ann_id 901 is "
                                                 r"not in instances"):
        load_refcoco(refer / "refcoco" / "refs(unc).p", instances=instances)
    # outside the chosen split it does not matter
    assert len(load_refcoco(refer / "refcoco" / "refs(unc).p", instances=instances, split="val")) == 1


def test_more_bad_refer_inputs(refer) -> None:
    refs = json.loads(json.dumps(REFS))
    refs[2]["image_id"] = 42  # annotation 902 belongs to image 77
    with pytest.raises(RefCocoFormatError, match="ref 2 \\(ref_id 2\\): annotation 902 belongs to image 77"):
        load_refcoco(refs, instances=INSTANCES)
    instances = json.loads(json.dumps(INSTANCES))
    instances["annotations"][2]["bbox"] = [60.0, 30.0, 40.0, 60.0]  # ends at x = 100 in an 80-pixel-wide image
    with pytest.raises(RefCocoFormatError, match=r"ref 2 \(ref_id 2\), annotation 902: 'bbox' .* reaches beyond the "
                                                 r"image of 80 x 120 pixels"):
        load_refcoco(REFS, instances=instances)
    with pytest.raises(RefCocoFormatError, match="ref 0 \\(ref_id 0\\): needs 'ann_id'"):
        load_refcoco([{k: v for k, v in REFS[0].items() if k != "ann_id"}], instances=INSTANCES)
    with pytest.raises(RefCocoFormatError, match="expected the refer toolkit's instances.json"):
        load_refcoco(REFS, instances={"images": []})
    with pytest.raises(RefCocoFormatError, match="instances file .* does not exist"):
        load_refcoco(REFS, instances=refer / "nope.json")


# --------------------------------------------------------------------------------------------- MDETR


def test_mdetr_file(tmp_path) -> None:
    path = tmp_path / "finetune_refcoco_testA.json"
    path.write_text(json.dumps(mdetr("testA")))
    items = load_refcoco(path)
    assert [it.expression for it in items] == ["left red circle", "red ball on the left"]
    assert items[0].file_name == IMAGE_A and (items[0].width, items[0].height) == (200, 100)
    assert items[0].box == pytest.approx((0.1, 0.2, 0.4, 0.8))
    assert (items[0].split, items[0].image_id, items[0].ann_id) == ("testA", 42, 900)
    assert load_refcoco(path, split="testA") == items
    with pytest.raises(RefCocoFormatError, match="finetune_refcoco_testA.json holds the split 'testA', not 'val'"):
        load_refcoco(path, split="val")
    other = tmp_path / "refcoco_a.json"
    other.write_text(path.read_text())
    assert len(load_refcoco(other)) == 2
    with pytest.raises(RefCocoFormatError, match="does not say which"):
        load_refcoco(other, split="testA")


def test_an_mdetr_file_mixing_data_sets_is_refused(tmp_path) -> None:
    """MDETR's final_refexp files hold RefCOCO, RefCOCO+ and RefCOCOg together; the paper scores each alone."""
    data = mdetr("testA")
    data["images"][1]["dataset_name"] = "refcocog"
    path = tmp_path / "final_refexp_val.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RefCocoFormatError, match=r"final_refexp_val.json holds the expressions of refcoco, refcocog "
                                                 r"together .* finetune_<data set>_<split>.json"):
        load_refcoco(path)
    data["images"][1]["dataset_name"] = "refcoco"
    path.write_text(json.dumps(data))
    assert len(load_refcoco(path)) == len(data["images"])


def test_bad_mdetr_files(tmp_path) -> None:
    data = mdetr("test")
    data["annotations"].pop(1)
    with pytest.raises(RefCocoFormatError, match=r"images\[1\] \(id 1\): no annotation has image_id 1"):
        load_refcoco(data)
    data = mdetr("test")
    data["annotations"].append(dict(data["annotations"][0], id=99))
    with pytest.raises(RefCocoFormatError, match="a second box for expression"):
        load_refcoco(data)
    data = mdetr("test")
    data["images"][2]["caption"] = " "
    with pytest.raises(RefCocoFormatError, match=r"images\[2\] \(id 2\): 'caption'"):
        load_refcoco(data)
    data = mdetr("test")
    data["annotations"][0]["bbox"] = [190.0, 20.0, 60.0, 60.0]
    with pytest.raises(RefCocoFormatError, match="reaches beyond the image of 200 x 100"):
        load_refcoco(data)


# --------------------------------------------------------------------------------------------- scoring


def test_evaluation_on_the_refer_files_scores_by_the_expressions_own_boxes(refer, monkeypatch) -> None:
    items = load_refcoco(refer / "refcoco" / "refs(unc).p", instances=refer / "refcoco" / "instances.json",
                         split="test")
    circle = "<object><patch_index_0195><patch_index_0812></object>"  # about (0.1, 0.2, 0.4, 0.8)
    snowman = "<object><patch_index_0115><patch_index_0955></object>"  # about (0.6, 0.1, 0.9, 0.9)
    answers = [
        f"<grounding><phrase> left red circle</phrase>{circle}",
        f"<grounding><phrase> red ball on the left</phrase>{snowman}",  # wrong place
        f"<grounding><phrase> a snowman</phrase>{snowman}",  # right place, other phrase: a miss
    ]

    def fake_ground(model, processor, images, prompts, **kwargs):
        assert [im.size for im in images] == [(200, 100)] * 3
        return [parse_generation(a) for a in answers]

    monkeypatch.setattr(helpers.grounding.model, "ground", fake_ground)
    result = evaluate_comprehension(None, None, items, refer / "train2014")
    assert [r["hit"] for r in result.rows] == [True, False, False]
    assert [r["ann_id"] for r in result.rows] == [900, 900, 901]
    assert [r["split"] for r in result.rows] == ["testA", "testA", "testB"]


# --------------------------------------------------------------------------------------------- writing


def test_scenes_written_in_the_refer_and_mdetr_layouts_load_back(tmp_path) -> None:
    from helpers.grounding.refcoco import scenes_to_refcoco, write_mdetr_file, write_refer_files
    from helpers.world.scenes import sample_scenes

    records = scenes_to_refcoco(sample_scenes(3, seed=5), tmp_path / "train2014")
    refs, instances = write_refer_files(records, tmp_path / "refcoco")
    assert refs.name == "refs(unc).p" and refs.read_bytes()[:2] == b"\x80\x02"
    from_refer = load_refcoco(refs, instances=instances)
    from_records = load_refcoco(records)
    from_mdetr = load_refcoco(write_mdetr_file(records, tmp_path / "finetune_refcoco_val.json"))
    assert len(from_refer) == len(from_records) == len(from_mdetr) == len(records)
    for a, b, c in zip(from_refer, from_records, from_mdetr):
        assert a.expression == b.expression == c.expression and a.file_name == b.file_name == c.file_name
        assert a.box == pytest.approx(b.box) and c.box == pytest.approx(b.box)
        assert a.split == c.split == "val" and a.ann_id == c.ann_id
    assert pickle.loads(refs.read_bytes())[0]["file_name"] == "scene_000_1000.png"  # the toolkit's suffixed name
