"""helpers.world.scenes: seeded scenes are reproducible, their boxes are the tight boxes of what was drawn,
objects never overlap, groups read left to right with the right phrases, and the illustrations sit inside
the article's recorded boxes."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from helpers.course.article import article_outputs
from helpers.world.scenes import (
    COLOURS,
    KINDS,
    MIN_SIDE,
    SHAPES,
    SPECIAL_KINDS,
    Scene,
    character_illustration,
    definite_phrase,
    draw_scene,
    indefinite_phrase,
    kind_name,
    place_objects,
    sample_scene,
    sample_scenes,
    snowman_illustration,
)
from helpers.world.new_kinds import star_scene

PLAIN = (236, 240, 246)
SCENES = sample_scenes(120, seed=11)


def _pixels(scene: Scene) -> np.ndarray:
    return np.asarray(scene.image.convert("RGB")).astype(int)


def _drawn_mask(scene: Scene, background: tuple[int, int, int] | None = None) -> np.ndarray:
    """True where a pixel differs from the background (the top-left pixel unless given)."""
    a = _pixels(scene)
    bg = np.array(background) if background is not None else a[0, 0]
    return (a != bg).any(-1)


def _box_px(box, size) -> tuple[float, float, float, float]:
    w, h = size
    return (box[0] * w, box[1] * h, box[2] * w, box[3] * h)


def _bbox_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the True pixels, x1/y1 exclusive (pixel edges, like a box)."""
    ys, xs = np.nonzero(mask)
    assert len(xs), "nothing drawn"
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _inside(inner, outer, tol: float = 0.0) -> bool:
    return (inner[0] >= outer[0] - tol and inner[1] >= outer[1] - tol
            and inner[2] <= outer[2] + tol and inner[3] <= outer[3] + tol)


# --------------------------------------------------------------------------------------------- seeds


def _fingerprint(scene: Scene) -> tuple:
    return (scene.image.size, scene.image.tobytes(), [(o.colour, o.shape, o.box, o.phrase) for o in scene.objects])


def test_sample_scenes_is_deterministic_per_seed() -> None:
    a, b = sample_scenes(8, seed=3), sample_scenes(8, seed=3)
    assert [_fingerprint(s) for s in a] == [_fingerprint(s) for s in b]
    assert [s.seed for s in a] == [s.seed for s in b]


def test_different_seeds_give_different_scenes() -> None:
    a, b = sample_scenes(8, seed=3), sample_scenes(8, seed=4)
    assert all(_fingerprint(x) != _fingerprint(y) for x, y in zip(a, b))
    assert len({s.image.tobytes() for s in a}) == len(a), "scenes within one call repeat"


def test_sample_scenes_is_prefix_stable() -> None:
    short, long = sample_scenes(3, seed=9), sample_scenes(10, seed=9)
    assert [_fingerprint(s) for s in short] == [_fingerprint(s) for s in long[:3]]
    assert _fingerprint(sample_scene(long[7].seed)) == _fingerprint(long[7])


def test_sample_scenes_size_argument_fixes_the_image_size() -> None:
    scenes = sample_scenes(4, seed=2, size=(150, 90))
    assert all(s.image.size == (150, 90) for s in scenes)


def test_sample_scenes_rejects_negative_n() -> None:
    with pytest.raises(ValueError, match=r"n must be 0 or more \(a whole number\), got -1"):
        sample_scenes(-1, seed=0)
    assert sample_scenes(0, seed=0) == []


@pytest.mark.parametrize("n", [None, "2", True, 1.5])
def test_sample_scenes_takes_a_whole_number_of_scenes(n) -> None:
    """None and "2" ended in a TypeError from a comparison, True gave one scene, 1.5 two."""
    with pytest.raises(TypeError, match=r"^n must be 0 or more \(a whole number\), got "):
        sample_scenes(n, seed=0)


@pytest.mark.parametrize("seed", [None, "3", 1.5, True])
def test_seeds_are_whole_numbers(seed) -> None:
    """None drew an unrepeatable scene (or ended in a TypeError from `seed * SEED_STRIDE`), a str or a float was
    taken as a seed of random's own."""
    for draw in (lambda: sample_scene(seed), lambda: sample_scenes(2, seed), lambda: star_scene(seed)):
        with pytest.raises(TypeError, match=r"^seed must be a whole number \(an int\), got "):
            draw()


def test_numpy_seeds_draw_the_scenes_of_the_same_int() -> None:
    """np.int64 seeds ended in random.py's TypeError ("The only supported seed types are …")."""
    assert _fingerprint(sample_scene(np.int64(3))) == _fingerprint(sample_scene(3))
    assert [_fingerprint(s) for s in sample_scenes(2, np.int64(3))] == [_fingerprint(s) for s in sample_scenes(2, 3)]
    assert np.array_equal(np.asarray(star_scene(np.int64(3)).image), np.asarray(star_scene(3).image))


def test_a_size_too_small_for_the_objects_is_refused() -> None:
    """At 1 x 1 most boxes reached outside [0, 1] (x1 = 1.25); at 2 x 2 Kumo, up to 0.55 of the side wide, still
    can. From MIN_SIDE (3) pixels up every box lies inside the image."""
    assert MIN_SIDE == 3
    for size in [(1, 1), (2, 2), (2, 90), (90, 2)]:
        with pytest.raises(ValueError, match=f"size must be at least 3 x 3 pixels .*, got {size[0]} x {size[1]}$"):
            sample_scenes(1, 0, size=size)
        with pytest.raises(ValueError, match="size must be at least 3 x 3 pixels"):
            sample_scene(0, size=size)
    for size in [(3, 3), (3, 60), (60, 3), (4, 4)]:
        boxes = [o.box for s in sample_scenes(400, seed=1, size=size) for o in s.objects]
        assert len(boxes) >= 400 and all(0 <= v <= 1 for box in boxes for v in box), size


# --------------------------------------------------------------------------------------------- boxes


@pytest.mark.parametrize("colour, shape", KINDS)
@pytest.mark.parametrize("size", [(100, 80), (384, 384), (97, 131)])
def test_every_kind_fills_its_box_tightly_on_a_plain_background(colour, shape, size) -> None:
    box = (0.21, 0.13, 0.74, 0.88)
    scene = draw_scene([(colour, shape, box)], size=size, background=PLAIN)
    drawn = _bbox_of(_drawn_mask(scene, PLAIN))
    want = _box_px(box, size)
    # each edge of the box is touched by the drawing, within one pixel of rasterisation
    assert all(abs(d - w) <= 1.0 for d, w in zip(drawn, want)), (drawn, want)


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_touch_every_edge_in_their_own_colour(shape) -> None:
    """The pixels at each edge of a shape's box are its fill or its darker outline, nothing else."""
    size = (160, 120)
    for colour in COLOURS:
        fill = np.array(COLOURS[colour])
        dark = (fill * 0.55).astype(int)
        box = (0.2, 0.25, 0.7, 0.9)
        scene = draw_scene([(colour, shape, box)], size=size, background=PLAIN)
        a = _pixels(scene)
        own = (a == fill).all(-1) | (a == dark).all(-1)
        assert not (_drawn_mask(scene, PLAIN) & ~own).any(), "pixels of another colour were drawn"
        assert _bbox_of(own) == _bbox_of(_drawn_mask(scene, PLAIN))
        x0, y0, x1, y1 = _box_px(box, size)
        edges = {
            "left": own[:, math.floor(x0)], "right": own[:, math.ceil(x1) - 1],
            "top": own[math.floor(y0), :], "bottom": own[math.ceil(y1) - 1, :],
        }
        for name, line in edges.items():
            assert line.any(), f"{colour} {shape}: no pixel of its colour on the {name} edge"


def test_sampled_boxes_are_normalized_and_tight() -> None:
    for scene in SCENES:
        mask = _drawn_mask(scene)
        w, h = scene.image.size
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0, obj.box
            px = _box_px(obj.box, (w, h))
            window = np.zeros_like(mask)
            window[math.floor(px[1]):math.ceil(px[3]), math.floor(px[0]):math.ceil(px[2])] = True
            drawn = _bbox_of(mask & window)
            assert all(abs(d - p) <= 1.0 for d, p in zip(drawn, px)), (scene.seed, obj, drawn, px)


def test_nothing_is_drawn_outside_the_listed_boxes() -> None:
    for scene in SCENES:
        mask = _drawn_mask(scene)
        covered = np.zeros_like(mask)
        for obj in scene.objects:
            x0, y0, x1, y1 = _box_px(obj.box, scene.image.size)
            covered[max(0, math.floor(y0) - 1):math.ceil(y1) + 1, max(0, math.floor(x0) - 1):math.ceil(x1) + 1] = True
        assert not (mask & ~covered).any(), f"scene {scene.seed} has pixels drawn outside every box"


def test_objects_do_not_overlap() -> None:
    for scene in SCENES:
        boxes = [o.box for o in scene.objects]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                separate = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
                assert separate, (scene.seed, a, b)


def test_place_objects_records_the_box_its_drawer_returns() -> None:
    """The world's scenes and new_kinds' star scenes place objects with one loop; a drawer may draw less than
    its box (a star), and the scene then lists the tight box it returns."""
    drawn = []

    def half(draw, colour, shape, box_px):
        drawn.append((colour, shape, box_px))
        x0, y0, x1, y1 = box_px
        return (x0, y0, (x0 + x1) / 2, (y0 + y1) / 2)

    image = Image.new("RGB", (160, 120), PLAIN)
    kinds, counts = [("red", "circle"), (None, "snowman")], [2, 1]
    placed = place_objects(random.Random(4), ImageDraw.Draw(image), kinds, counts, 160, 120, draw_one=half)
    assert [(c, s) for c, s, _ in placed] == [(c, s) for c, s, _ in drawn] == [("red", "circle")] * 2 + [
        (None, "snowman")]
    for (_, _, box), (_, _, px) in zip(placed, drawn):
        assert box == pytest.approx((px[0] / 160, px[1] / 120, (px[0] + px[2]) / 320, (px[1] + px[3]) / 240))
    assert not _drawn_mask(Scene(image, []), PLAIN).any()  # only the drawer draws
    # the default drawer is draw_object, which fills the box it is given
    default = place_objects(random.Random(4), ImageDraw.Draw(image), kinds, counts, 160, 120)
    assert [b for _, _, b in default] == [(p[0] / 160, p[1] / 120, p[2] / 160, p[3] / 120) for _, _, p in drawn]
    mask = _drawn_mask(Scene(image, []), PLAIN)
    for _, _, box in default:  # the boxes lie at least 3 px apart: one pixel around each holds only its own object
        x0, y0, x1, y1 = want = _box_px(box, image.size)
        own = np.zeros_like(mask)
        own[math.floor(y0) - 1:math.ceil(y1) + 1, math.floor(x0) - 1:math.ceil(x1) + 1] = True
        drawn_box = _bbox_of(mask & own)
        assert all(abs(d - w) <= 1.0 for d, w in zip(drawn_box, want)), (drawn_box, want)


# --------------------------------------------------------------------------------------------- groups


def _centre_x(box) -> float:
    return (box[0] + box[2]) / 2


def test_groups_are_ordered_left_to_right_and_list_every_object() -> None:
    for scene in SCENES:
        assert 1 <= len(scene.groups) <= 3
        firsts = [_centre_x(g[0].box) for g in scene.groups]
        assert firsts == sorted(firsts), scene.seed
        for group in scene.groups:
            xs = [_centre_x(o.box) for o in group]
            assert xs == sorted(xs)
            assert len({(o.colour, o.shape) for o in group}) == 1, "a group mixes kinds"
        assert scene.objects == [o for g in scene.groups for o in g]
        kinds = [(g[0].colour, g[0].shape) for g in scene.groups]
        assert len(set(kinds)) == len(kinds), "two groups of one kind"


def test_pairs_are_written_as_two_plural_and_singles_with_an_article() -> None:
    pairs = 0
    for scene in SCENES:
        for group in scene.groups:
            first = group[0]
            assert all(o.phrase == group[0].phrase for o in group)
            if len(group) == 2:
                pairs += 1
                assert first.shape in SHAPES, "only coloured shapes come in pairs"
                assert first.phrase == f"two {first.colour} {first.shape}s"
            elif first.shape == "kumo":
                assert first.phrase == "Kumo"
            else:
                assert len(group) == 1 and first.phrase == f"a {kind_name(first.colour, first.shape)}"
    assert pairs >= 5, "the sample should contain some pairs"


def test_phrase_helpers() -> None:
    assert indefinite_phrase("red", "circle") == "a red circle"
    assert indefinite_phrase("red", "circle", 2) == "two red circles"
    assert indefinite_phrase(None, "snowman") == "a snowman"
    assert indefinite_phrase(None, "kumo") == "Kumo" and indefinite_phrase(None, "kumo", 2) == "two Kumos"
    assert definite_phrase("blue", "square", 2) == "the blue squares"
    assert definite_phrase(None, "fire") == "the fire" and definite_phrase(None, "kumo") == "Kumo"


def test_draw_scene_groups_like_sample_scenes() -> None:
    scene = draw_scene([("red", "circle", (0.6, 0.1, 0.8, 0.3)), (None, "fire", (0.3, 0.5, 0.5, 0.9)),
                        ("red", "circle", (0.05, 0.1, 0.25, 0.3))])
    assert [[o.name for o in g] for g in scene.groups] == [["red circle", "red circle"], ["fire"]]
    assert scene.groups[0][0].box[0] == 0.05 and scene.groups[0][0].phrase == "two red circles"


# --------------------------------------------------------------------------------------------- illustrations


def test_snowman_illustration_lies_inside_the_article_boxes() -> None:
    scene = snowman_illustration()
    by_shape = {o.shape: o for o in scene.objects}
    assert set(by_shape) == {"snowman", "fire"}
    recorded = {p: boxes[0] for p, _, boxes in article_outputs()["snowman"]["entities"]}
    snowman_box, fire_box = recorded["a snowman"], recorded["a fire"]
    assert _inside(by_shape["snowman"].box, snowman_box)
    assert _inside(by_shape["fire"].box, fire_box)
    # every drawn pixel lies inside one of the two recorded boxes
    size = scene.image.size
    drawn = _bbox_of(_drawn_mask(scene))
    union = [min(a, b) for a, b in zip(_box_px(fire_box, size)[:2], _box_px(snowman_box, size)[:2])]
    union += [max(a, b) for a, b in zip(_box_px(fire_box, size)[2:], _box_px(snowman_box, size)[2:])]
    assert _inside(drawn, union, tol=1.0)


def test_character_illustration_lies_inside_the_article_user_box() -> None:
    scene = character_illustration()
    kumo = next(o for o in scene.objects if o.shape == "kumo")
    user_box = article_outputs()["grounded_qa"]["user_box_normalized"]
    assert _inside(kumo.box, user_box)
    mask = _drawn_mask(scene)
    x0, y0, x1, y1 = _box_px(kumo.box, scene.image.size)
    only_kumo = mask.copy()
    only_kumo[:, math.ceil(x1) + 1:] = False
    assert _inside(_bbox_of(only_kumo), _box_px(user_box, scene.image.size), tol=1.0)
    assert {o.name for o in scene.objects} == {"Kumo", "yellow square"}


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("box", [(0.5, 0.1, 0.4, 0.3), (0.1, 0.3, 0.4, 0.3), (0.1, 0.1, 1.2, 0.3),
                                 (-0.1, 0.1, 0.4, 0.3), (0.1, 0.1, 0.4, float("nan"))])
def test_draw_scene_rejects_boxes_that_are_not_normalized(box) -> None:
    with pytest.raises(ValueError, match="normalized"):
        draw_scene([("red", "circle", box)])


@pytest.mark.parametrize("box", [(0.1, 0.1, 0.4), "abcd", None])
def test_draw_scene_rejects_boxes_that_are_not_four_numbers(box) -> None:
    with pytest.raises((ValueError, TypeError), match="numbers"):
        draw_scene([("red", "circle", box)])


def test_draw_scene_rejects_unknown_shapes_and_colours() -> None:
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        draw_scene([("red", "hexagon", (0.1, 0.1, 0.4, 0.3))])
    with pytest.raises(ValueError, match="colour.*'pink'"):
        draw_scene([("pink", "circle", (0.1, 0.1, 0.4, 0.3))])


def test_draw_scene_rejects_a_colour_mismatch_instead_of_mislabelling() -> None:
    # a shape needs one of the world's colours (None used to be drawn red yet labelled "a circle")
    with pytest.raises(ValueError, match="circle needs a colour"):
        draw_scene([(None, "circle", (0.1, 0.1, 0.4, 0.3))])
    # the special kinds have their own colours (a "red snowman" would be drawn white)
    with pytest.raises(ValueError, match="snowman.*no colour"):
        draw_scene([("red", "snowman", (0.1, 0.1, 0.4, 0.3))])
    assert {s for _, s in KINDS if s in SPECIAL_KINDS} == set(SPECIAL_KINDS)


@pytest.mark.parametrize("size", [(0, 10), (10, 0), (-5, 10)])
def test_draw_scene_rejects_empty_image_sizes(size) -> None:
    with pytest.raises(ValueError, match="size"):
        draw_scene([], size=size)


# ------------------------------------------------------------------------------ what the language can phrase


def test_two_snowmen_are_phrased_with_the_plural_the_vocabulary_has() -> None:
    from helpers.world.language import caption_answer, scene_examples, world_words

    assert indefinite_phrase(None, "snowman", 2) == "two snowmen"
    assert definite_phrase(None, "snowman", 2) == "the snowmen"
    assert indefinite_phrase("red", "circle", 2) == "two red circles"  # the regular plurals are unchanged
    assert indefinite_phrase(None, "fire", 2) == "two fires" and definite_phrase(None, "kumo", 2) == "the Kumos"
    scene = draw_scene([(None, "snowman", (0.05, 0.1, 0.3, 0.8)), (None, "snowman", (0.6, 0.1, 0.85, 0.8))])
    assert "<phrase> two snowmen</phrase>" in caption_answer(scene)
    words = set(world_words())
    for ex in scene_examples(scene):
        text = ex.prompt + ex.answer
        assert "snowmans" not in text
        plain = [w.strip(".,:?") for w in text.replace("<", " <").replace(">", "> ").split()]
        assert all(w in words for w in plain if w and w.isalpha() and w[0] != "<"), text


@pytest.mark.parametrize("layout, message", [
    ([("red", "circle", (0.05 + 0.3 * i, 0.1, 0.25 + 0.3 * i, 0.3)) for i in range(3)],
     "at most 2 objects of one kind.*3 of red circle"),
    ([(c, "circle", (0.02 + 0.19 * i, 0.1, 0.18 + 0.19 * i, 0.3)) for i, c in enumerate(COLOURS)],
     "at most 4 objects in all.*got 5"),
])
def test_draw_scene_refuses_scenes_the_language_cannot_phrase(layout, message) -> None:
    """Three of a kind used to be captioned "a red circle" with three boxes; five objects a KeyError later."""
    with pytest.raises(ValueError, match=message):
        draw_scene(layout)


def test_the_sampler_stays_within_what_draw_scene_accepts() -> None:
    from helpers.world.new_kinds import star_scene
    from helpers.world.scenes import MAX_OBJECTS, MAX_PER_KIND, SEED_STRIDE

    scenes = sample_scenes(600, seed=5) + [star_scene(7 * SEED_STRIDE + i) for i in range(200)]
    assert max(len(s.objects) for s in scenes) == MAX_OBJECTS
    assert max(len(g) for s in scenes for g in s.groups) == MAX_PER_KIND
    for scene in sample_scenes(40, seed=6):  # a sampled layout drawn again gives the same scene
        again = draw_scene([(o.colour, o.shape, o.box) for o in scene.objects], size=scene.image.size)
        assert [(o.name, o.box, o.phrase) for o in again.objects] == [(o.name, o.box, o.phrase) for o in scene.objects]


def test_the_texts_of_sampled_scenes_are_the_ones_the_bundled_model_learned() -> None:
    """The shipped model was trained on these texts: a change to the world's language must not move them."""
    import hashlib

    from helpers.world.language import scene_examples

    digest = hashlib.sha256()
    for scene in sample_scenes(300, seed=0):
        for ex in scene_examples(scene):
            digest.update(f"{ex.task}|{ex.prompt}|{ex.answer}\n".encode())
    assert digest.hexdigest() == "57d7b2ad47df905bf45b13c7cf6aa4ddf645ef76bcfec57186f9443318c12a01"


@pytest.mark.parametrize("size", [(0, 0), (40, 40.0), (40,), "40x40", (True, 40)])
def test_sample_scene_checks_its_size_like_draw_scene(size) -> None:
    """(0, 0) used to end in a ZeroDivisionError, (40, 40.0) in a TypeError from Pillow."""
    with pytest.raises(ValueError, match=r"size must be \(width, height\), two positive ints"):
        sample_scene(3, size=size)
    with pytest.raises(ValueError, match=r"size must be \(width, height\), two positive ints"):
        sample_scenes(2, seed=1, size=size)


def test_sample_scene_takes_numpy_sizes() -> None:
    scene = sample_scene(3, size=(np.int64(120), np.int64(90)))
    assert scene.image.size == (120, 90)
    assert _fingerprint(scene) == _fingerprint(sample_scene(3, size=(120, 90)))
