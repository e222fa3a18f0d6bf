"""Tests for helpers.course.playground: the in-world heuristic and the playground's logic, without a browser."""

from __future__ import annotations

import dataclasses
import datetime
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
from helpers.grounding import model as grounding_model
from helpers.grounding.images import load_image, to_rgb
from helpers.grounding.plotting import draw_entities, draw_user_box
from helpers.course.solutions_more import add_noise, first_out_of_world
from helpers.world.scenes import COLOURS, character_illustration, sample_scenes, snowman_illustration
from helpers.grounding.tokens import location_tokens
from helpers.grounding.prompts import CAPTION_PROMPT, DETAIL_PROMPT, GENERATION_PROMPT, qa_prompt


def noise(seed: int, size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_of(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def transparent_scene(seed: int = 5) -> Image.Image:
    """A world scene whose background is transparent, magenta under the transparency (as PNG files may hold)."""
    pixels = np.asarray(sample_scenes(1, seed=seed)[0].image)
    rgba = np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])
    rgba[(pixels == pixels[0, 0]).all(axis=-1)] = (255, 0, 255, 0)
    return Image.fromarray(rgba, "RGBA")


def turned_png(seed: int = 5) -> bytes:
    """A PNG file of a world scene whose EXIF orientation says "turn 90°"."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    sample_scenes(1, seed=seed)[0].image.save(buf, format="PNG", exif=exif.tobytes())
    return buf.getvalue()


def turned_by_exif() -> Image.Image:
    return Image.open(io.BytesIO(turned_png()))


def grey_16_bit() -> Image.Image:
    return Image.fromarray(np.linspace(0, 65535, 96 * 64).reshape(64, 96).astype(np.uint16))


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
    with pytest.raises(TypeError, match=r"PIL\.Image\.Image .*load_image"):
        in_world_score(np.zeros((4, 4, 3)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        looks_in_world(big, threshold=2)


def test_the_score_is_that_of_the_pixels_the_model_sees() -> None:
    """Transparency is on white for the model (to_rgb); the score used to see what lay under it (magenta)."""
    image = transparent_scene()
    assert in_world_score(image) == in_world_score(to_rgb(image)) >= IN_WORLD_THRESHOLD
    grey = grey_16_bit()
    assert in_world_score(grey) == in_world_score(to_rgb(grey))


# --------------------------------------------------------------------------------------------- playground


@pytest.fixture()
def playground(tiny_model) -> Playground:
    scenes = sample_scenes(2, seed=5)
    return Playground(*tiny_model, images={"one": scenes[0].image, "two": scenes[1].image}, max_new_tokens=4)


@pytest.fixture()
def model_sees():
    """The images ground() hands to the model, run after run (a GROUND_HOOKS entry)."""
    seen: list[Image.Image] = []

    def keep(images, prompts, results) -> None:
        seen.extend(images)

    grounding_model.GROUND_HOOKS.append(keep)
    try:
        yield seen
    finally:
        grounding_model.GROUND_HOOKS.remove(keep)


def uploaded(name: str, data: bytes) -> dict:
    """One file as the upload widget holds it after a browser sent it."""
    return {"name": name, "type": "image/png", "size": len(data), "content": memoryview(data),
            "last_modified": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)}


def changes(widget, trait: str = "value") -> list:
    """Every new value of ``widget.trait`` from now on."""
    seen: list = []
    widget.observe(lambda change: seen.append(change["new"]), names=trait)
    return seen


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
    playground.use_box.value = True  # run(box=None) unticked it; the fields keep the last box given
    playground.box_fields[0].value = 0.3
    assert playground.run(prompt=GENERATION_PROMPT).box == (0.3, 0.2, 0.5, 0.6)


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


@pytest.mark.parametrize("file", [lambda: png_of(transparent_scene()), turned_png, lambda: png_of(grey_16_bit())],
                         ids=["transparent", "turned by EXIF", "16-bit grey"])
def test_a_pil_image_given_to_run_is_seen_as_the_same_picture_uploaded(playground, model_sees, file) -> None:
    """run(image=<PIL image>) used image.convert("RGB"): the colour under the transparency shown (here magenta),
    16-bit grey clipped to white, the EXIF orientation ignored; an upload goes through load_image."""
    playground.run(image=Image.open(io.BytesIO(file())))
    playground.upload.value = (uploaded("same.png", file()),)
    playground.run()
    from_code, from_upload = model_sees
    assert from_code.mode == from_upload.mode == "RGB"
    assert from_code.size == from_upload.size and from_code.tobytes() == from_upload.tobytes()


def test_images_given_to_the_constructor_are_loaded_as_uploads(tiny_model) -> None:
    """CMYK and float images crashed the constructor (PNG cannot hold them); the others were kept as given."""
    given = {"cmyk": Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "float": Image.new("F", (40, 30), 0.5),
             "transparent": transparent_scene(), "turned": turned_by_exif(), "grey": grey_16_bit()}
    playground = Playground(*tiny_model, images=given, max_new_tokens=4)
    for name, image in given.items():
        assert playground.images[name].mode == "RGB"
        assert playground.images[name].tobytes() == load_image(image).tobytes(), name
    assert playground.images["cmyk"].getpixel((0, 0)) == (255, 0, 0)
    assert playground.picture.value == png_of(playground.images["cmyk"])


@pytest.mark.parametrize("kwargs, error, message", [
    (lambda: {"images": [sample_scenes(1, seed=5)[0].image]}, TypeError,
     r"^images must be a dict of name → PIL image, e\.g\. \{'my photo': load_image\(path\)\}, got list: "),
    ({"images": "in/red.png"}, TypeError, r"^images must be a dict of name → PIL image, .*got str: 'in/red\.png'$"),
    ({"prompt": 5}, TypeError, r"^prompt must be a str such as '<grounding> An image of', or None for that one, got "
                               r"int: 5$"),
    ({"prompt": ""}, ValueError, r"^prompt must be a non-empty str, e\.g\. '<grounding> An image of', got ''$"),
    ({"prompt": "<image>"}, ValueError, r"^prompt must not contain '<image>': a prompt holds text"),
    ({"max_new_tokens": 0}, ValueError, r"^max_new_tokens must be a positive int, got 0$"),
    ({"max_new_tokens": 2.5}, TypeError, r"^max_new_tokens must be a positive int, got float: 2\.5$"),
    ({"images": {"empty": Image.new("RGB", (0, 0))}}, ValueError,
     r"^images\['empty'\]: the given PIL image must have at least 1 x 1 pixels, got 0 x 0$"),
])
def test_bad_arguments_are_refused_when_the_playground_is_made(tiny_model, kwargs, error, message) -> None:
    """They failed inside dict() or traitlets, or were taken (prompt "" silently became the default prompt, a prompt
    with <image> and max_new_tokens=0 were found only at each press of Ground), or PIL could not write the image."""
    kwargs = kwargs() if callable(kwargs) else kwargs
    with pytest.raises(error, match=message):
        Playground(*tiny_model, **kwargs)


def test_no_out_of_world_warning_for_a_world_scene_with_a_transparent_background(tiny_model) -> None:
    model, processor = tiny_model
    info = model.load_info
    try:
        model.load_info = dataclasses.replace(info, bundled=True)
        playground = Playground(model, processor, images={"transparent": transparent_scene()}, max_new_tokens=4)
        result = playground.run()
        assert result.in_world >= IN_WORLD_THRESHOLD
        assert not any("does not look like" in w for w in result.warnings)
    finally:
        model.load_info = info


def test_run_writes_its_arguments_into_the_widgets(playground) -> None:
    """run() from code drew its result but left the widgets as they were: Ground then grounded something else."""
    playground.example_choice.value = "detailed caption"
    pictures, choices = changes(playground.picture), changes(playground.image_choice)
    box = (0.1, 0.2, 0.5, 0.6)
    result = playground.run(image="two", prompt=GENERATION_PROMPT, box=box)
    assert playground.image_choice.value == "two" and playground.prompt.value == GENERATION_PROMPT
    assert playground.use_box.value and playground.current_box() == box
    assert playground.example_choice.value == "(keep my prompt)"  # the prompt is no longer the detailed caption's
    assert choices == ["two"] and pictures == [png_of(result.image)]  # the result only, encoded once
    assert playground.caption.value == result.html and playground.last is result
    playground.on_click()
    again = playground.last
    assert (again.prompt, again.box, again.grounding.raw) == (result.prompt, result.box, result.grounding.raw)

    odd = photo_like(0)
    playground.run(image=odd, box=None)
    assert playground.image_choice.value == "image from code" and not playground.use_box.value
    assert playground.current_box() is None and playground.prompt.value == GENERATION_PROMPT
    playground.run(image=odd)
    assert list(playground.image_choice.options) == list(playground.images) == ["one", "two", "image from code"]
    with pytest.raises(ValueError, match="has no area"):
        playground.run(image="one", prompt=CAPTION_PROMPT, box=(0.5, 0.5, 0.5, 0.5))
    assert playground.image_choice.value == "image from code"  # a call that raises changes nothing
    assert playground.prompt.value == GENERATION_PROMPT and not playground.use_box.value


def choose_example(playground: Playground, start: str) -> None:
    playground.example_choice.value = next(o for o in playground.example_choice.options if o.startswith(start))


def test_an_example_sets_use_a_box(playground) -> None:
    """The examples about a box left "use a box" unticked; a caption example with it ticked then failed."""
    choose_example(playground, "describe the box")
    assert playground.prompt.value == GENERATION_PROMPT and playground.use_box.value
    playground.example_choice.value = "brief caption"
    assert playground.prompt.value == CAPTION_PROMPT and not playground.use_box.value
    playground.on_click()
    assert playground.last is not None and playground.last.box is None  # no "a box needs a <phrase>"
    choose_example(playground, "what is in the box?")
    assert playground.prompt.value == qa_prompt("object") and playground.use_box.value
    playground.on_click()
    assert playground.last is not None and playground.last.box == (0.25, 0.25, 0.75, 0.75)
    playground.prompt.value = DETAIL_PROMPT  # typed: the menu no longer names the prompt, and can be chosen again
    assert playground.example_choice.value == "(keep my prompt)"
    choose_example(playground, "what is in the box?")
    assert playground.prompt.value == qa_prompt("object")


def test_large_images_are_shown_at_twice_the_display_width(tiny_model) -> None:
    """The widget used to get the whole image as a PNG (18 MB for 4096 x 2731) to show it 384 pixels wide."""
    big = snowman_illustration(size=(2000, 1500)).image
    playground = Playground(*tiny_model, images={"big": big}, max_new_tokens=4, display_width=300)
    small = big.resize((600, 450), Image.Resampling.LANCZOS)
    assert playground.picture.value == png_of(small)
    box = (0.1, 0.2, 0.5, 0.6)
    result = playground.run(prompt=GENERATION_PROMPT, box=box)
    assert result.image.size == (2000, 1500)  # the result keeps the image's size
    # the boxes are drawn on the small copy, with lines and labels sized for it
    assert playground.picture.value == png_of(draw_entities(draw_user_box(small, box, label=None),
                                                            result.grounding))
    for bad, error in ((0, ValueError), (2.5, TypeError)):
        with pytest.raises(error, match="display_width"):
            Playground(*tiny_model, images={"big": big}, display_width=bad)


def test_the_button_is_disabled_while_grounding(playground) -> None:
    """The button stayed enabled during a run, so clicks queued up with nothing to say a run was going on."""
    during = []

    def watch(images, prompts, results) -> None:
        during.append((playground.button.disabled, playground.button.description))

    grounding_model.GROUND_HOOKS.append(watch)
    try:
        playground.on_click()
    finally:
        grounding_model.GROUND_HOOKS.remove(watch)
    assert during == [(True, "Grounding…")]
    assert (playground.button.disabled, playground.button.description) == (False, "Ground")


def test_the_button_shows_any_error(playground) -> None:
    """Only ValueError, TypeError and KeyError were shown; any other error escaped the callback, and in a page
    (JupyterLab, Voila) nothing visible happened."""

    def out_of_memory(images, prompts, results) -> None:
        raise RuntimeError("CUDA out of memory")

    grounding_model.GROUND_HOOKS.append(out_of_memory)
    try:
        playground.on_click()
    finally:
        grounding_model.GROUND_HOOKS.remove(out_of_memory)
    assert "⚠ RuntimeError: CUDA out of memory" in playground.caption.value
    assert (playground.button.disabled, playground.button.description) == (False, "Ground")
    playground.on_click()
    assert playground.last is not None and "grounded-caption" in playground.caption.value


def test_after_an_error_the_plain_image_shows_and_last_is_cleared(playground) -> None:
    """The picture kept the previous run's boxes under the error message, and last that run's result."""
    plain = png_of(playground.images["one"])
    playground.run(prompt=GENERATION_PROMPT, box=(0.1, 0.2, 0.5, 0.6))
    assert playground.picture.value != plain  # the dashed box
    playground.prompt.value = ""
    playground.on_click()
    assert "⚠ prompt must be a non-empty str" in playground.caption.value
    assert playground.picture.value == plain and playground.last is None


def test_upload_adds_and_selects_the_image(playground) -> None:
    buf = io.BytesIO()
    noise(1).save(buf, format="PNG")
    playground._on_upload({"new": ({"name": "one", "content": memoryview(buf.getvalue())},)})
    assert playground.image_choice.value == "one (2)"
    assert playground.images["one (2)"].size == (160, 120)
    playground._on_upload({"new": ({"name": "junk.png", "content": memoryview(b"junk")},)})
    assert ("⚠ could not use the upload &#x27;junk.png&#x27;: the given bytes is not an image"
            in playground.caption.value)
    assert playground.image_choice.value == "one (2)"


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


def test_noise_levels_may_be_numpy_numbers() -> None:
    """np.arange(0, 90, 10) gives np.int64 levels, which add_noise refused as "not a finite number"."""
    scene = sample_scenes(1, seed=2)[0].image
    assert add_noise(scene, np.float32(20), seed=1).tobytes() == add_noise(scene, 20, seed=1).tobytes()
    assert add_noise(scene, np.int64(20), seed=1).tobytes() == add_noise(scene, 20.0, seed=1).tobytes()
    levels = np.arange(0, 90, 10)
    level = first_out_of_world(scene, levels)
    assert level == first_out_of_world(scene, [int(v) for v in levels]) and level in levels
    for bad in (np.float64("nan"), np.int64(-1), np.float32("inf")):
        with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
            add_noise(scene, bad)


def test_the_same_file_can_be_uploaded_again(playground) -> None:
    """The upload widget kept its value, so choosing the same file again changed nothing."""
    data = png_of(noise(1))
    playground.upload.value = (uploaded("noise.png", data),)
    assert playground.image_choice.value == "noise.png" and playground.upload.value == ()
    playground.upload.value = (uploaded("noise.png", data),)
    assert playground.image_choice.value == "noise.png (2)"


def test_an_upload_is_shown_once(playground) -> None:
    """New options selected the first image before the upload: its picture was made and sent first."""
    playground.image_choice.value = "two"
    pictures = changes(playground.picture)
    data = png_of(noise(1))
    playground.add_image("noise.png", data)
    assert playground.image_choice.value == "noise.png" and pictures == [data]
    assert playground.caption.value == "<i>Press Ground.</i>"


def test_an_unnamed_image_gets_the_plain_name_first(playground) -> None:
    assert playground.add_image("", noise(2)) == "uploaded image"
    assert playground.add_image("", noise(3)) == "uploaded image (2)"
    with pytest.raises(TypeError, match="name must be a str"):
        playground.add_image(None, noise(4))  # type: ignore[arg-type]


def test_a_pixel_box_in_the_fields_is_told_what_to_divide_by(playground) -> None:
    """The message named to_normalized(box_px, image_size) although the playground knows the image's size."""
    width, height = playground.images["one"].size
    playground.prompt.value = GENERATION_PROMPT
    playground.use_box.value = True
    for field, value in zip(playground.box_fields, (10, 20, 100, 80)):
        field.value = value
    playground.on_click()
    assert (f"It looks like a pixel box: divide the x values by the image&#x27;s width {width} and the y values by "
            f"its height {height}, which gives ({round(10 / width, 4)}, ") in playground.caption.value


def test_the_pixel_box_hint_divides_by_the_photos_own_size_not_the_shrunk_copys(playground) -> None:
    """A photo larger than load_image's 4096 px is grounded shrunk; a box typed in the photo's own pixels must be
    turned into fractions of the photo, not of the copy (it was called 'beyond the image')."""
    photo = Image.new("RGB", (6000, 4000), (200, 180, 160))
    name = playground.add_image("photo", photo)
    assert playground.images[name].size == (4096, 2731) and playground.sizes[name] == (6000, 4000)
    with pytest.raises(ValueError) as told:
        playground.run(image=name, prompt=GENERATION_PROMPT, box=(3000, 2000, 4500, 3000))
    assert "width 6000 and the y values by its height 4000, which gives (0.5, 0.5, 0.75, 0.75)" in str(told.value)
