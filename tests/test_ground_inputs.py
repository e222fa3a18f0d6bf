"""helpers.grounding.model.ground: results that do not depend on batching, and a battery of bad inputs.

Every bad input must raise a ValueError or TypeError (or a documented subclass) that says what was
expected and what was received, before any generation starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from helpers.grounding.boxes import check_normalized, to_normalized
from helpers.grounding.images import ImageLoadError, load_image, to_rgb
from helpers.grounding.model import AUTHORS_DECODING, GREEDY, Decoding, ground, load
from helpers.world.scenes import sample_scenes
from helpers.grounding.tokens import object_tokens, parse_generation
from helpers.grounding.prompts import CAPTION_PROMPT, DETAIL_PROMPT, comprehension_prompt, qa_prompt

QA = qa_prompt("object")  # one <phrase>, its user box goes after it
BOX = (0.1, 0.2, 0.5, 0.6)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load(tiny_model_dir, device="cpu", verbose=False)


class SpyProcessor:
    """Passes everything to the real processor and keeps the arguments of each call that gets images."""

    def __init__(self, processor: Any) -> None:
        self._processor = processor
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        if kwargs.get("images") is not None:
            self.calls.append(kwargs)
        return self._processor(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)


@pytest.fixture()
def spy(loaded) -> tuple[Any, SpyProcessor]:
    model, processor = loaded
    return model, SpyProcessor(processor)


def scene_images(n: int, seed: int = 3) -> list[Image.Image]:
    return [s.image for s in sample_scenes(n, seed=seed)]


def after_image(results) -> list[str]:
    return [g.raw.rpartition("</image>")[2] for g in results]


# --------------------------------------------------------------------------------------------- batching


def test_one_prompt_for_all_gives_the_same_results_in_any_batch_size() -> None:
    """On the bundled model, whose captions differ from scene to scene (the tiny random model writes the same
    text for every image), so that an image given to the wrong row of a batch would show."""
    from helpers.course.paths import bundled_model_dir

    model, processor = load(bundled_model_dir(), device="cpu", verbose=False)
    images = scene_images(4)
    runs = [after_image(ground(model, processor, images, CAPTION_PROMPT, max_new_tokens=32, batch_size=b,
                               progress=False)) for b in (1, 3, 4)]
    assert len(set(runs[0])) == 4, runs[0]  # four different captions
    assert runs[0] == runs[1] == runs[2]


def test_prompts_of_different_lengths_in_one_batch_give_what_each_gives_alone(loaded) -> None:
    """A caption prompt, a QA prompt with a user box and others, batched (left padding) and one by one."""
    model, processor = loaded
    images = scene_images(5)
    prompts = [CAPTION_PROMPT, QA, comprehension_prompt("the red circle"), DETAIL_PROMPT, qa_prompt("character")]
    bboxes = [None, [BOX], None, None, [(0.5, 0.5, 0.9, 0.95)]]
    runs = {b: after_image(ground(model, processor, images, prompts, bboxes=bboxes, max_new_tokens=10,
                                  batch_size=b, progress=False)) for b in (1, 3, 5)}
    for i, prompt in enumerate(prompts):
        alone = runs[1][i]
        assert alone.startswith(prompt.split("<phrase>")[0])
        assert runs[3][i] == alone, f"prompt {i} ({prompt!r}) in a batch of 3"
        assert runs[5][i] == alone, f"prompt {i} ({prompt!r}) in a batch of 5"


def test_the_user_box_reaches_the_prompt_as_location_tokens(loaded) -> None:
    model, processor = loaded
    (g,) = ground(model, processor, scene_images(1), QA, bboxes=[[BOX]], max_new_tokens=2, progress=False)
    assert "</phrase>" + object_tokens([BOX]) in g.raw


def test_padding_side_is_restored(loaded) -> None:
    model, processor = loaded
    processor.tokenizer.padding_side = "right"
    try:
        ground(model, processor, scene_images(2), [CAPTION_PROMPT, QA], bboxes=[None, [BOX]], max_new_tokens=2,
               progress=False)
        assert processor.tokenizer.padding_side == "right"
        with pytest.raises(ValueError):
            ground(model, processor, scene_images(1), QA, bboxes=[[(0.5, 0.5, 0.1, 0.1)]], progress=False)
        assert processor.tokenizer.padding_side == "right"
    finally:
        processor.tokenizer.padding_side = "left"


# --------------------------------------------------------------------------------------------- images


def test_no_images_gives_no_results(spy) -> None:
    model, processor = spy
    assert ground(model, processor, [], progress=False) == []
    assert processor.calls == []


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "I;16", "CMYK"])
def test_other_modes_reach_the_processor_as_rgb_like_load_image_makes_them(spy, mode: str) -> None:
    model, processor = spy
    rgba = Image.new("RGBA", (60, 36), (0, 0, 0, 0))  # transparent: load_image puts it on white
    ImageDraw.Draw(rgba).rectangle([30, 0, 59, 17], fill=(200, 40, 40, 255))
    image = {"RGBA": rgba, "LA": rgba.convert("LA")}.get(mode) or rgba.convert("RGB").convert(mode)
    (g,) = ground(model, processor, image, max_new_tokens=2, progress=False)
    assert g.raw.startswith("<image>")
    (seen,) = processor.calls[0]["images"]
    assert seen.mode == "RGB" and seen.size == image.size
    assert np.array_equal(np.asarray(seen), np.asarray(to_rgb(image)))
    if mode == "RGBA":
        assert seen.getpixel((0, 35)) == (255, 255, 255)  # not black, as a plain convert("RGB") would give
    assert image.mode == mode  # the caller's image is left alone


def test_a_path_is_loaded_with_load_image(spy, tmp_path: Path) -> None:
    model, processor = spy
    picture = scene_images(1)[0]
    path = tmp_path / "scene.png"
    picture.save(path)
    (from_path,) = ground(model, processor, str(path), max_new_tokens=3, progress=False)
    (from_pathlib,) = ground(model, processor, [path], max_new_tokens=3, progress=False)
    (from_image,) = ground(model, processor, [load_image(path)], max_new_tokens=3, progress=False)
    assert from_path == from_pathlib == from_image
    sent = [call["images"][0] for call in processor.calls]
    assert all(np.array_equal(np.asarray(s), np.asarray(picture)) for s in sent)


def test_image_bytes_in_every_form_load_image_reads(spy) -> None:
    import io

    model, processor = spy
    picture = scene_images(1)[0]
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = buffer.getvalue()
    results = [ground(model, processor, form, max_new_tokens=3, progress=False)[0]
               for form in (picture, data, bytearray(data), memoryview(data), [memoryview(data)])]
    assert all(r == results[0] for r in results)
    assert all(np.array_equal(np.asarray(call["images"][0]), np.asarray(picture)) for call in processor.calls)


def test_a_missing_path_names_the_file(spy, tmp_path: Path) -> None:
    model, processor = spy
    missing = tmp_path / "nowhere.jpg"
    with pytest.raises(ImageLoadError, match=r"no image file at .*nowhere\.jpg"):
        ground(model, processor, [scene_images(1)[0], str(missing)], progress=False)
    assert processor.calls == []


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (None, r"images must be one image or a list of images, each a PIL image, or a file path.*got NoneType"),
        ((im for im in []), r"got generator"),
        ([3], r"images\[0\] must be a PIL image, or a file path, URL or image bytes .*got int: 3"),
        ([np.zeros((8, 8, 3), np.uint8)],
         r"images\[0\] .*PIL\.Image\.fromarray\(array\)\); got ndarray of shape \(8, 8, 3\)$"),
        ([Image.new("RGB", (8, 8)), None], r"images\[1\] .*got NoneType"),
    ],
)
def test_things_that_are_not_images(spy, images, message: str) -> None:
    model, processor = spy
    with pytest.raises(TypeError, match=message):
        ground(model, processor, images, progress=False)
    assert processor.calls == []


def test_a_model_or_processor_of_the_wrong_kind_is_named(spy) -> None:
    """None, or the two swapped, failed with "AttributeError: … has no attribute 'parameters'"."""
    model, processor = spy
    image = scene_images(1)
    swapped = r"; are model and processor swapped\? It is ground\(model, processor, images, …\)$"
    model_wanted = r"^model must be a Kosmos-2 model, the first of the two that load\(\) returns, got "
    processor_wanted = r"^processor must be the Kosmos-2 processor, the second of the two that load\(\) returns, got "
    for args, message in [((None, processor), model_wanted + "NoneType$"),
                          ((processor, model), model_wanted + "SpyProcessor" + swapped),
                          ((model, None), processor_wanted + "NoneType$"),
                          ((model, model), processor_wanted + "Kosmos2ForConditionalGeneration" + swapped),
                          ((model, "processor"), processor_wanted + "str$")]:
        with pytest.raises(TypeError, match=message):
            ground(*args, image, progress=False)
    assert processor.calls == []
    assert len(ground(model, processor, image, max_new_tokens=2, progress=False)) == 1


# --------------------------------------------------------------------------------------------- prompts, counts


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prompts": ["a", "b", "c"]}, ValueError, r"got 2 images but 3 prompts; give one prompt or one per image"),
        ({"prompts": []}, ValueError, r"got 2 images but 0 prompts"),
        ({"prompts": [CAPTION_PROMPT, 7]}, TypeError, r"prompts must be strings.*prompt 1 is int: 7"),
        ({"prompts": None}, TypeError, r"prompt 0 is NoneType"),
        ({"prompts": ""}, ValueError, r"^prompt 0 must be a non-empty str, e\.g\. '<grounding> An image of', got ''$"),
        ({"prompts": [CAPTION_PROMPT, " \n"]}, ValueError, r"^prompt 1 must be a non-empty str, .*got ' \\n'$"),
        ({"max_new_tokens": 0}, ValueError, r"max_new_tokens must be a positive int, got 0"),
        ({"max_new_tokens": 2.5}, TypeError, r"max_new_tokens must be a positive int, got float: 2\.5"),
        ({"max_new_tokens": "8"}, TypeError, r"max_new_tokens must be a positive int, got str: '8'"),
        ({"batch_size": 0}, ValueError, r"batch_size must be a positive int, got 0"),
        ({"batch_size": -2}, ValueError, r"batch_size must be a positive int, got -2"),
        ({"batch_size": True}, TypeError, r"batch_size must be a positive int, got bool"),
    ],
)
def test_bad_prompts_and_counts(spy, kwargs, error, message: str) -> None:
    model, processor = spy
    with pytest.raises(error, match=message):
        ground(model, processor, scene_images(2), progress=False, **kwargs)
    assert processor.calls == []


# --------------------------------------------------------------------------------------------- user boxes


@pytest.mark.parametrize(
    ("prompts", "bboxes", "error", "message"),
    [
        (QA, [[BOX]], ValueError, r"bboxes needs one entry per image \(2\), got 1"),
        (QA, "0.1 0.2 0.5 0.6", TypeError, r"bboxes must be a list with one entry per image, got str"),
        (QA, [[BOX], 5], TypeError, r"bboxes\[1\] must be None or a list with one entry per <phrase>"),
        # a box per image where a list with one box per phrase belongs
        (QA, [BOX, BOX], ValueError, r"bboxes\[0\] is a single box \(0\.1, 0\.2, 0\.5, 0\.6\).*bboxes=\[\[box\]\]"),
        # more boxes than phrases, and boxes for a prompt without phrases
        (QA, [[BOX], [BOX, BOX]], ValueError,
         r"bboxes\[1\] has 2 entries but prompt 1 \('<grounding> Question: What is<phrase> this object</phrase>"
         r"\? Answer:'\) has 1 <phrase>…</phrase> pair\(s\); give one entry per phrase"),
        (CAPTION_PROMPT, [None, [BOX]], ValueError, r"bboxes\[1\] has 1 entries but prompt 1 .* has 0 <phrase>"),
        # no entry at all for a prompt with a phrase: None says "no user box"
        (QA, [[BOX], []], ValueError, r"bboxes\[1\] has 0 entries but prompt 1 .* has 1 <phrase>…</phrase> "
                                      r"pair\(s\); .*or None instead of the list for no user box"),
        (QA, [[BOX], [(12, 30, 250, 400)]], ValueError,
         r"^normalized box values must lie in \[0, 1\], got \(12\.0, 30\.0, 250\.0, 400\.0\)\. It looks like a "
         r"pixel box: convert it with to_normalized\(box_px, image_size\)\.\n\(in bboxes\[1\]\[0\]"),
        (QA, [[BOX], [(0.5, 0.6, 0.1, 0.2)]], ValueError, r"normalized box is inverted"),
        (QA, [[BOX], [(0.1, float("nan"), 0.5, 0.6)]], ValueError, r"finite numbers"),
        (QA, [[BOX], [(0.3, 0.2, 0.3, 0.6)]], ValueError, r"has no area: expected x0 < x1 and y0 < y1"),
        (QA, [[BOX], [(0.1, 0.2, 0.5)]], ValueError, r"normalized box must have 4 numbers"),
        (QA, [[BOX], [[BOX, (0.2, 0.2, 0.1, 0.9)]]], ValueError, r"normalized box is inverted"),
        (QA, [[BOX], ["0.1,0.2,0.5,0.6"]], TypeError, r"bboxes\[1\]\[0\] must be a normalized box"),
    ],
)
def test_bad_user_boxes_are_refused_before_generating(spy, prompts, bboxes, error, message: str) -> None:
    model, processor = spy
    with pytest.raises(error, match=message) as excinfo:
        ground(model, processor, scene_images(2), prompts, bboxes=bboxes, batch_size=1, progress=False)
    assert processor.calls == []
    if str(excinfo.value).startswith(("normalized box", "a user box")):  # the box's own check says what is wrong,
        assert excinfo.value.__notes__ == ["(in bboxes[1][0]: the user box for phrase 0 of prompt 1)"]  # and where


def test_the_pixel_box_hint_leads_to_a_box_that_works(spy) -> None:
    model, processor = spy
    image = scene_images(1)[0]
    box_px = (10, 8, 60, 50)
    with pytest.raises(ValueError, match="to_normalized"):
        ground(model, processor, image, QA, bboxes=[[box_px]], progress=False)
    box = to_normalized(box_px, image.size)
    (g,) = ground(model, processor, image, QA, bboxes=[[box]], max_new_tokens=2, progress=False)
    assert "</phrase>" + object_tokens([box]) in g.raw


def test_accepted_box_forms_agree(spy) -> None:
    """A tuple, a list, a numpy array, one box in a list, None for a phrase or for the image (no user box), and []
    for a prompt without phrases."""
    model, processor = spy
    image = scene_images(1)[0]
    forms = [[BOX], [list(BOX)], [np.array(BOX)], [[BOX]]]
    raws = [ground(model, processor, image, QA, bboxes=[f], max_new_tokens=2, progress=False)[0].raw for f in forms]
    assert len(set(raws)) == 1
    for call in processor.calls:
        assert call["bboxes"] == [[tuple(check_normalized(BOX))]] or call["bboxes"] == [[[check_normalized(BOX)]]]
    none = ground(model, processor, image, QA, bboxes=[[None]], max_new_tokens=2, progress=False)[0]
    no_entry = ground(model, processor, image, QA, bboxes=[None], max_new_tokens=2, progress=False)[0]
    plain = ground(model, processor, image, QA, max_new_tokens=2, progress=False)[0]
    assert none == no_entry == plain
    caption = ground(model, processor, image, CAPTION_PROMPT, max_new_tokens=2, progress=False)[0]
    assert ground(model, processor, image, CAPTION_PROMPT, bboxes=[[]], max_new_tokens=2, progress=False)[0] == caption
    assert "<object>" not in plain.raw.partition(QA.split("<phrase>")[0])[2].partition("Answer:")[0]


# --------------------------------------------------------------------------------------------- box helpers


def test_object_tokens_wants_a_list_of_boxes() -> None:
    single = r"got a single box \(0\.1, 0\.2, 0\.5, 0\.6\): write object_tokens\(\[box\]\)"
    with pytest.raises(ValueError, match=single):
        object_tokens(BOX)
    with pytest.raises(TypeError, match="object_tokens needs a list of normalized boxes, got NoneType"):
        object_tokens(None)
    with pytest.raises(TypeError, match="got generator"):
        object_tokens(b for b in [BOX])
    assert object_tokens(np.array([BOX])) == object_tokens([BOX])
    parsed = parse_generation("<phrase> it</phrase>" + object_tokens([BOX]))
    assert parsed.entities[0].phrase == "it" and not parsed.problems


@pytest.mark.parametrize("box", [{0.1, 0.2, 0.5, 0.6}, {"x0": 0.1, "y0": 0.2, "x1": 0.5, "y1": 0.6}])
def test_unordered_containers_are_not_boxes(box) -> None:
    with pytest.raises(ValueError, match=r"must be an ordered sequence of 4 numbers \(x0, y0, x1, y1\), got a"):
        check_normalized(box)


# --------------------------------------------------------------------------------------------- decoding


def test_no_repeat_ngram_size_reaches_generate(spy) -> None:
    model, processor = spy
    image = scene_images(1)[0]
    greedy = ground(model, processor, [image], CAPTION_PROMPT, max_new_tokens=24, progress=False)
    assert ground(model, processor, [image], CAPTION_PROMPT, max_new_tokens=24, progress=False,
                  decoding=GREEDY)[0].raw == greedy[0].raw  # the default is plain greedy
    (no_repeat,) = ground(model, processor, [image], CAPTION_PROMPT, max_new_tokens=24, progress=False,
                          decoding=Decoding(no_repeat_ngram_size=1))
    inputs = processor._processor(text=[CAPTION_PROMPT], images=[image], return_tensors="pt")
    # generate with the same settings by hand: ground passes the decoding on unchanged
    out = model.generate(**inputs, max_new_tokens=24, do_sample=False, num_beams=1, no_repeat_ngram_size=1)
    prompt_len = inputs["input_ids"].shape[1]
    new = out[0, prompt_len:].tolist()
    assert len(set(new)) == len(new)  # no token twice: what no_repeat_ngram_size=1 means
    assert processor._processor.batch_decode(out, skip_special_tokens=True)[0] == no_repeat.raw
    assert no_repeat.raw != greedy[0].raw  # the random test model repeats itself when allowed to


def test_beams_and_bad_decodings(spy) -> None:
    model, processor = spy
    images = scene_images(2)
    beams = ground(model, processor, images, CAPTION_PROMPT, max_new_tokens=8, progress=False,
                   decoding=Decoding(num_beams=3))
    assert len(beams) == 2 and all(g.raw for g in beams)
    assert AUTHORS_DECODING == Decoding(num_beams=1, no_repeat_ngram_size=3)
    assert AUTHORS_DECODING.generate_kwargs() == {"do_sample": False, "num_beams": 1, "no_repeat_ngram_size": 3}
    with pytest.raises(TypeError, match=r"decoding must be a helpers.grounding.model.Decoding.*got dict"):
        ground(model, processor, images, decoding={"num_beams": 2}, progress=False)
    for bad, error, message in (
            ({"num_beams": 0}, ValueError, r"^Decoding\.num_beams must be a positive int, got 0$"),
            ({"no_repeat_ngram_size": -1}, ValueError,
             r"^Decoding\.no_repeat_ngram_size must be 0 or more \(a whole number\), got -1$"),
            ({"num_beams": True}, TypeError, r"^Decoding\.num_beams must be a positive int, got bool: True$"),
            ({"num_beams": 2.0}, TypeError, r"^Decoding\.num_beams must be a positive int, got float: 2\.0$"),
            ({"num_beams": "3"}, TypeError, r"^Decoding\.num_beams must be a positive int, got str: '3'$"),
            ({"no_repeat_ngram_size": 2.0}, TypeError, r"no_repeat_ngram_size must be .*, got float: 2\.0$"),
            ({"no_repeat_ngram_size": 0.0}, TypeError, r"no_repeat_ngram_size must be .*, got float: 0\.0$"),
            ({"no_repeat_ngram_size": False}, TypeError, r"no_repeat_ngram_size must be .*, got bool: False$")):
        with pytest.raises(error, match=message):
            Decoding(**bad)
    numpy = Decoding(num_beams=np.int64(3), no_repeat_ngram_size=np.int32(0))  # numpy ints count, as plain ints
    assert numpy == Decoding(num_beams=3) and type(numpy.num_beams) is int and type(numpy.no_repeat_ngram_size) is int


def test_the_text_keeps_its_spaces_even_when_the_tokenizer_asks_for_clean_up(monkeypatch) -> None:
    """The real checkpoint's tokenizer may ask transformers to "clean up" spaces before punctuation; the asked
    phrase must come back as it was written, or scoring finds no box for it (Flickr30k writes "young , White")."""
    from helpers.course.paths import bundled_model_dir

    model, processor = load(bundled_model_dir(), device="cpu", verbose=False)
    monkeypatch.setattr(processor.tokenizer, "clean_up_tokenization_spaces", True)
    assert processor.batch_decode(processor.tokenizer(["a , b"])["input_ids"], skip_special_tokens=True) == ["a, b"]
    (g,) = ground(model, processor, scene_images(1), "<grounding><phrase> the red circle , left</phrase>",
                  max_new_tokens=4, progress=False)
    assert "<phrase> the red circle , left</phrase>" in g.raw
