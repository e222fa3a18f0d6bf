"""Tests for helpers.grounding.plotting: colours, boxes, labels, figures, highlighted captions, grid and user box."""

from __future__ import annotations

import html.parser
import math
import re
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # never open windows while testing

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageCms  # noqa: E402

from helpers.grounding.boxes import to_pixels  # noqa: E402
from helpers.grounding.plotting import (  # noqa: E402
    PALETTE,
    HighlightedCaption,
    _font,
    draw_entities,
    draw_grid,
    draw_user_box,
    entity_colour,
    highlight_caption,
    label_boxes,
    plot_entities,
)
from helpers.world.scenes import object_colours, sample_scenes, snowman_illustration  # noqa: E402
from helpers.grounding.tokens import Entity, Grounding, parse_generation  # noqa: E402

WHITE = (255, 255, 255)


def rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[k : k + 2], 16) for k in (1, 3, 5))  # type: ignore[return-value]


def px(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = to_pixels(box, size)
    return round(x0), round(y0), round(x1), round(y1)


CAPTION = "Two dogs & a <cat> near a tree."
ENTITIES = [
    ("Two dogs", (0, 8), [(0.05, 0.30, 0.30, 0.70), (0.35, 0.30, 0.55, 0.75)]),
    ("a <cat>", (11, 18), [(0.60, 0.40, 0.90, 0.85)]),
    ("a tree", (24, 30), [(0.70, 0.05, 0.95, 0.35)]),
]


def overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# --------------------------------------------------------------------------------------------- colours


def test_palette_is_fixed_hex_and_entity_colour_cycles() -> None:
    n = len(PALETTE)
    assert n >= 5 and all(re.fullmatch(r"#[0-9A-F]{6}", c) for c in PALETTE)
    assert [entity_colour(i) for i in range(n)] == list(PALETTE)
    assert entity_colour(n) == PALETTE[0] and entity_colour(2 * n + 3) == PALETTE[3]
    for bad in (-1, 1.5, True, "0", np.int64(-1), np.float64(1.0)):
        with pytest.raises(ValueError, match="non-negative int"):
            entity_colour(bad)  # type: ignore[arg-type]
    assert entity_colour(np.int64(n + 1)) == entity_colour(np.int32(1)) == PALETTE[1]  # numpy ints (np.argmax …)


def lab(colours: list[tuple[int, int, int]]) -> list[tuple[float, float, float]]:
    """CIELAB (L in 0..100) of sRGB colours, converted by Pillow's colour management (LittleCMS)."""
    strip = Image.new("RGB", (len(colours), 1))
    strip.putdata(colours)
    srgb_to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    out = ImageCms.applyTransform(strip, srgb_to_lab)
    return [(L * 100 / 255, a - 128, b - 128) for L, a, b in (out.getpixel((x, 0)) for x in range(len(colours)))]


def delta_e94(p: tuple[float, float, float], q: tuple[float, float, float]) -> float:
    """CIE94 colour difference (graphic-arts weights), taken symmetric (the smaller of both directions)."""

    def one_way(ref: tuple[float, float, float], other: tuple[float, float, float]) -> float:
        (l1, a1, b1), (l2, a2, b2) = ref, other
        c1, c2 = math.hypot(a1, b1), math.hypot(a2, b2)
        dh2 = max((a1 - a2) ** 2 + (b1 - b2) ** 2 - (c1 - c2) ** 2, 0.0)
        return math.sqrt((l1 - l2) ** 2 + ((c1 - c2) / (1 + 0.045 * c1)) ** 2 + dh2 / (1 + 0.015 * c1) ** 2)

    return min(one_way(p, q), one_way(q, p))


FAR = 20.0  # CIE94 units: two colours this far apart are told apart at a glance


def test_delta_e94_measures_what_the_eye_sees() -> None:
    red, darker_red, blue = lab([(220, 40, 40), (200, 40, 40), (40, 80, 220)])
    assert delta_e94(red, red) == 0
    assert delta_e94(red, darker_red) < 5 < FAR < delta_e94(red, blue)


def test_every_palette_colour_is_far_from_every_world_colour_and_from_each_other() -> None:
    world = object_colours()
    assert {"red", "blue", "kumo body", "fire outer flame", "snowman snow"} <= set(world)
    world_lab = dict(zip(world, lab(list(world.values()))))
    palette_lab = dict(zip(PALETTE, lab([rgb(c) for c in PALETTE])))
    for colour, p in palette_lab.items():
        nearest = min(world_lab, key=lambda name: delta_e94(p, world_lab[name]))
        assert delta_e94(p, world_lab[nearest]) >= FAR, (colour, nearest, delta_e94(p, world_lab[nearest]))
    for i, a in enumerate(PALETTE):
        for b in PALETTE[i + 1 :]:
            assert delta_e94(palette_lab[a], palette_lab[b]) >= FAR, (a, b)


def test_label_font_keeps_the_spaces_between_words() -> None:
    for size in (11, 14, 20):
        font = _font(size)
        assert font.getlength(" ") >= 0.25 * size, size
        assert font.getlength("two red circles") >= font.getlength("tworedcircles") + 2 * 0.25 * size


# --------------------------------------------------------------------------------------------- boxes


def test_every_box_is_drawn_in_its_entity_colour() -> None:
    size = (400, 300)
    plain = Image.new("RGB", size, WHITE)
    out = draw_entities(plain, ENTITIES)
    assert out.mode == "RGB" and out.size == size
    labels = [lab.rect_px for lab in label_boxes(size, ENTITIES)]
    for i, (_, _, boxes) in enumerate(ENTITIES):
        colour = rgb(entity_colour(i))
        for box in boxes:
            x0, y0, x1, y1 = px(box, size)
            cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
            assert out.getpixel((x0, cy)) == colour  # left edge
            assert out.getpixel((x1 - 1, cy)) == colour  # right edge
            assert out.getpixel((cx, y1 - 1)) == colour  # bottom edge
            top_points = [(x, y0) for x in range(x0, x1)
                          if not any(rect[0] <= x < rect[2] and rect[1] <= y0 < rect[3] for rect in labels)]
            assert top_points and all(out.getpixel(p) == colour for p in top_points[:5])  # top edge
            assert out.getpixel((cx, cy)) == WHITE  # outlines only, never filled
    assert plain.getpixel((80, 150)) == WHITE  # the input is untouched


def test_multi_box_entity_uses_one_colour_and_gets_a_label_per_box() -> None:
    size = (400, 300)
    out = draw_entities(Image.new("RGB", size, WHITE), ENTITIES[:1])
    colour = rgb(entity_colour(0))
    for box in ENTITIES[0][2]:
        x0, y0, x1, y1 = px(box, size)
        assert out.getpixel((x0, (y0 + y1) // 2)) == colour
    labels = label_boxes(size, ENTITIES[:1])
    assert [(lab.entity_index, lab.box_index, lab.text) for lab in labels] == [(0, 0, "Two dogs"), (0, 1, "Two dogs")]
    assert sum(1 for c in np.asarray(out).reshape(-1, 3).tolist() if tuple(c) == colour) > 500


def test_drawing_is_deterministic_and_colour_follows_entity_order() -> None:
    scene = snowman_illustration()
    first = draw_entities(scene.image, ENTITIES)
    second = draw_entities(scene.image, ENTITIES)
    assert first.tobytes() == second.tobytes()
    swapped = draw_entities(Image.new("RGB", (400, 300), WHITE), [ENTITIES[1], ENTITIES[0]])
    x0, y0, x1, y1 = px(ENTITIES[1][2][0], (400, 300))
    assert swapped.getpixel((x0, (y0 + y1) // 2)) == rgb(entity_colour(0))


def test_labels_sit_above_boxes_with_colour_background_and_contrasting_text() -> None:
    size = (400, 300)
    out = draw_entities(Image.new("RGB", size, WHITE), ENTITIES)
    labels = label_boxes(size, ENTITIES)
    for lab in labels:
        box_px = px(ENTITIES[lab.entity_index][2][lab.box_index], size)
        lx0, ly0, lx1, ly1 = lab.rect_px
        if lab.entity_index == 0 and lab.box_index == 0:
            assert (ly1, lx0) == (box_px[1], box_px[0])  # room above: label right on top of the box
        region = np.asarray(out.crop(lab.rect_px)).reshape(-1, 3)
        colour = entity_colour(lab.entity_index)
        background = sum(1 for c in region.tolist() if tuple(c) == rgb(colour))
        assert background > 0.4 * len(region)  # filled in the entity colour
        luminance = region.mean(axis=1)
        text_is_dark = luminance.min() < np.mean(rgb(colour)) - 60
        text_is_light = luminance.max() > np.mean(rgb(colour)) + 60
        assert text_is_dark or text_is_light  # some text pixels contrast with the background


def test_labels_stay_inside_the_image_and_do_not_overlap_when_crowded() -> None:
    size = (320, 240)
    crowded = [(f"thing number {i}", (0, 1), [(0.0, 0.0, 0.3 + 0.05 * i, 0.2)]) for i in range(8)]
    crowded.append(("right edge", (0, 1), [(0.9, 0.9, 1.0, 1.0)]))
    crowded.append(("everything", (0, 1), [(0.0, 0.0, 1.0, 1.0)]))
    labels = label_boxes(size, crowded)
    assert len(labels) == len(crowded)
    for lab in labels:
        x0, y0, x1, y1 = lab.rect_px
        assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1], lab
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            assert not overlap(a.rect_px, b.rect_px), (a, b)
    draw_entities(Image.new("RGB", size, WHITE), crowded)  # and it draws


def test_long_phrase_is_shortened_to_fit() -> None:
    size = (120, 90)
    long_phrase = "an extraordinarily long description of a small red circle"
    (label,) = label_boxes(size, [(long_phrase, (0, 1), [(0.1, 0.5, 0.5, 0.9)])])
    assert label.text.endswith("...") and long_phrase.startswith(label.text[:-3])
    assert label.rect_px[2] <= size[0]


def test_line_width_and_font_scale_with_the_image() -> None:
    entity = [("x", (0, 1), [(0.25, 0.25, 0.75, 0.75)])]

    def left_edge_width(side: int) -> int:
        out = np.asarray(draw_entities(Image.new("RGB", (side, side), WHITE), entity, show_labels=False))
        row = out[side // 2]
        return int(sum(1 for c in row.tolist() if tuple(c) == rgb(entity_colour(0)))) // 2

    assert left_edge_width(200) == 2
    assert left_edge_width(1600) == 10
    small = label_boxes((200, 200), entity)[0].rect_px
    large = label_boxes((1600, 1600), entity)[0].rect_px
    assert (large[3] - large[1]) > 2 * (small[3] - small[1])
    fixed = label_boxes((1600, 1600), entity, font_size=11)[0].rect_px  # 11 is the 200 px default
    assert fixed[3] - fixed[1] == small[3] - small[1]
    explicit = np.asarray(draw_entities(Image.new("RGB", (200, 200), WHITE), entity, line_width=7, show_labels=False))
    assert sum(1 for c in explicit[100].tolist() if tuple(c) == rgb(entity_colour(0))) == 14


def test_show_labels_false_draws_only_boxes() -> None:
    size = (400, 300)
    with_labels = np.asarray(draw_entities(Image.new("RGB", size, WHITE), ENTITIES))
    without = np.asarray(draw_entities(Image.new("RGB", size, WHITE), ENTITIES, show_labels=False))
    lx0, ly0, lx1, ly1 = label_boxes(size, ENTITIES)[0].rect_px
    assert (without[ly0:ly1, lx0 + 5 : lx1 - 5] == 255).all()
    assert not (with_labels[ly0:ly1, lx0 + 5 : lx1 - 5] == 255).all()


@pytest.mark.parametrize("flag", ["no", 0, None])
def test_show_labels_must_be_true_or_false(flag) -> None:
    """``show_labels="no"`` is truthy: it drew the labels."""
    with pytest.raises(TypeError, match=rf"^show_labels must be True or False, got {type(flag).__name__}: "):
        draw_entities(Image.new("RGB", (40, 30), WHITE), ENTITIES, show_labels=flag)


def test_empty_entities_give_a_copy_and_other_modes_become_rgb() -> None:
    scene = snowman_illustration()
    out = draw_entities(scene.image, [])
    assert out is not scene.image and out.tobytes() == scene.image.convert("RGB").tobytes()
    grey = Image.new("L", (50, 40), 128)
    out = draw_entities(grey, [("a", (0, 1), [(0.1, 0.1, 0.9, 0.9)])])
    assert out.mode == "RGB" and grey.mode == "L"


def test_all_input_forms_give_the_same_picture() -> None:
    scene = snowman_illustration()
    text = (
        "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>"
        " warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>."
    )
    grounding = parse_generation(text)
    assert len(grounding.entities) == 2
    tuples = grounding.entity_tuples()

    @dataclass
    class Loose:  # any object with phrase/span/boxes will do
        phrase: str
        span: tuple[int, int]
        boxes: list = field(default_factory=list)

    forms = [
        grounding,
        grounding.entities,
        tuples,
        (grounding.caption, tuples),
        [Loose(*t) for t in tuples],
        [Entity(*t) for t in tuples],
    ]
    pictures = [draw_entities(scene.image, form).tobytes() for form in forms]
    assert all(p == pictures[0] for p in pictures)
    assert pictures[0] != scene.image.tobytes()


def test_invalid_inputs_raise_clear_errors() -> None:
    image = Image.new("RGB", (100, 80), WHITE)
    with pytest.raises(TypeError, match="PIL.Image.Image .*load_image"):
        draw_entities(np.zeros((80, 100, 3), dtype=np.uint8), ENTITIES)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a Grounding"):
        draw_entities(image, "a dog")
    with pytest.raises(TypeError, match="entity 0 must have .phrase"):
        draw_entities(image, [("a dog", [(0.1, 0.1, 0.2, 0.2)])])
    with pytest.raises(TypeError, match="phrase must be a str"):
        draw_entities(image, [(3, (0, 1), [(0.1, 0.1, 0.2, 0.2)])])
    with pytest.raises(ValueError, match=r"entity 1 \('b'\), box 0: normalized box values must lie in \[0, 1\]"):
        draw_entities(image, [("a", (0, 1), [(0.1, 0.1, 0.2, 0.2)]), ("b", (2, 3), [(10, 10, 50, 40)])])
    with pytest.raises(ValueError, match="one bare box .*wrap it in a list"):
        draw_entities(image, [("a", (0, 1), (0.1, 0.1, 0.2, 0.2))])
    with pytest.raises(ValueError, match="one bare box .*wrap it in a list"):  # numpy numbers too, as in tokens
        draw_entities(image, [("a", (0, 1), tuple(np.array((0.1, 0.1, 0.2, 0.2), dtype=np.float32)))])
    with pytest.raises(ValueError, match="span must be two ints"):
        draw_entities(image, [("a", (0, 1, 2), [(0.1, 0.1, 0.2, 0.2)])])
    with pytest.raises(ValueError, match="inverted"):
        draw_entities(image, [("a", (0, 1), [(0.5, 0.1, 0.2, 0.2)])])
    with pytest.raises(ValueError, match="line_width must be a positive int"):
        draw_entities(image, ENTITIES, line_width=0)
    with pytest.raises(ValueError, match="font_size must be a positive int"):
        label_boxes((100, 80), ENTITIES, font_size=-3)
    with pytest.raises(ValueError, match="image_size must be"):
        label_boxes((100, 0), ENTITIES)


# --------------------------------------------------------------------------------------------- figures


def test_plot_entities_shows_the_annotated_image_without_ticks() -> None:
    scene = sample_scenes(1, seed=5)[0]
    entities = [(g[0].phrase, (0, 1), [o.box for o in g]) for g in scene.groups]
    try:
        ax = plot_entities(scene.image, entities, title="seed 5")
        shown = np.asarray(ax.images[0].get_array())
        assert (shown == np.asarray(draw_entities(scene.image, entities))).all()
        assert list(ax.get_xticks()) == [] and list(ax.get_yticks()) == []
        assert ax.get_title() == "seed 5"
        fig, given = plt.subplots()
        assert plot_entities(scene.image, entities, ax=given) is given
    finally:
        plt.close("all")
    with pytest.raises(TypeError, match="title must be a str"):
        plot_entities(scene.image, entities, title=5)  # type: ignore[arg-type]
    assert plt.get_fignums() == []  # refused before a figure was opened


# --------------------------------------------------------------------------------------------- captions


class _Text(html.parser.HTMLParser):
    """Collects text, styles of the innermost span, and checks tags are balanced."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text = ""
        self.stack: list[dict[str, str | None]] = []
        self.pieces: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag == "span"
        self.stack.append(dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        assert tag == "span"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text += data
        style = self.stack[-1].get("style") if len(self.stack) > 1 else None
        self.pieces.append((data, style))


def parse_html(markup: str) -> _Text:
    parser = _Text()
    parser.feed(markup)
    parser.close()
    assert parser.stack == []
    return parser


def test_highlight_caption_escapes_and_colours_like_the_boxes() -> None:
    result = highlight_caption((CAPTION, ENTITIES))
    assert isinstance(result, HighlightedCaption)
    assert result._repr_html_() == result.html
    assert "<cat>" not in result.html and "&lt;cat&gt;" in result.html and "&amp;" in result.html
    parsed = parse_html(result.html)
    assert parsed.text == CAPTION
    coloured = {data: style for data, style in parsed.pieces if style}
    assert set(coloured) == {"Two dogs", "a <cat>", "a tree"}
    for i, (phrase, _, _) in enumerate(ENTITIES):
        assert f"background-color: {entity_colour(i)}" in coloured[phrase]
    assert str(result) == repr(result) == "[Two dogs] & [a <cat>] near [a tree]."
    assert result.caption == CAPTION


def test_highlight_caption_accepts_grounding_and_caption_with_entities() -> None:
    grounding = parse_generation(
        "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>."
    )
    a = highlight_caption(grounding)
    b = highlight_caption(grounding.caption, grounding.entities)
    c = highlight_caption((grounding.caption, grounding.entity_tuples()))
    assert a == b == c
    assert str(a) == "An image of [a snowman]."
    empty = highlight_caption(Grounding(caption="Nothing <here>.", entities=[]))
    assert str(empty) == "Nothing <here>." and parse_html(empty.html).text == "Nothing <here>."


def test_highlight_caption_overlapping_spans_keep_all_text() -> None:
    caption = "a big red ball"
    nested = [("a big red ball", (0, 14), [(0.1, 0.1, 0.5, 0.5)]), ("red", (6, 9), [(0.2, 0.2, 0.3, 0.3)])]
    result = highlight_caption(caption, nested)
    parsed = parse_html(result.html)
    assert parsed.text == caption
    styles = {data: style for data, style in parsed.pieces}
    assert entity_colour(1) in (styles["red"] or "")  # the inner phrase wins where they overlap
    assert entity_colour(0) in (styles["a big "] or "") and entity_colour(0) in (styles[" ball"] or "")
    assert 'title="a big red ball / red"' in result.html
    assert str(result) == "[a big [red] ball]"

    crossing = [("a big", (0, 5), []), ("big red", (2, 9), [])]
    result = highlight_caption(caption, crossing)
    assert parse_html(result.html).text == caption
    assert str(result) == "[a [big] red] ball"
    assert "[" not in str(highlight_caption(caption, [("x", None, [])]))


def test_highlight_caption_marks_nothing_for_the_empty_spans_of_the_processor() -> None:
    """The processor's own output: an ``<object>`` without a phrase gets span (i, i), a blank phrase (i + 1, i).
    They mark no text, yet keep their place in the colours, as their boxes in draw_entities do."""
    from transformers.models.kosmos2.processing_kosmos2 import clean_text_and_extract_entities_with_bboxes

    cat = "<object><patch_index_0044><patch_index_0863></object>"
    dog = "<object><patch_index_0100><patch_index_0200></object>"
    phraseless = clean_text_and_extract_entities_with_bboxes(
        f"An image of<phrase> a cat</phrase>{cat} next to{dog}<phrase> a dog</phrase>{cat}.")
    blank = clean_text_and_extract_entities_with_bboxes(
        f"An image of<phrase> </phrase>{cat} and<phrase> a dog</phrase>{dog}.")
    assert phraseless[1][1][1] == (25, 25) and blank[1][0][1] == (12, 11)  # what the processor gives
    image = Image.new("RGB", (64, 64), WHITE)
    for output, expected, dog_index in ((phraseless, "An image of [a cat] next to [a dog].", 2),
                                        (blank, "An image of  and [a dog].", 1)):
        result = highlight_caption(output)
        assert str(result) == expected
        styles = {data: style for data, style in parse_html(result.html).pieces if style}
        assert set(styles) == {"a dog"} | ({"a cat"} if dog_index == 2 else set())
        assert f"background-color: {entity_colour(dog_index)}" in styles["a dog"]  # the colour of its boxes
        draw_entities(image, output)  # drawn too, every box in its entity's colour
    # a span backwards by more than one marks nothing either; one outside the caption is still refused
    assert str(highlight_caption("a big red ball", [("x", (6, 2), [])])) == "a big red ball"


def test_highlight_caption_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"span \(5, 40\), expected start and end in \[0, 14\]"):
        highlight_caption("a big red ball", [("x", (5, 40), [])])
    with pytest.raises(TypeError, match="needs the caption too"):
        highlight_caption(ENTITIES)
    with pytest.raises(TypeError, match="entities are missing"):
        highlight_caption("just text")
    with pytest.raises(TypeError, match="expected a Grounding"):
        highlight_caption(42)


@pytest.mark.parametrize("entity", [Entity("zzz", (0, 3), [(0.1, 0.1, 0.5, 0.5)]), ("zzz", (0, 3), []),
                                    ("big", (2, 5), []), ("a big", (0, 6), [])])
def test_highlight_caption_wants_spans_that_spell_their_phrase(entity) -> None:
    """A span that did not spell its phrase coloured other words under the phrase's name."""
    phrase, span = (entity.phrase, entity.span) if isinstance(entity, Entity) else entity[:2]
    with pytest.raises(ValueError) as refused:
        highlight_caption("abc big dog", [entity])
    assert str(refused.value) == (f"entity 0 ({phrase!r}) has span {span}, but the caption holds "
                                  f"{'abc big dog'[span[0]:span[1]]!r} there: a span must spell its phrase")
    assert str(highlight_caption("abc big dog", [("big", (4, 7), [])])) == "abc [big] dog"


# --------------------------------------------------------------------------------------------- grid and user box


def test_draw_grid_draws_light_lines_and_fills_highlighted_bins() -> None:
    size = (320, 256)
    base = Image.new("RGB", size, WHITE)
    out = np.asarray(draw_grid(base, highlight=[0, 33]), dtype=int)
    assert out.shape == (256, 320, 3)
    line = out[5, 20]  # the first vertical line, x = 320 / 32 * 2
    assert (line < 255).all() and (line > 150).all()  # visible but light
    assert (out[5, 15] == 255).all()  # between lines: untouched
    red = rgb(entity_colour(0))  # the first entity colour
    inside0 = out[4, 4]
    # bin 0 tinted with it: a blend between the colour and the white picture, neither of the two
    assert all(c < v < 255 for c, v in zip(red, inside0) if c < 235) and tuple(inside0) != red
    inside33 = out[8 + 4, 10 + 4]  # bin 33 = row 1, column 1
    assert (inside33 == inside0).all()
    assert tuple(out[0, 0]) == red  # outlined in the full colour
    assert (out[105, 105] == 255).all()  # neither on a line nor highlighted

    mapped = np.asarray(draw_grid(base, highlight={1023: "#0000FF"}), dtype=int)
    corner = mapped[-4, -4]
    assert corner[2] > corner[0] + 60  # the last bin, in blue
    assert (np.asarray(draw_grid(base, highlight=np.array([0, 33]))) == out).all()  # numpy indices too
    coarse = np.asarray(draw_grid(base, num_bins=4), dtype=int)
    assert (coarse[10, 80] < 255).all() and (coarse[10, 70] == 255).all()  # lines every 80 px


def test_draw_grid_rejects_bad_input() -> None:
    image = Image.new("RGB", (64, 64), WHITE)
    with pytest.raises(ValueError, match=r"int in \[0, 1023\]"):
        draw_grid(image, highlight=[1024])
    with pytest.raises(ValueError, match=r"int in \[0, 15\]"):
        draw_grid(image, num_bins=4, highlight=[-1])
    with pytest.raises(ValueError, match="num_bins must be a positive int"):
        draw_grid(image, num_bins=0)
    with pytest.raises(ValueError, match="'#RRGGBB'"):
        draw_grid(image, highlight={3: "red"})
    with pytest.raises(TypeError, match="PIL.Image.Image"):
        draw_grid("picture.png")  # type: ignore[arg-type]


def test_draw_user_box_draws_two_tone_dashes_and_label() -> None:
    size = (400, 300)
    grey = (128, 128, 128)
    box = (0.25, 0.4, 0.75, 0.9)
    out = draw_user_box(Image.new("RGB", size, grey), box)
    x0, y0, x1, y1 = px(box, size)
    left_edge = {tuple(out.getpixel((x0, y))) for y in range(y0, y1)}
    bottom_edge = {tuple(out.getpixel((x, y1 - 1))) for x in range(x0, x1)}
    assert left_edge == {(0, 0, 0), (255, 255, 255)} and bottom_edge == {(0, 0, 0), (255, 255, 255)}
    assert out.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == grey
    above = np.asarray(out.crop((x0, 0, x1, y0)))
    assert (above == 0).all(axis=2).sum() > 100  # the black label above the box
    unlabeled = np.asarray(draw_user_box(Image.new("RGB", size, grey), box, label=None).crop((x0, 0, x1, y0)))
    assert (unlabeled == 128).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        draw_user_box(Image.new("RGB", size, grey), (10, 10, 100, 100))
    with pytest.raises(TypeError, match="label must be a str"):
        draw_user_box(Image.new("RGB", size, grey), box, label=3)  # type: ignore[arg-type]


def test_draw_entities_draws_a_user_box_dashed_and_unlabelled_under_the_answer() -> None:
    """The one drawing of a grounded answer to a prompt with a user box (the batch tools and the playground)."""
    from helpers.grounding.plotting import draw_entities, draw_user_box

    image = Image.new("RGB", (120, 90), (240, 240, 240))
    answer = [("It", (0, 2), [(0.1, 0.2, 0.5, 0.8)])]
    box = (0.12, 0.22, 0.48, 0.78)
    drawn = draw_entities(image, answer, user_box=box)
    assert drawn.tobytes() == draw_entities(draw_user_box(image, box, label=None), answer).tobytes()
    assert drawn.tobytes() != draw_entities(image, answer).tobytes()
