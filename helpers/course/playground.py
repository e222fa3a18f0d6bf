"""An interactive playground: pick or upload an image, edit the prompt, add a box, see the grounding.

:class:`Playground` builds the widgets (ipywidgets) and keeps the logic in :meth:`Playground.run`, which
does one grounding and returns a :class:`PlaygroundResult` (the annotated image and the highlighted
caption as HTML), so it works, and is tested, without a browser.

The bundled model has only ever seen its synthetic world: flat coloured shapes, a snowman, a fire and Kumo
on a plain light background. :func:`in_world_score` estimates how much an image looks like that world so
the playground can warn when the answer is likely to be meaningless. The heuristic:

1. make the image RGB as the model sees it (:func:`helpers.grounding.images.to_rgb`: transparency on white,
   16-bit grey scaled), then shrink it to at most 128 pixels a side (nearest neighbour, which keeps the colours);
2. take the world's palette: every colour the world's drawing code paints (found by drawing each kind of
   object once with :mod:`helpers.world.scenes`), plus the image's own most common colour when it is light
   (every channel ≥ 200), which is how the world's backgrounds look;
3. the score is the share of pixels within :data:`COLOUR_TOLERANCE` (Euclidean distance in RGB, 0–255)
   of a palette colour.

Drawn scenes score close to 1; photographs, gradients and noise spread over many colours and score low.
It is a heuristic: a flat cartoon in similar colours passes, a scene photographed with a camera may not.
"""

from __future__ import annotations

import functools
import html
import io
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from helpers.course.colab import enable_widgets
from helpers.grounding.checks import check_positive_int
from helpers.grounding.evaluation import HELD_OUT_SEED, check_threshold
from helpers.grounding.images import check_image, load_image_and_size, to_rgb
from helpers.grounding.model import ground
from helpers.grounding.plotting import draw_entities, highlight_caption
from helpers.grounding.prompts import (
    CAPTION_PROMPT,
    DETAIL_PROMPT,
    GENERATION_PROMPT,
    check_prompt,
    comprehension_prompt,
    qa_prompt,
    user_box_entry,
)
from helpers.world.scenes import KINDS, character_illustration, draw_scene, sample_scenes, snowman_illustration

#: Largest RGB distance (0–255 per channel) at which a pixel still counts as a world colour.
COLOUR_TOLERANCE = 24.0
#: Score from which :func:`looks_in_world` says yes.
IN_WORLD_THRESHOLD = 0.8
_MAX_SIDE = 128
_BACKGROUND_MIN = 200


@functools.lru_cache(maxsize=1)
def world_palette() -> np.ndarray:
    """Every colour the synthetic world paints on objects, as an ``(n, 3)`` array of RGB values.

    Found by drawing each kind of object once (large, on a marker background) and keeping every colour
    that covers at least 0.2 % of the drawing, so it follows :mod:`helpers.world.scenes` when that changes.
    """

    marker = (1, 2, 3)
    colours: set[tuple[int, int, int]] = set()
    for colour, shape in KINDS:
        scene = draw_scene([(colour, shape, (0.05, 0.05, 0.95, 0.95))], size=(120, 120), background=marker)
        pixels = np.asarray(scene.image, dtype=np.int32).reshape(-1, 3)
        values, counts = np.unique(pixels, axis=0, return_counts=True)
        for value, count in zip(values, counts):
            if tuple(value) != marker and count >= 0.002 * len(pixels):
                colours.add(tuple(int(v) for v in value))
    return np.array(sorted(colours), dtype=np.float32)


def _small_rgb(image: Image.Image) -> np.ndarray:
    rgb = to_rgb(check_image(image))
    scale = _MAX_SIDE / max(rgb.size)
    if scale < 1:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.NEAREST)
    return np.asarray(rgb, dtype=np.float32).reshape(-1, 3)


def in_world_score(image: Image.Image) -> float:
    """Share of pixels (0–1) whose colour belongs to the bundled model's world (heuristic in the module docstring).

    Raises:
        TypeError: ``image`` is not a PIL image.
    """
    pixels = _small_rgb(image)
    palette = world_palette()
    values, counts = np.unique(pixels, axis=0, return_counts=True)
    mode = values[np.argmax(counts)]
    if mode.min() >= _BACKGROUND_MIN:
        palette = np.vstack([palette, mode[None, :]])
    # distances from each distinct colour to its nearest palette colour (few distinct colours in drawings)
    d2 = ((values[:, None, :] - palette[None, :, :]) ** 2).sum(axis=-1).min(axis=1)
    close = d2 <= COLOUR_TOLERANCE**2
    return float(counts[close].sum() / counts.sum())


def looks_in_world(image: Image.Image, threshold: float = IN_WORLD_THRESHOLD) -> bool:
    """True when :func:`in_world_score` reaches ``threshold`` (a number in [0, 1],
    :func:`helpers.grounding.evaluation.check_threshold`)."""
    threshold = check_threshold(threshold)
    return in_world_score(image) >= threshold


# --------------------------------------------------------------------------------------------- playground

#: What the playground shows under an image that has not been grounded yet.
PRESS_GROUND = "<i>Press Ground.</i>"
#: The Ground button's label, and its label while a grounding runs (the button is disabled then).
GROUND, GROUNDING = "Ground", "Grounding…"
#: The example menu's first entry, which leaves the prompt as it is.
KEEP_PROMPT = "(keep my prompt)"


def _message(text: str) -> str:
    """A warning or an error as the playground shows it: dark red on pale red (its own background, so it reads
    on light and dark pages alike), after a warning sign."""
    return (f'<div style="color:#8A0014;background:#FDECEA;padding:2px 6px;border-radius:3px">'
            f'⚠ {html.escape(text)}</div>')


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class PlaygroundResult:
    """One run of the playground: the annotated image, the HTML shown under it, and what was grounded.

    ``image`` has the size of the image the model saw (the widget shows a smaller copy of a large one);
    ``box`` is the user box as checked (a tuple of floats) or ``None``.
    """

    image: Image.Image
    html: str
    grounding: Any
    prompt: str
    box: tuple[float, float, float, float] | None
    in_world: float
    warnings: list[str] = field(default_factory=list)

    def _repr_html_(self) -> str:
        return self.html


def default_images() -> dict[str, Image.Image]:
    """The project's own pictures to choose from: the two illustrations and three held-out scenes (320 x 240)."""

    images = {"snowman by a fire": snowman_illustration().image, "Kumo and a square": character_illustration().image}
    for i, scene in enumerate(sample_scenes(3, seed=HELD_OUT_SEED, size=(320, 240))):
        images[f"held-out scene {i + 1}"] = scene.image
    return images


def _prompt_examples() -> dict[str, tuple[str, bool]]:
    """Example name → (prompt, whether it asks about a box: choosing it ticks or unticks "use a box")."""
    return {
        "brief caption": (CAPTION_PROMPT, False),
        "detailed caption": (DETAIL_PROMPT, False),
        "find a phrase": (comprehension_prompt("the red circle"), False),
        "what is in the box?": (qa_prompt("object"), True),
        "describe the box": (GENERATION_PROMPT, True),
    }


class Playground:
    """Widgets to try prompts on images, and :meth:`run` that does the work behind the button.

    Args:
        model, processor: from :func:`helpers.grounding.model.load`.
        images: name → PIL image to choose from (default :func:`default_images`), each made RGB, turned and
            shrunk as an upload is (:func:`helpers.grounding.images.load_image`). Uploaded images are added.
        prompt: the prompt first shown.
        max_new_tokens: the most tokens generated per run.
        display_width: width in pixels of the result picture in the widget. The widget gets a copy at most
            twice as wide (sharp on high-density screens), with the boxes drawn for that size so that lines
            and labels stay readable; :attr:`PlaygroundResult.image` keeps the image's own size.

    ``widget`` is the whole interface (display it in a notebook); the button calls :meth:`on_click`, which
    calls :meth:`run` and shows its result, or the error message instead. A newly chosen or uploaded image is
    shown as it is until the button is pressed; an upload that is not an image shows a message naming the file.
    ``last`` is the result the widget shows, ``None`` while it shows none.

    Raises:
        ValueError: ``images`` is empty or one of them cannot be used as an image (one without pixels included),
            ``prompt`` is empty or holds image or location tokens (:func:`helpers.grounding.prompts.check_prompt`),
            or ``max_new_tokens`` or ``display_width`` is below 1.
        TypeError: ``images`` is not a dict (a list, a file name), an image that is not a PIL image, a ``prompt``
            that is not a str, or a ``max_new_tokens`` or ``display_width`` that is not a whole number.
    """

    def __init__(self, model, processor, images: Mapping[str, Image.Image] | None = None, *,
                 prompt: str | None = None, max_new_tokens: int = 64, display_width: int = 384) -> None:
        import ipywidgets as w

        self.model = model
        self.processor = processor
        if images is not None and not isinstance(images, Mapping):
            raise TypeError("images must be a dict of name → PIL image, e.g. {'my photo': load_image(path)}, got "
                            f"{type(images).__name__}: {images!r:.80}")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a str such as {CAPTION_PROMPT!r}, or None for that one, got "
                                f"{type(prompt).__name__}: {prompt!r:.80}")
            check_prompt(prompt)
        self.max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
        given = dict(images) if images is not None else default_images()
        if not given:
            raise ValueError("images is empty: give at least one name → PIL image")
        self.images: dict[str, Image.Image] = {}
        self.sizes: dict[str, tuple[int, int]] = {}  # each image's own size, before shrinking: for pixel-box hints
        for name, im in given.items():
            if not isinstance(im, Image.Image):
                raise TypeError(f"images[{name!r}] must be a PIL image, got {type(im).__name__}")
            try:
                self.images[name], self.sizes[name] = load_image_and_size(im)
            except ValueError as err:
                raise ValueError(f"images[{name!r}]: {err}") from None
        self.display_width = check_positive_int("display_width", display_width)
        self.last: PlaygroundResult | None = None

        enable_widgets()  # on Colab, which draws ipywidgets 8 only through its custom widget manager

        self._examples = _prompt_examples()
        self._quiet = False  # True while the image menu changes without a new image to show

        self.image_choice = w.Dropdown(options=list(self.images), description="image")
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="upload")
        self.example_choice = w.Dropdown(options=[KEEP_PROMPT] + list(self._examples), description="example")
        self.prompt = w.Text(value=CAPTION_PROMPT if prompt is None else prompt, description="prompt",
                             layout=w.Layout(width="95%"))
        self.use_box = w.Checkbox(value=False, description="use a box")
        self.box_fields = [w.FloatText(value=v, description=n, step=0.05, layout=w.Layout(width="150px"))
                           for n, v in zip(("x0", "y0", "x1", "y1"), (0.25, 0.25, 0.75, 0.75))]
        self.button = w.Button(description=GROUND, button_style="primary")
        self.picture = w.Image(format="png", layout=w.Layout(width=f"{display_width}px"))
        self.caption = w.HTML(value=PRESS_GROUND)
        self.widget = w.VBox([
            w.HBox([self.image_choice, self.upload]),
            w.HBox([self.example_choice]),
            self.prompt,
            w.HBox([self.use_box, *self.box_fields]),
            self.button,
            self.picture,
            self.caption,
        ])
        self.button.on_click(self.on_click)
        self.upload.observe(self._on_upload, names="value")
        self.example_choice.observe(self._on_example, names="value")
        self.prompt.observe(self._on_prompt, names="value")
        self.image_choice.observe(self._on_image, names="value")
        self._on_image({"new": self.image_choice.value})

    # ----------------------------------------------------------------------------------------- logic

    def current_box(self) -> tuple[float, float, float, float] | None:
        """The box typed into the fields when "use a box" is ticked, else ``None`` (checked when used)."""
        if not self.use_box.value:
            return None
        return tuple(float(f.value) for f in self.box_fields)  # type: ignore[return-value]

    def add_image(self, name: str, image: Image.Image | bytes) -> str:
        """Add an image (PIL or file bytes, loaded with :func:`helpers.grounding.images.load_image`) to the
        choices, select and show it, and return its name: ``name`` ("uploaded image" when empty), or
        ``name (2)``, ``name (3)`` … when that is taken.

        Raises:
            TypeError: ``name`` is not a str, or ``image`` is neither a PIL image nor bytes.
            helpers.grounding.images.ImageLoadError: ``image`` cannot be used as an image.
        """
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}: {name!r:.80}")
        picture, size = load_image_and_size(image)
        name = self._new_name(name or "uploaded image")
        self.images[name], self.sizes[name] = picture, size
        self._choose(name)
        self._on_image({"new": name})
        return name

    def _new_name(self, base: str) -> str:
        """``base``, or ``base (2)``, ``base (3)`` … when that name is taken."""
        name, k = base, 1
        while name in self.images:
            k += 1
            name = f"{base} ({k})"
        return name

    def run(self, image: str | Image.Image | None = None, prompt: str | None = None,
            box: Sequence[float] | None | bool = False) -> PlaygroundResult:
        """Ground one image; the arguments default to what the widgets hold.

        Args:
            image: a name from ``images`` or a PIL image (default: the chosen one). A PIL image is made RGB,
                turned and shrunk as an upload is (:func:`helpers.grounding.images.load_image`), and added to
                the choices as "image from code" unless it is one of them already.
            prompt: the prompt (default: the prompt field).
            box: a normalized user box ``(x0, y0, x1, y1)`` for the prompt's first ``<phrase>``, ``None`` for
                no box, or ``False`` (default) to take the box fields.

        Returns:
            A :class:`PlaygroundResult`. The widgets show it, and the arguments given are written into them
            (image menu, prompt, box fields and "use a box"), so that pressing Ground grounds the same again.
            Nothing in the widgets changes when this raises.

        Raises:
            KeyError: ``image`` is a name that is not among the choices.
            TypeError: ``image`` is neither a name, a PIL image nor ``None``.
            ValueError: an empty prompt or one with ``<image>`` or location tokens, a bad box, a box with a
                prompt that has no ``<phrase>``, or an image that cannot be loaded.
        """

        if image is None:
            image = self.image_choice.value
        if isinstance(image, str):
            if image not in self.images:
                raise KeyError(f"no image called {image!r}; the choices are {list(self.images)}")
            name, picture, size = image, self.images[image], self.sizes[image]
        elif isinstance(image, Image.Image):
            picture, size = load_image_and_size(image)
            name = next((n for n, im in self.images.items()
                         if im.size == picture.size and im.tobytes() == picture.tobytes()), None)
        else:
            raise TypeError(f"image must be a name, a PIL image or None, got {type(image).__name__}")
        text = self.prompt.value if prompt is None else prompt
        check_prompt(text)
        user_box = self.current_box() if box is False else box
        bboxes = None if user_box is None else [user_box_entry(text, user_box, size)]
        if bboxes is not None:
            user_box = bboxes[0][0]  # as checked: a tuple of floats
        (grounding,) = ground(self.model, self.processor, [picture], text, bboxes=bboxes,
                              max_new_tokens=self.max_new_tokens, batch_size=1, progress=False)
        score = in_world_score(picture)
        warnings = []
        if getattr(getattr(self.model, "load_info", None), "bundled", False) and score < IN_WORLD_THRESHOLD:
            warnings.append(
                f"This image does not look like the bundled model's world (in-world score {score:.2f} < "
                f"{IN_WORLD_THRESHOLD}): it only knows flat coloured shapes, a snowman, a fire and Kumo, so "
                "expect nonsense. Load microsoft/kosmos-2-patch14-224 for photos."
            )
        warnings += [f"problem in the output: {p}" for p in grounding.problems]
        parts = [highlight_caption(grounding).html]
        parts += [_message(m) for m in warnings]
        result = PlaygroundResult(draw_entities(picture, grounding, user_box=user_box),
                                  "<div>" + "".join(parts) + "</div>", grounding, text, user_box, score, warnings)

        # the widgets now describe what was grounded: the arguments given are written into them
        if name is None:
            name = self._new_name("image from code")
            self.images[name], self.sizes[name] = picture, size
        self._choose(name)
        if prompt is not None:
            self.prompt.value = text
        if box is not False:
            self.use_box.value = user_box is not None
            for field, value in zip(self.box_fields, user_box or ()):
                field.value = value
        self.last = result
        small = self._for_display(picture)
        self._show(result.image if small is picture else draw_entities(small, grounding, user_box=user_box),
                   result.html)
        return result

    # ----------------------------------------------------------------------------------------- widget glue

    def _for_display(self, image: Image.Image) -> Image.Image:
        """``image`` shrunk to twice the display width when it is wider (``image`` itself when it is not)."""
        width = 2 * self.display_width
        if image.width <= width:
            return image
        return image.resize((width, max(1, round(image.height * width / image.width))), Image.Resampling.LANCZOS)

    def _show(self, image: Image.Image, html_text: str) -> None:
        """Show ``image`` (sized for the display already) and ``html_text`` under it."""
        self.picture.value = _png(image)
        self.caption.value = html_text

    def _choose(self, name: str) -> None:
        """Select ``name`` in the image menu, which lists every image, without showing it as a new choice.

        New options select the first image before ``name`` (the menu's own observer does, so
        ``hold_trait_notifications`` cannot join the two): that step is not shown, and the page gets both
        changes in one message.
        """
        self._quiet = True
        try:
            with self.image_choice.hold_sync():
                if list(self.image_choice.options) != list(self.images):
                    self.image_choice.options = list(self.images)
                self.image_choice.value = name
        finally:
            self._quiet = False

    def _on_image(self, change: dict) -> None:
        """A newly chosen image is shown as it is, until Ground is pressed."""
        if not self._quiet:
            self._show(self._for_display(self.images[change["new"]]), PRESS_GROUND)

    def on_click(self, _button: Any = None) -> None:
        """What the Ground button does: :meth:`run`, or show the error message instead of raising.

        While it runs, the button is disabled and reads "Grounding…". A mistake in the input shows its message;
        any other error (a model that runs out of memory, a file that cannot be read …) shows as
        ``TypeName: message``. After an error the chosen image is shown as it is and ``last`` is ``None``.
        """
        self.button.disabled, self.button.description = True, GROUNDING
        try:
            self.run()
        except Exception as err:  # shown in the page: an exception from a widget callback shows nowhere
            text = str(err) if isinstance(err, (ValueError, TypeError, KeyError)) else f"{type(err).__name__}: {err}"
            self.last = None
            self._show(self._for_display(self.images[self.image_choice.value]), _message(text))
        finally:
            self.button.disabled, self.button.description = False, GROUND

    def _on_example(self, change: dict) -> None:
        """An example sets the prompt, and ticks "use a box" when it asks about a box (unticks it otherwise)."""
        if change["new"] in self._examples:
            self.prompt.value, self.use_box.value = self._examples[change["new"]]

    def _on_prompt(self, change: dict) -> None:
        """A prompt other than the chosen example's sets the example menu back to "(keep my prompt)"."""
        chosen = self._examples.get(self.example_choice.value)
        if chosen is not None and chosen[0] != change["new"]:
            self.example_choice.value = KEEP_PROMPT

    def _on_upload(self, change: dict) -> None:
        """Add each uploaded file, then empty the upload widget so that the same file can be uploaded again."""
        if not change["new"]:
            return
        for item in change["new"]:
            name = str(item.get("name", ""))
            try:
                self.add_image(name, bytes(item["content"]))
            except ValueError as err:
                self.caption.value = _message(f"could not use the upload {name!r}: {err}")
        self.upload.value = ()
