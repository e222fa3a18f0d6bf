"""The processor a saved model folder gives back, what it does to images, and the world's builders.

* ``AutoProcessor.from_pretrained(folder)`` gives a ``Kosmos2Processor`` that resizes every image to a
  square without centre-cropping (so a normalized box means the same on the photo and on the model's
  input), agrees with the processor built in code, and says nothing while doing so.
* An EXIF-rotated photo: the box ``to_pixels`` gives lands on the turned image the learner sees.
* The world's builders refuse sizes that cannot make a model, with a message.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from helpers.grounding.boxes import to_pixels
from helpers.grounding.images import load_image
from helpers.grounding.prompts import CAPTION_PROMPT, qa_prompt
from helpers.world.language import build_config, build_image_processor, build_processor

RED = (220, 20, 20)
GREY = (128, 128, 128)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def corner_block(size: tuple[int, int], block: tuple[int, int, int, int]) -> Image.Image:
    """A grey picture with a red block covering the pixel box ``block`` = (x0, y0, x1, y1), x1/y1 exclusive."""
    image = Image.new("RGB", size, GREY)
    x0, y0, x1, y1 = block
    ImageDraw.Draw(image).rectangle([x0, y0, x1 - 1, y1 - 1], fill=RED)
    return image


def unnormalize(pixel_values, image_processor) -> np.ndarray:
    """(3, H, W) model input back to RGB values in [0, 1]."""
    mean = np.asarray(image_processor.image_mean)[:, None, None]
    std = np.asarray(image_processor.image_std)[:, None, None]
    return np.asarray(pixel_values, dtype=np.float64) * std + mean


def red_mask(rgb: np.ndarray) -> np.ndarray:
    return (rgb[0] > 0.7) & (rgb[1] < 0.3) & (rgb[2] < 0.3)


# --------------------------------------------------------------------------------------------- the saved processor


def test_saved_processor_resizes_to_a_square_without_cropping_and_says_nothing(tiny_model_dir: Path, recwarn,
                                                                                 capfd) -> None:
    from transformers import AutoProcessor, Kosmos2Processor

    once = getattr(logging.Logger, "warning_once", None)
    if once is not None and hasattr(once, "cache_clear"):
        once.cache_clear()  # so that warnings given once earlier in the session would show again here
    records = _Records()
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(records)
    try:
        processor = AutoProcessor.from_pretrained(tiny_model_dir)
        # 200 x 80 with a red block in the top-right corner: normalized (0.75, 0, 1, 0.25)
        image = corner_block((200, 80), (150, 0, 200, 20))
        inputs = processor(text=CAPTION_PROMPT, images=image, return_tensors="pt")
        batch = processor(text=[CAPTION_PROMPT, qa_prompt()], images=[image, image.rotate(90, expand=True)],
                          bboxes=[None, [(0.1, 0.2, 0.5, 0.6)]], padding=True, return_tensors="pt")
        processor.batch_decode(batch["input_ids"], skip_special_tokens=True)
    finally:
        hf_logger.removeHandler(records)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert [str(w.message) for w in recwarn] == []
    assert [r.getMessage() for r in records.records] == []

    assert isinstance(processor, Kosmos2Processor)
    image_processor = processor.image_processor
    assert (image_processor.size["height"], image_processor.size["width"]) == (64, 64)
    assert not image_processor.do_center_crop
    pixels = inputs["pixel_values"][0].numpy()
    assert pixels.shape == (3, 64, 64)
    rgb = unnormalize(pixels, image_processor)
    # the whole picture, squeezed to a square with bicubic resampling: nothing is cut off
    expected = np.asarray(image.resize((64, 64), Image.Resampling.BICUBIC), dtype=np.float64).transpose(2, 0, 1) / 255
    assert np.abs(rgb - expected).max() < 1e-5
    # so the block sits at the same normalized place: columns 48-63, rows 0-15 of 64
    red = red_mask(rgb)
    assert red[1:15, 49:63].all()
    outside = red.copy()
    outside[0:17, 47:64] = False
    assert not outside.any()
    assert batch["pixel_values"].shape == (2, 3, 64, 64)


def test_saved_processor_gives_what_the_built_one_gives(tiny_model_dir: Path) -> None:
    from transformers import AutoProcessor

    saved = AutoProcessor.from_pretrained(tiny_model_dir)
    built = build_processor(64)
    images = [corner_block((90, 40), (0, 0, 30, 10)), corner_block((33, 77), (10, 50, 33, 77))]
    kwargs = dict(text=[CAPTION_PROMPT, qa_prompt("character")], images=images,
                  bboxes=[None, [(0.25, 0.5, 0.75, 1.0)]], padding=True, return_tensors="pt")
    built.tokenizer.padding_side = saved.tokenizer.padding_side = "left"
    a, b = saved(**kwargs), built(**kwargs)
    assert set(a) == set(b) == {"pixel_values", "input_ids", "attention_mask", "image_embeds_position_mask"}
    for key in a:
        assert np.array_equal(a[key].numpy(), b[key].numpy()), key
    text = saved.batch_decode(a["input_ids"], skip_special_tokens=True)[1]
    assert "<phrase> this character</phrase><object><patch_index_0520><patch_index_1015></object>" in text


# --------------------------------------------------------------------------------------------- an EXIF-rotated photo


def test_box_from_to_pixels_lands_on_the_turned_photo(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Stored 90 x 60 with a red block at the top right, EXIF orientation 6 (turn 90 degrees clockwise)."""
    from transformers import AutoProcessor

    stored = corner_block((90, 60), (60, 0, 90, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.png"
    stored.save(path, exif=exif)

    picture = load_image(path)
    assert picture.size == (60, 90)
    # turning clockwise takes stored (x, y) to (60 - 1 - y, x): the block now covers x 40-60, y 60-90
    box = (40 / 60, 60 / 90, 1.0, 1.0)
    x0, y0, x1, y1 = to_pixels(box, picture.size)
    assert (x0, y0, x1, y1) == pytest.approx((40, 60, 60, 90))
    inside = np.asarray(picture.crop((round(x0), round(y0), round(x1), round(y1))))
    assert (inside == RED).all()
    rest = np.asarray(picture).copy()
    rest[round(y0):, round(x0):] = GREY
    assert (rest == GREY).all()

    # and the model's input shows it at the same normalized place (a 64 x 64 square: x 43-64, y 43-64)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    pixels = processor(text=CAPTION_PROMPT, images=picture, return_tensors="pt")["pixel_values"][0].numpy()
    red = red_mask(unnormalize(pixels, processor.image_processor))
    assert red[44:64, 44:64].all()
    outside = red.copy()
    outside[42:, 42:] = False
    assert not outside.any()


# --------------------------------------------------------------------------------------------- the world's builders


@pytest.mark.parametrize(
    ("size", "error", "message"),
    [
        (0, ValueError, r"image_size must be a positive int, got 0"),
        (-64, ValueError, r"got -64"),
        ("64", TypeError, r"image_size must be a positive int, got str: '64'"),
        (64.0, TypeError, r"got float: 64\.0"),
        (True, TypeError, r"got bool: True"),
    ],
)
def test_image_size_must_be_a_positive_int(size, error, message: str) -> None:
    with pytest.raises(error, match=message):
        build_image_processor(size)
    with pytest.raises(error, match=message):
        build_processor(size)


@pytest.fixture(scope="module")
def processor():
    return build_processor(64)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"image_size": 60, "patch_size": 8}, ValueError, r"image_size \(60\) must be a multiple of patch_size \(8\)"),
        ({"vision_dim": 30, "heads": 4}, ValueError, r"vision_dim \(30\) must be a multiple of heads \(4\)"),
        ({"text_dim": 50, "heads": 4}, ValueError, r"text_dim \(50\) must be a multiple of heads \(4\)"),
        ({"text_layers": 0}, ValueError, r"text_layers must be a positive int, got 0"),
        ({"heads": 2.0}, TypeError, r"heads must be a positive int, got float"),
    ],
)
def test_build_config_refuses_sizes_that_make_no_model(processor, kwargs, error, message: str) -> None:
    with pytest.raises(error, match=message):
        build_config(processor, **kwargs)


def test_build_config_needs_the_processor(processor) -> None:
    from helpers.world.training import new_model

    with pytest.raises(TypeError, match=r"processor must be a Kosmos2Processor \(from build_processor\), got NoneType"):
        new_model(None)
    config = build_config(processor, image_size=64, patch_size=8, vision_dim=32, text_dim=32, heads=2,
                          vision_layers=1, text_layers=1)
    assert config.text_config.vocab_size == max(processor.tokenizer.get_vocab().values()) + 1
    assert config.vision_config.image_size // config.vision_config.patch_size == 8


def test_the_vocabulary_has_a_row_for_every_token_id_however_the_tokenizer_counts_itself(
        processor, monkeypatch) -> None:
    """The world's tokenizer holds "▁a" twice (ids 71 and 199), and len() of such a tokenizer is one less on
    transformers 5.15 than on 5.24: a model sized by len() was one row short of <patch_index_1023>, and building a
    new world model failed."""
    from transformers import Kosmos2Config

    from helpers.course.paths import bundled_model_dir
    from helpers.world.training import new_model

    tokenizer = processor.tokenizer
    assert tokenizer.convert_ids_to_tokens([71, 199]) == ["▁a", "▁a"]
    last = tokenizer.convert_tokens_to_ids("<patch_index_1023>")
    bundled = Kosmos2Config.from_pretrained(bundled_model_dir()).text_config.vocab_size
    counted = len(tokenizer)
    monkeypatch.setattr(type(tokenizer), "__len__", lambda self: counted - 1)  # as transformers 5.15 counts it
    assert len(tokenizer) == last == bundled - 1
    assert build_config(processor).text_config.vocab_size == last + 1 == bundled == 1297
    model = new_model(processor, vision_layers=1, text_layers=1, vision_dim=32, text_dim=32, heads=2)
    assert model.get_input_embeddings().num_embeddings == bundled
