"""Tests for helpers.course.playground: the in-world heuristic and the playground's logic, without a browser."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from helpers.course.playground import (
    IN_WORLD_THRESHOLD,
    Playground,
    PlaygroundResult,
    in_world_score,
    looks_in_world,
    world_palette,
)
from helpers.grounding.plotting import draw_entities, draw_user_box
from helpers.course.solutions_more import add_noise, first_out_of_world
from helpers.world.scenes import COLOURS, character_illustration, sample_scenes, snowman_illustration
from helpers.grounding.tokens import location_tokens
from helpers.grounding.prompts import CAPTION_PROMPT, DETAIL_PROMPT, GENERATION_PROMPT


def noise(seed: int, size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def photo_like(seed: int) -> Image.Image:
    """A smooth sky-to-ground gradient with sensor-like noise: what photos look like to this heuristic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:120, 0:160].astype(np.float32)
    top = rng.uniform(60, 200, 3)
    bottom = rng.uniform(20, 160, 3)
    t = (y / 119)[..., None]
    img = (1 - t) * top + t * bottom + 0.2 * x[..., None] + rng.normal(0, 8, (120, 160, 3))
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


# --------------------------------------------------------------------------------------------- in world


def test_palette_holds_the_world_colours() -> None:
    palette = {tuple(int(v) for v in c) for c in world_palette()}
    assert set(COLOURS.values()) <= palette
    assert (120, 200, 245) in palette  # Kumo's body
    assert (1, 2, 3) not in palette  # the marker background used to find them


def test_scenes_are_in_world() -> None:
    scenes = [s.image for s in sample_scenes(25, seed=99)]
    scenes += [snowman_illustration().image, character_illustration().image]
    scores = [in_world_score(im) for im in scenes]
    assert min(scores) >= IN_WORLD_THRESHOLD
    assert all(looks_in_world(im) for im in scenes)


def test_jpeg_copies_of_scenes_stay_in_world() -> None:
    for scene in sample_scenes(5, seed=4):
        buf = io.BytesIO()
        scene.image.save(buf, format="JPEG", quality=80)
        assert looks_in_world(Image.open(buf))


@pytest.mark.parametrize("make", [noise, photo_like])
def test_noise_and_photo_like_images_are_out_of_world(make) -> None:
    for seed in range(6):
        image = make(seed)
        assert in_world_score(image) < 0.5
        assert not looks_in_world(image)


def test_a_scene_covered_in_noise_drops_out() -> None:
    scene = sample_scenes(1, seed=2)[0].image
    arr = np.asarray(scene).astype(np.float32)
    noisy = Image.fromarray((arr + np.random.default_rng(0).normal(0, 60, arr.shape)).clip(0, 255).astype(np.uint8))
    assert in_world_score(noisy) < IN_WORLD_THRESHOLD <= in_world_score(scene)


def test_large_and_greyscale_images_and_errors() -> None:
    big = snowman_illustration(size=(2000, 1500)).image
    assert looks_in_world(big)
    grey = big.convert("L")  # a one-channel image is scored as its RGB copy; without colours it fits the world less
    assert in_world_score(grey) == in_world_score(grey.convert("RGB")) < in_world_score(big)
    with pytest.raises(TypeError, match="PIL image"):
        in_world_score(np.zeros((4, 4, 3)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        looks_in_world(big, threshold=2)


# --------------------------------------------------------------------------------------------- playground


@pytest.fixture()
def playground(tiny_model) -> Playground:
    scenes = sample_scenes(2, seed=5)
    return Playground(*tiny_model, images={"one": scenes[0].image, "two": scenes[1].image}, max_new_tokens=4)


def test_widgets_start_from_the_arguments(playground) -> None:
    assert playground.image_choice.options == ("one", "two")
    assert playground.prompt.value == CAPTION_PROMPT
    assert playground.current_box() is None
    playground.use_box.value = True
    assert playground.current_box() == (0.25, 0.25, 0.75, 0.75)
    playground.example_choice.value = "detailed caption"
    assert playground.prompt.value == DETAIL_PROMPT


def test_run_grounds_and_shows_the_result(playground) -> None:
    playground.image_choice.value = "two"
    result = playground.run()
    assert isinstance(result, PlaygroundResult) and playground.last is result
    assert result.image.size == playground.images["two"].size
    assert result.prompt == CAPTION_PROMPT and result.box is None
    assert result.grounding.caption.startswith("An image of")
    assert "An image of" in result.html and 'class="grounded-caption"' in result.html
    assert result.in_world == in_world_score(playground.images["two"])
    assert playground.picture.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert playground.caption.value == result.html
    assert result._repr_html_() == result.html


def test_run_with_a_box(playground) -> None:
    box = (0.1, 0.2, 0.5, 0.6)
    result = playground.run(prompt=GENERATION_PROMPT, box=box)
    assert result.box == box
    assert f"<phrase> It</phrase><object>{location_tokens(box)}</object> is" in result.grounding.raw
    plain = playground.run(prompt=GENERATION_PROMPT, box=None)
    assert "<object>" not in plain.grounding.raw.split("</image>")[1].split(" is")[0]
    original = playground.images["one"]
    with_box = draw_entities(draw_user_box(original, box, label=None), result.grounding)
    assert result.image.tobytes() == with_box.tobytes()  # the user's dashed box is drawn under the answer
    assert result.image.tobytes() != draw_entities(original, result.grounding).tobytes()
    playground.use_box.value = True
    playground.box_fields[0].value = 0.3
    assert playground.run(prompt=GENERATION_PROMPT).box == (0.3, 0.25, 0.75, 0.75)


def test_bad_input_raises_in_run_and_shows_in_the_widget(playground) -> None:
    with pytest.raises(ValueError, match="needs a <phrase>"):
        playground.run(prompt=CAPTION_PROMPT, box=(0.1, 0.1, 0.4, 0.4))
    with pytest.raises(ValueError, match="x0 < x1"):
        playground.run(prompt=GENERATION_PROMPT, box=(0.4, 0.1, 0.4, 0.4))
    with pytest.raises(ValueError, match="non-empty"):
        playground.run(prompt="")
    with pytest.raises(KeyError, match="no image called 'three'"):
        playground.run(image="three")
    playground.prompt.value = "<grounding> An image of"
    playground.use_box.value = True
    playground.on_click()
    assert "needs a &lt;phrase&gt;" in playground.caption.value and "⚠" in playground.caption.value
    with pytest.raises(ValueError, match="images is empty"):
        Playground(playground.model, playground.processor, images={})
    with pytest.raises(TypeError, match=r"images\['x'\] must be a PIL image"):
        Playground(playground.model, playground.processor, images={"x": "a.png"})


def test_upload_adds_and_selects_the_image(playground) -> None:
    buf = io.BytesIO()
    noise(1).save(buf, format="PNG")
    playground._on_upload({"new": ({"name": "one", "content": memoryview(buf.getvalue())},)})
    assert playground.image_choice.value == "one (2)"
    assert playground.images["one (2)"].size == (160, 120)
    playground._on_upload({"new": ({"name": "junk.png", "content": memoryview(b"junk")},)})
    assert "⚠ could not use the upload &#x27;junk.png&#x27;: the given bytes is not an image" in playground.caption.value
    assert playground.image_choice.value == "one (2)"


def png_of(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_a_chosen_image_shows_until_ground_is_pressed(playground) -> None:
    assert playground.picture.value == png_of(playground.images["one"])
    assert playground.caption.value == "<i>Press Ground.</i>"
    playground.on_click()
    assert playground.picture.value == png_of(playground.last.image)  # the answer's boxes (none from a test model)
    assert "grounded-caption" in playground.caption.value
    playground.image_choice.value = "two"
    assert playground.picture.value == png_of(playground.images["two"])
    assert playground.caption.value == "<i>Press Ground.</i>"


def test_the_button_shows_each_bad_input_and_keeps_working(playground) -> None:
    playground.prompt.value = ""
    playground.on_click()
    assert "⚠ prompt must be a non-empty str" in playground.caption.value
    playground.prompt.value = GENERATION_PROMPT
    playground.use_box.value = True
    playground.box_fields[2].value = playground.box_fields[0].value  # x1 == x0: no area
    playground.on_click()
    assert "⚠ normalized box (0.25, 0.25, 0.25, 0.75) has no area" in playground.caption.value
    assert playground.last is None  # nothing was grounded
    playground.box_fields[2].value = 0.75
    playground.on_click()
    assert playground.last is not None and playground.last.box == (0.25, 0.25, 0.75, 0.75)
    assert playground.caption.value == playground.last.html and "⚠" not in playground.caption.value


def test_out_of_world_warning_only_for_the_bundled_model(playground) -> None:
    odd = photo_like(0)
    assert not any("does not look like" in w for w in playground.run(image=odd).warnings)
    info = playground.model.load_info
    try:
        playground.model.load_info = dataclasses.replace(info, bundled=True)
        result = playground.run(image=odd)
        assert any("does not look like the bundled model's world" in w for w in result.warnings)
        assert "does not look like" in result.html
        assert not any("does not look like" in w for w in playground.run(image="one").warnings)
    finally:
        playground.model.load_info = info


def test_noise_solutions() -> None:
    scene = sample_scenes(1, seed=2)[0].image
    assert add_noise(scene, 0).tobytes() == scene.convert("RGB").tobytes()
    assert add_noise(scene, 20, seed=1).tobytes() == add_noise(scene, 20, seed=1).tobytes()
    assert add_noise(scene, 20, seed=1).tobytes() != add_noise(scene, 20, seed=2).tobytes()
    level = first_out_of_world(scene, [80, 0, 10, 20, 40])
    assert level in (10, 20, 40, 80)
    assert looks_in_world(add_noise(scene, 0)) and not looks_in_world(add_noise(scene, level))
    assert first_out_of_world(scene, [0, 1]) is None
    for bad in (-1, float("nan"), float("inf"), "5"):
        with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
            add_noise(scene, bad)
