"""A small world the project can draw: seeded scenes for training and testing the bundled model.

Every scene is drawn with Pillow from a seed, so the same seed always gives the same pixels. Objects are
coloured shapes (circle, square, triangle in five colours), a snowman, a fire and the course mascot
*Kumo* (a small sky-blue creature with pointed cat ears). A scene holds one to three *groups*; a group is one object
or, sometimes, two objects of the same kind ("two red circles"), which Kosmos-2 writes as one phrase with several
boxes. The world's language phrases at most :data:`MAX_PER_KIND` objects of one kind and :data:`MAX_OBJECTS` in all,
which is what :func:`sample_scene` draws; :func:`draw_scene` refuses more.

Boxes are normalized ``(x0, y0, x1, y1)`` in ``[0, 1]``: the tight box around what was drawn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from PIL import Image, ImageDraw

from helpers.grounding.boxes import Box, check_image_size, check_with_area
from helpers.grounding.checks import check_count, check_seed

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 170),
}
#: The colours of the snowman, the fire and Kumo, by part (they do not take one of :data:`COLOURS`).
SPECIAL_COLOURS: dict[str, dict[str, tuple[int, int, int]]] = {
    "snowman": {"snow": (250, 250, 252), "line": (60, 60, 70), "carrot": (245, 130, 20)},
    "fire": {"logs": (110, 60, 25), "outer flame": (255, 60, 20), "middle flame": (255, 150, 20),
             "core flame": (255, 230, 80)},
    "kumo": {"body": (120, 200, 245), "line": (30, 70, 120), "eyes": (20, 20, 30), "cheeks": (250, 140, 170)},
}
SHAPES = ("circle", "square", "triangle")
SPECIAL_KINDS = ("snowman", "fire", "kumo")

#: Every kind of object in the world, as (colour or None, shape).
KINDS: tuple[tuple[str | None, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES) + tuple(
    (None, s) for s in SPECIAL_KINDS
)

_NUMBER_WORDS = {1: "one", 2: "two"}
#: Most objects of one kind in a scene ("two red circles"), and most objects in all ("four objects"): what the
#: world's language can phrase (:mod:`helpers.world.language`) and what :func:`sample_scene` draws.
MAX_PER_KIND, MAX_OBJECTS = 2, 4
_IRREGULAR_PLURALS = {"snowman": "snowmen"}
#: Scene ``i`` of :func:`sample_scenes` with ``seed`` is ``sample_scene(seed * SEED_STRIDE + i)``: the scenes of two
#: seeds overlap only past ``SEED_STRIDE`` scenes.
SEED_STRIDE = 1_000_003
#: The shortest side, in pixels, of a scene :func:`sample_scene` draws at a given size: its widest object (Kumo, up
#: to 0.55 of the shorter side) must fit inside with the pixel it keeps from the edge; 2 pixels would let it out.
MIN_SIDE = 3


def _plural(name: str) -> str:
    """``"red circles"``, ``"Kumos"``, ``"snowmen"`` (the plural the world's vocabulary has)."""
    return _IRREGULAR_PLURALS.get(name, name + "s")


def kind_name(colour: str | None, shape: str) -> str:
    """The bare name of a kind: ``"red circle"``, ``"snowman"``, ``"Kumo"``."""
    if shape == "kumo":
        return "Kumo"
    return f"{colour} {shape}" if colour else shape


def indefinite_phrase(colour: str | None, shape: str, count: int = 1) -> str:
    """The phrase a caption uses for a group: ``"a red circle"``, ``"two red circles"``, ``"Kumo"``, ``"two snowmen"``.
    """
    name = kind_name(colour, shape)
    if count == 1:
        return name if shape == "kumo" else f"a {name}"
    return f"{_NUMBER_WORDS[count]} {_plural(name)}"


def definite_phrase(colour: str | None, shape: str, count: int = 1) -> str:
    """The phrase a referring expression uses: ``"the red circle"``, ``"the red circles"``, ``"the snowmen"``."""
    name = kind_name(colour, shape)
    if count == 1:
        return name if shape == "kumo" else f"the {name}"
    return f"the {_plural(name)}"


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its kind, its group's caption phrase and its normalized box."""

    colour: str | None
    shape: str
    box: Box
    phrase: str  # the caption phrase of its group, e.g. "a red circle" or "two red circles"

    @property
    def name(self) -> str:
        return kind_name(self.colour, self.shape)


@dataclass
class Scene:
    """A drawn image and the objects in it (grouped by kind, groups ordered left to right)."""

    image: Image.Image
    objects: list[SceneObject]
    seed: int = 0
    groups: list[list[SceneObject]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- drawing


def outline_width(w: float, h: float) -> int:
    """The width, in pixels, of the outline of an object drawn in a ``w`` x ``h`` pixel box (at least 1)."""
    return max(1, round(min(w, h) / 14))


def outline_colour(colour: str) -> tuple[int, int, int]:
    """The darker colour a shape of ``colour`` (one of :data:`COLOURS`) is outlined in."""
    return tuple(int(c * 0.55) for c in COLOURS[colour])  # type: ignore[return-value]


def object_colours() -> dict[str, tuple[int, int, int]]:
    """Every colour an object of the world is painted with, named: ``"red"``, ``"red outline"``, ``"kumo body"``…"""
    named = {}
    for name, rgb in COLOURS.items():
        named[name] = rgb
        named[f"{name} outline"] = outline_colour(name)
    for kind, parts in SPECIAL_COLOURS.items():
        named.update({f"{kind} {part}": rgb for part, rgb in parts.items()})
    return named


def check_kind(colour: str | None, shape: str) -> None:
    """Raise ``ValueError`` unless ``(colour, shape)`` is a kind of the world (see :data:`KINDS`).

    Coloured shapes need one of :data:`COLOURS`; the snowman, the fire and Kumo have their own colours
    and take ``None``.
    """
    if shape in SHAPES:
        if colour not in COLOURS:
            raise ValueError(f"a {shape} needs a colour, one of {tuple(COLOURS)}; got {colour!r}")
    elif shape in SPECIAL_KINDS:
        if colour is not None:
            raise ValueError(f"a {shape} has its own colours: give no colour (None), got {colour!r}")
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES + SPECIAL_KINDS}")


def draw_object(draw: ImageDraw.ImageDraw, colour: str | None, shape: str, box_px: Box) -> None:
    """Draw one object so that it fills the pixel box ``box_px`` (x0, y0, x1, y1).

    Raises:
        ValueError: ``(colour, shape)`` is not a kind of the world (:func:`check_kind`).
    """
    check_kind(colour, shape)
    x0, y0, x1, y1 = box_px
    w, h = x1 - x0, y1 - y0
    if shape in SHAPES:
        fill = COLOURS[colour]
        dark = outline_colour(colour)
        ow = outline_width(w, h)
        if shape == "circle":
            draw.ellipse(box_px, fill=fill, outline=dark, width=ow)
        elif shape == "square":
            draw.rectangle(box_px, fill=fill, outline=dark, width=ow)
        else:
            draw.polygon([(x0 + w / 2, y0), (x1, y1), (x0, y1)], fill=fill, outline=dark, width=ow)
    elif shape == "snowman":
        _draw_snowman(draw, box_px)
    elif shape == "fire":
        _draw_fire(draw, box_px)
    else:  # Kumo: check_kind has refused every other shape
        _draw_kumo(draw, box_px)


def _draw_snowman(draw: ImageDraw.ImageDraw, box: Box) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    ow = outline_width(w, h)
    white, line = SPECIAL_COLOURS["snowman"]["snow"], SPECIAL_COLOURS["snowman"]["line"]
    # body (lower 62 %), head (upper 44 %, over the body's top); the body fills the full width
    body = (x0, y0 + 0.38 * h, x1, y1)
    hw = 0.33 * w
    head = (x0 + w / 2 - hw, y0, x0 + w / 2 + hw, y0 + 0.44 * h)
    draw.ellipse(body, fill=white, outline=line, width=ow)
    draw.ellipse(head, fill=white, outline=line, width=ow)
    # eyes, carrot nose, buttons
    r = max(1.0, 0.04 * w)
    for ex in (x0 + 0.42 * w, x0 + 0.58 * w):
        draw.ellipse((ex - r, y0 + 0.16 * h - r, ex + r, y0 + 0.16 * h + r), fill=line)
    draw.polygon(
        [(x0 + 0.5 * w, y0 + 0.22 * h), (x0 + 0.5 * w, y0 + 0.29 * h), (x0 + 0.72 * w, y0 + 0.26 * h)],
        fill=SPECIAL_COLOURS["snowman"]["carrot"],
    )
    for by in (0.58, 0.72, 0.86):
        draw.ellipse((x0 + 0.5 * w - r, y0 + by * h - r, x0 + 0.5 * w + r, y0 + by * h + r), fill=line)


def _draw_fire(draw: ImageDraw.ImageDraw, box: Box) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    # logs along the bottom
    paint = SPECIAL_COLOURS["fire"]
    draw.rectangle((x0, y1 - 0.16 * h, x1, y1), fill=paint["logs"])
    # three flames, outer red, inner orange, core yellow
    flames = [
        (paint["outer flame"], [(x0, y1 - 0.14 * h), (x0 + 0.22 * w, y0 + 0.35 * h), (x0 + 0.38 * w, y0 + 0.55 * h),
                         (x0 + 0.5 * w, y0), (x0 + 0.66 * w, y0 + 0.5 * h), (x0 + 0.8 * w, y0 + 0.3 * h),
                         (x1, y1 - 0.14 * h)]),
        (paint["middle flame"], [(x0 + 0.18 * w, y1 - 0.14 * h), (x0 + 0.36 * w, y0 + 0.55 * h),
                          (x0 + 0.5 * w, y0 + 0.3 * h), (x0 + 0.64 * w, y0 + 0.6 * h), (x0 + 0.82 * w, y1 - 0.14 * h)]),
        (paint["core flame"], [(x0 + 0.36 * w, y1 - 0.14 * h), (x0 + 0.5 * w, y0 + 0.6 * h),
                               (x0 + 0.64 * w, y1 - 0.14 * h)]),
    ]
    for colour, points in flames:
        draw.polygon(points, fill=colour)


def _draw_kumo(draw: ImageDraw.ImageDraw, box: Box) -> None:
    """The course mascot: a round sky-blue cat-like creature with pointed ears, eyes and pink cheeks."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    ow = outline_width(w, h)
    paint = SPECIAL_COLOURS["kumo"]
    body, line = paint["body"], paint["line"]
    # ears (triangles) at the top, body below them
    for ex in (0.22, 0.78):
        draw.polygon(
            [(x0 + (ex - 0.14) * w, y0 + 0.32 * h), (x0 + ex * w, y0), (x0 + (ex + 0.14) * w, y0 + 0.32 * h)],
            fill=body, outline=line, width=ow,
        )
    draw.ellipse((x0, y0 + 0.18 * h, x1, y1), fill=body, outline=line, width=ow)
    r = max(1.0, 0.06 * w)
    for ex in (0.36, 0.64):
        cx, cy = x0 + ex * w, y0 + 0.52 * h
        draw.ellipse((cx - r, cy - 1.4 * r, cx + r, cy + 1.4 * r), fill=paint["eyes"])
    rc = max(1.0, 0.07 * w)
    for ex in (0.2, 0.8):
        cx, cy = x0 + ex * w, y0 + 0.68 * h
        draw.ellipse((cx - rc, cy - 0.7 * rc, cx + rc, cy + 0.7 * rc), fill=paint["cheeks"])
    draw.arc((x0 + 0.42 * w, y0 + 0.6 * h, x0 + 0.58 * w, y0 + 0.76 * h), 20, 160, fill=line, width=ow)


# --------------------------------------------------------------------------------------------- scenes

#: (width / height) of each special kind's box; shapes are square in pixels.
_ASPECT = {"snowman": 0.62, "fire": 0.85, "kumo": 1.1}


def _object_size(rng: random.Random, shape: str, width: int, height: int) -> tuple[float, float]:
    """A random pixel size for an object: the special kinds keep their aspect (:data:`_ASPECT`); every other
    shape (the coloured shapes, :mod:`helpers.world.new_kinds`' stars) is square."""
    side = min(width, height)
    if shape not in _ASPECT:
        s = rng.uniform(0.2, 0.4) * side
        return s, s
    h = rng.uniform(0.32, 0.5) * side
    return _ASPECT[shape] * h, h


def _overlaps(a: Box, b: Box, margin: float) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def random_background(rng: random.Random) -> tuple[int, int, int]:
    """A light background colour drawn from ``rng`` (each channel 215 to 250)."""
    return tuple(rng.randint(215, 250) for _ in range(3))  # type: ignore[return-value]


def random_size(rng: random.Random) -> tuple[int, int]:
    """A scene's ``(width, height)`` drawn from ``rng``: 96 to 192 pixels on the long side, aspect 0.75 to 1.33."""
    long_side = rng.randint(96, 192)
    aspect = rng.uniform(0.75, 1.33)
    return (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)


def place_objects(
    rng: random.Random,
    draw: ImageDraw.ImageDraw,
    kinds: Sequence[tuple[str | None, str]],
    counts: Sequence[int],
    width: int,
    height: int,
    draw_one: Callable[[ImageDraw.ImageDraw, str | None, str, Box], Box] | None = None,
) -> list[tuple[str | None, str, Box]]:
    """Draw ``counts[i]`` objects of ``kinds[i]`` at random places of a ``width`` x ``height`` image, none
    closer than 3 % of the shorter side to another; return ``(colour, shape, normalized box)`` for each one drawn.

    An object that finds no room in 60 tries is left out (the scene then lists only what was drawn).
    ``draw_one(draw, colour, shape, box_px)`` draws one object in its pixel box and returns the tight pixel box
    of what it drew; the default, :func:`draw_object`, fills the box.
    """
    placed: list[tuple[str | None, str, Box]] = []
    taken: list[Box] = []
    margin = 0.03 * min(width, height)
    for (colour, shape), count in zip(kinds, counts):
        for _ in range(count):
            for _attempt in range(60):
                w, h = _object_size(rng, shape, width, height)
                x0 = rng.uniform(1, width - w - 1)
                y0 = rng.uniform(1, height - h - 1)
                cand = (x0, y0, x0 + w, y0 + h)
                if not any(_overlaps(cand, b, margin) for b in taken):
                    break
            else:
                continue  # no room left: draw fewer objects
            taken.append(cand)
            if draw_one is None:
                draw_object(draw, colour, shape, cand)
                box = cand
            else:
                box = draw_one(draw, colour, shape, cand)
            placed.append((colour, shape, (box[0] / width, box[1] / height, box[2] / width, box[3] / height)))
    return placed


def draw_scene(
    layout: Iterable[tuple[str | None, str, Box]],
    size: tuple[int, int] = (384, 384),
    background: tuple[int, int, int] = (236, 240, 246),
) -> Scene:
    """Draw objects at given normalized boxes; each item is ``(colour or None, shape, box)``.

    Objects of the same kind form one group, as in :func:`sample_scenes`. Useful for illustrations. A scene
    holds what the world's language can phrase, as the sampled ones do: at most :data:`MAX_PER_KIND` objects of
    one kind and :data:`MAX_OBJECTS` in all.

    Raises:
        ValueError: a box that is not four numbers with ``0 <= x0 < x1 <= 1`` and ``0 <= y0 < y1 <= 1``, a
            kind that is not in the world (:func:`check_kind`), more objects of one kind or in all than the
            language can phrase, or a size that is not two positive ints.
    """
    width, height = check_image_size(size, "size")
    items = []
    for colour, shape, box in layout:
        check_kind(colour, shape)
        items.append((colour, shape, check_with_area(box)))
    counts: dict[tuple[str | None, str], int] = {}
    for colour, shape, _ in items:
        counts[(colour, shape)] = counts.get((colour, shape), 0) + 1
    supported = (f"the world's language phrases at most {MAX_PER_KIND} objects of one kind (\"two red circles\") "
                 f"and at most {MAX_OBJECTS} objects in all")
    for (colour, shape), n in counts.items():
        if n > MAX_PER_KIND:
            raise ValueError(f"{supported}; got {n} of {kind_name(colour, shape)}")
    if len(items) > MAX_OBJECTS:
        raise ValueError(f"{supported}; got {len(items)}")
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    placed = []
    for colour, shape, box in items:
        px = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
        draw_object(draw, colour, shape, px)
        placed.append((colour, shape, tuple(float(v) for v in box)))
    return scene_from_placed(image, placed, seed=-1)


def scene_from_placed(image: Image.Image, placed: Iterable[tuple[str | None, str, Box]], seed: int) -> Scene:
    """The :class:`Scene` of ``image``, whose objects ``(colour, shape, normalized box)`` are drawn: objects of one
    kind form a group phrased by their count, objects and groups ordered left to right."""
    by_kind: dict[tuple[str | None, str], list[Box]] = {}
    for colour, shape, box in placed:
        by_kind.setdefault((colour, shape), []).append(box)
    groups: list[list[SceneObject]] = []
    for (colour, shape), boxes in by_kind.items():
        boxes = sorted(boxes, key=lambda b: (b[0] + b[2]) / 2)
        phrase = indefinite_phrase(colour, shape, len(boxes))  # at most MAX_PER_KIND of a kind: draw_scene checks
        groups.append([SceneObject(colour, shape, b, phrase) for b in boxes])
    groups.sort(key=lambda g: (g[0].box[0] + g[0].box[2]) / 2)
    objects = [o for g in groups for o in g]
    return Scene(image=image, objects=objects, seed=seed, groups=groups)


def _check_size(size) -> tuple[int, int]:
    width, height = check_image_size(size, "size")
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"size must be at least {MIN_SIDE} x {MIN_SIDE} pixels for the world's objects to fit in it, "
                         f"got {width} x {height}")
    return width, height


def sample_scene(seed: int, size: tuple[int, int] | None = None) -> Scene:
    """One seeded scene: 1–3 groups of distinct kinds, a quarter of scenes with a pair of one kind.

    ``seed``: a whole number (numpy ints too). ``size``: ``(width, height)`` in pixels, each at least
    :data:`MIN_SIDE` (default: drawn from the seed, 96 to 192 pixels on the long side).

    Raises:
        TypeError: a ``seed`` that is not a whole number (``None`` would draw an unrepeatable scene).
        ValueError: a ``size`` that is not two positive ints, or has a side below :data:`MIN_SIDE`.
    """
    seed = check_seed("seed", seed)
    if size is not None:
        size = _check_size(size)
    rng = random.Random(seed)
    width, height = random_size(rng) if size is None else size
    n_groups = rng.choice((1, 2, 2, 3, 3))
    kinds = rng.sample(KINDS, n_groups)
    counts = [1] * n_groups
    if rng.random() < 0.25:
        shape_groups = [i for i, (_, s) in enumerate(kinds) if s in SHAPES]
        if shape_groups:
            counts[rng.choice(shape_groups)] = 2
    image = Image.new("RGB", (width, height), random_background(rng))
    placed = place_objects(rng, ImageDraw.Draw(image), kinds, counts, width, height)
    return scene_from_placed(image, placed, seed=seed)


def sample_scenes(n: int, seed: int, size: tuple[int, int] | None = None) -> list[Scene]:
    """``n`` scenes from ``seed``; scene ``i`` depends only on ``(seed, i)``, so any prefix is reproducible.

    Raises:
        TypeError: an ``n`` or a ``seed`` that is not a whole number (numpy ints are).
        ValueError: a negative ``n``, or a ``size`` :func:`sample_scene` refuses.
    """
    n = check_count("n", n)
    seed = check_seed("seed", seed)
    if size is not None:
        size = _check_size(size)
    return [sample_scene(seed * SEED_STRIDE + i, size=size) for i in range(n)]


# --------------------------------------------------------------------------------------------- illustrations


def snowman_illustration(size: tuple[int, int] = (512, 384)) -> Scene:
    """The project's own snowman-by-a-fire picture, each object drawn inside the article's recorded box.

    The objects keep the sizes of the world's training scenes, so the bundled model meets them in its world.
    """
    return draw_scene(
        [(None, "fire", (0.215, 0.42, 0.47, 0.82)), (None, "snowman", (0.6, 0.3, 0.82, 0.78))],
        size=size,
        background=(228, 236, 246),
    )


def character_illustration(size: tuple[int, int] = (526, 344)) -> Scene:
    """The project's mascot Kumo beside a yellow square; the question step asks about Kumo."""
    return draw_scene(
        [(None, "kumo", (0.05, 0.42, 0.37, 0.96)), ("yellow", "square", (0.6, 0.2, 0.85, 0.58))],
        size=size,
        background=(240, 238, 228),
    )
