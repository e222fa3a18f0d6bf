"""helpers.grounding.tokens: location tokens against the transformers processor, the Entity/Grounding records, and
parse_generation on every kind of malformed text (what is reported, what is kept)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.kosmos2.processing_kosmos2 import (
    clean_text_and_extract_entities_with_bboxes,
    coordinate_to_patch_index,
    patch_index_to_coordinate,
)

from helpers.grounding.tokens import (
    DELIMITER,
    NUM_BINS,
    Entity,
    Grounding,
    box_to_patch_index,
    location_tokens,
    object_tokens,
    parse_generation,
    patch_index_to_box,
    strip_image_prefix,
)

# transformers' docstring example: microsoft/kosmos-2-patch14-224 in full precision on the snowman image
SNOWMAN = (
    "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object> "
    "warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>."
)
SNOWMAN_CAPTION = "An image of a snowman warming himself by a fire."
SNOWMAN_ENTITIES = [
    ("a snowman", (12, 21), [(0.390625, 0.046875, 0.984375, 0.828125)]),
    ("a fire", (41, 47), [(0.171875, 0.015625, 0.484375, 0.890625)]),
]
SNOWMAN_BOX = "<patch_index_0044><patch_index_0863>"
PREFIX = "<grounding> An image of<phrase> a snowman</phrase><object>" + SNOWMAN_BOX + "</object>"


def processor_result(text: str):
    return clean_text_and_extract_entities_with_bboxes(strip_image_prefix(text))


# ------------------------------------------------------------------------------- location tokens


def test_patch_index_to_box_matches_the_processor_for_every_pair_of_indices() -> None:
    for first in range(NUM_BINS * NUM_BINS):
        for last in range(NUM_BINS * NUM_BINS):
            assert patch_index_to_box(first, last) == patch_index_to_coordinate(first, last, NUM_BINS)


@pytest.mark.parametrize("num_bins", [1, 2, 3, 5, 7, 8])
def test_patch_index_to_box_matches_the_processor_for_other_grids(num_bins: int) -> None:
    for first in range(num_bins * num_bins):
        for last in range(num_bins * num_bins):
            assert patch_index_to_box(first, last, num_bins) == patch_index_to_coordinate(first, last, num_bins)


def test_every_box_that_is_not_inverted_round_trips_through_its_indices() -> None:
    count = 0
    for first in range(NUM_BINS * NUM_BINS):
        for last in range(NUM_BINS * NUM_BINS):
            if first % NUM_BINS <= last % NUM_BINS and first // NUM_BINS <= last // NUM_BINS:
                assert box_to_patch_index(patch_index_to_box(first, last)) == (first, last)
                count += 1
    assert count == (32 * 33 // 2) ** 2


_unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def valid_boxes(draw: st.DrawFn) -> tuple[float, float, float, float]:
    x0, x1 = sorted((draw(_unit), draw(_unit)))
    y0, y1 = sorted((draw(_unit), draw(_unit)))
    if not (x0 < x1 and y0 < y1):
        x0, y0, x1, y1 = 0.25, 0.25, 0.75, 0.75
    return (x0, y0, x1, y1)


@settings(max_examples=1500, deadline=None)
@given(valid_boxes(), st.sampled_from([32, 32, 32, 1, 3, 7, 24, 64]))
def test_box_to_patch_index_matches_the_processor(box, num_bins: int) -> None:
    ours = box_to_patch_index(box, num_bins)
    # the processor computes a column (row) of -1 when x1 (y1) is so small that x1 * n - 1 rounds to -1.0;
    # ours puts that corner in bin 0 (documented in box_to_patch_index)
    if math.ceil(box[2] * num_bins - 1) < 0 or math.ceil(box[3] * num_bins - 1) < 0:
        lr_x = max(math.ceil(box[2] * num_bins - 1), 0)
        lr_y = max(math.ceil(box[3] * num_bins - 1), 0)
        assert ours[1] == lr_y * num_bins + lr_x
        assert ours[0] == coordinate_to_patch_index(box, num_bins)[0]
    else:
        assert ours == coordinate_to_patch_index(box, num_bins)
    assert all(0 <= i < num_bins * num_bins for i in ours)


def test_tiny_bottom_right_corner_goes_to_bin_zero() -> None:
    box = (0.0, 0.0, 1e-20, 1e-20)
    assert coordinate_to_patch_index(box, 32) == (0, -33)  # the processor's result: not a bin
    assert box_to_patch_index(box) == (0, 0)


def test_box_to_patch_index_gives_the_articles_user_box() -> None:
    assert box_to_patch_index((0.04182509505703422, 0.39244186046511625, 0.38783269961977185, 1.0)) == (385, 1004)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((0.5, 0.1, 0.5, 0.9), "x0 < x1 and y0 < y1"),
        ((0.1, 0.5, 0.9, 0.5), "x0 < x1 and y0 < y1"),
        ((0.6, 0.1, 0.5, 0.9), "inverted"),
        ((0.1, 0.1, 0.5), "4 numbers"),
        ((0.1, float("nan"), 0.5, 0.9), "finite"),
        ((10, 20, 300, 400), "looks like a pixel box"),
        (("0.1", 0.1, 0.5, 0.9), "numbers"),
    ],
)
def test_box_to_patch_index_rejects_bad_boxes(box, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        box_to_patch_index(box)


def test_the_processor_rejects_boxes_without_area_too() -> None:
    with pytest.raises(ValueError):
        coordinate_to_patch_index((0.5, 0.1, 0.5, 0.9), 32)


@pytest.mark.parametrize(("first", "last"), [(-1, 5), (5, 1024), (True, 5), (5, 2.0), (np.int64(1024), 5),
                                             (np.float64(5), 5)])
def test_patch_index_to_box_rejects_indices_that_are_not_tokens(first, last) -> None:
    with pytest.raises(ValueError, match=r"an int in \[0, 1023\]"):
        patch_index_to_box(first, last)


def test_patch_index_to_box_takes_numpy_ints() -> None:
    indices = np.array([44, 863])  # e.g. read from an array of token ids
    box = patch_index_to_box(*indices)
    assert box == patch_index_to_box(44, 863) and all(type(v) is float for v in box)
    assert patch_index_to_box(np.int32(44), np.uint16(863), np.int64(32)) == box


@pytest.mark.parametrize("num_bins, error", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)])
def test_num_bins_must_be_a_positive_int(num_bins, error) -> None:
    with pytest.raises(error, match="num_bins must be a positive int"):
        patch_index_to_box(0, 0, num_bins)


def test_location_and_object_tokens_parse_back() -> None:
    assert location_tokens((0.390625, 0.046875, 0.984375, 0.828125)) == SNOWMAN_BOX
    boxes = [(0.1, 0.1, 0.4, 0.5), (0.5, 0.5, 0.9, 0.95)]
    tokens = object_tokens(boxes)
    assert tokens.count(DELIMITER) == 1 and tokens.startswith("<object>") and tokens.endswith("</object>")
    g = parse_generation(f"<phrase> two boxes</phrase>{tokens}")
    assert g.problems == []
    [entity] = g.entities
    assert entity.boxes == [patch_index_to_box(*box_to_patch_index(b)) for b in boxes]
    with pytest.raises(ValueError, match="at least one box"):
        object_tokens([])


# ------------------------------------------------------------------------------- Entity and Grounding


def test_grounding_round_trips_through_plain_json() -> None:
    g = parse_generation("<image>x</image>" + SNOWMAN + "<phrase> lost</phrase>")
    assert g.problems  # the phrase without a box
    data = g.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["entities"][0] == {"phrase": "a snowman", "span": [12, 21],
                                   "boxes": [[0.390625, 0.046875, 0.984375, 0.828125]]}
    assert Grounding.from_dict(data) == g
    assert Grounding.from_json(g.to_json()) == g
    assert Grounding.from_json(g.to_json()).entity_tuples() == g.entity_tuples()
    entity = g.entities[1]
    assert Entity.from_dict(entity.to_dict()) == entity
    assert entity.as_tuple() == ("a fire", (41, 47), [(0.171875, 0.015625, 0.484375, 0.890625)])


def test_an_empty_grounding_is_still_truthy() -> None:
    assert bool(Grounding("", []))
    assert Grounding("", []).problems == [] and Grounding("", []).raw == ""


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ({"caption": "a", "entities": []}, ValueError, "exactly the keys"),
        ({"caption": 1, "entities": [], "problems": [], "raw": ""}, TypeError, "caption must be a str"),
        ({"caption": "a", "entities": [], "problems": [3], "raw": ""}, TypeError, "problems must be a list of str"),
        ({"caption": "a b", "entities": [{"phrase": "a", "span": [2, 3], "boxes": [[0, 0, 1, 1]]}],
          "problems": [], "raw": ""}, ValueError, "the caption holds 'b'"),
        ({"caption": "a", "entities": [{"phrase": "a", "span": [0, 1], "boxes": [[0, 0, 2, 1]]}],
          "problems": [], "raw": ""}, ValueError, r"in \[0, 1\]"),
        ({"caption": "a", "entities": [{"phrase": "a", "span": [0, 1], "boxes": [[0.5, 0, 0.2, 1]]}],
          "problems": [], "raw": ""}, ValueError, "inverted"),
        ({"caption": "a", "entities": [{"phrase": "a", "span": [0, 2], "boxes": []}],
          "problems": [], "raw": ""}, ValueError, "covers 2 characters"),
        ({"caption": "a", "entities": [{"phrase": "a", "span": "01", "boxes": []}],
          "problems": [], "raw": ""}, ValueError, "two ints"),
        ({"caption": "a", "entities": [{"phrase": "a", "span": [0, 1]}], "problems": [], "raw": ""},
         ValueError, "exactly the keys"),
    ],
)
def test_from_dict_says_what_is_wrong(data, error, message: str) -> None:
    with pytest.raises(error, match=message):
        Grounding.from_dict(data)


def test_from_json_needs_a_str() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        Grounding.from_json(b"{}")


# ------------------------------------------------------------------------------- well-formed text


def test_the_transformers_docstring_example() -> None:
    g = parse_generation(SNOWMAN)
    assert g.caption == SNOWMAN_CAPTION
    assert g.entity_tuples() == SNOWMAN_ENTITIES
    assert (g.caption, g.entity_tuples()) == processor_result(SNOWMAN)
    assert g.problems == []
    assert g.raw == SNOWMAN


def test_image_prefix_and_sentence_marks_are_dropped() -> None:
    text = "<s><image>. the, to </phrase> and<object></image>" + SNOWMAN + "</s>"
    g = parse_generation(text)
    assert (g.caption, g.entity_tuples(), g.problems) == (SNOWMAN_CAPTION, SNOWMAN_ENTITIES, [])
    assert g.raw == text


def test_strip_image_prefix_keeps_what_follows_the_last_end_of_image() -> None:
    assert strip_image_prefix("<image>a</image>b</image> c") == " c"
    assert strip_image_prefix("no image") == "no image"
    with pytest.raises(TypeError, match="must be a str"):
        strip_image_prefix(None)  # type: ignore[arg-type]


def test_several_boxes_for_one_phrase() -> None:
    text = ("<grounding> An image of<phrase> two snowmen</phrase><object><patch_index_0044><patch_index_0863>"
            f"{DELIMITER}<patch_index_0101><patch_index_0400></object>")
    g = parse_generation(text)
    assert g.problems == []
    assert g.entity_tuples() == processor_result(text)[1]
    assert g.entities[0].boxes == [patch_index_to_box(44, 863), patch_index_to_box(101, 400)]


@pytest.mark.parametrize("bad", [None, b"<phrase>", 12, ["text"]])
def test_non_str_input_is_a_type_error(bad) -> None:
    with pytest.raises(TypeError, match="must be a str"):
        parse_generation(bad)


# ------------------------------------------------------------------------------- malformed text


def _one_problem(text: str, *fragments: str) -> Grounding:
    g = parse_generation(text)
    assert len(g.problems) == 1, g.problems
    for fragment in fragments:
        assert fragment in g.problems[0], g.problems[0]
    assert g.caption == processor_result(text)[0]
    return g


def _snowman_kept(g: Grounding) -> None:
    assert g.entity_tuples()[0] == ("a snowman", (12, 21), [(0.390625, 0.046875, 0.984375, 0.828125)])


def test_object_cut_off_after_one_token() -> None:
    g = _one_problem(PREFIX + " by<phrase> a fire</phrase><object><patch_index_0006>",
                     "'<object>' of phrase 'a fire' is malformed",
                     "location token <patch_index_NNNN> for the bottom-right corner of box 1",
                     "found the end of the text")
    assert g.caption == "An image of a snowman by a fire"
    assert len(g.entities) == 1
    _snowman_kept(g)


def test_object_cut_off_before_its_end_tag() -> None:
    g = _one_problem(PREFIX + " by<phrase> a fire</phrase><object><patch_index_0006><patch_index_0879> and",
                     "expected '</object>'", "found ' and'")
    assert g.caption == "An image of a snowman by a fire and"
    assert len(g.entities) == 1


def test_object_cut_off_inside_a_token_keeps_the_processors_caption() -> None:
    g = _one_problem(PREFIX + " by<phrase> a fire</phrase><object><patch_index_0006><patch_ind",
                     "found '<patch_ind' (cut off)")
    assert g.caption == "An image of a snowman by a fire<patch_ind"  # a '<' without '>' is text to the processor
    assert len(g.entities) == 1


def test_unmatched_closing_phrase() -> None:
    g = _one_problem(PREFIX + " warming</phrase> up", "'</phrase>' without a '<phrase>' before it")
    assert g.caption == "An image of a snowman warming up"
    _snowman_kept(g)


def test_phrase_never_closed() -> None:
    g = _one_problem(PREFIX + " by<phrase> a fire", "'<phrase>' is never closed", "' a fire'")
    assert g.caption == "An image of a snowman by a fire"
    assert len(g.entities) == 1


def test_phrase_not_closed_before_another_tag() -> None:
    g = _one_problem(PREFIX + " by<phrase> a fire<grounding>.", "'<phrase>' is not closed",
                     "expected '</phrase>' after ' a fire', found '<grounding>'")
    assert g.caption == "An image of a snowman by a fire."


def test_nested_phrase_keeps_the_inner_one() -> None:
    text = "<grounding> An image of<phrase> a<phrase> snowman</phrase><object>" + SNOWMAN_BOX + "</object>"
    g = _one_problem(text, "'<phrase>' opened again", "' a'")
    assert g.caption == "An image of a snowman"
    assert g.entity_tuples() == [("snowman", (14, 21), [(0.390625, 0.046875, 0.984375, 0.828125)])]
    assert g.entity_tuples() == processor_result(text)[1]


def test_phrase_without_object() -> None:
    g = _one_problem(PREFIX + " by<phrase> a fire</phrase>.", "phrase 'a fire' has no box",
                     "expected '<object>' right after '</phrase>', found '.'")
    assert g.caption == "An image of a snowman by a fire."
    assert len(g.entities) == 1


def test_out_of_range_index_drops_the_box() -> None:
    text = PREFIX + " by<phrase> a fire</phrase><object><patch_index_0006><patch_index_9999></object>"
    g = _one_problem(text, "<patch_index_9999> is out of range (expected an index from 0000 to 1023)",
                     "'a fire' has no valid box left and is not an entity")
    assert len(g.entities) == 1
    fire = processor_result(text)[1][1]
    assert fire[0] == "a fire" and fire[2][0][3] == pytest.approx(9.77, abs=0.01)  # what the processor returns


def test_out_of_range_index_keeps_the_other_boxes() -> None:
    text = (PREFIX + " by<phrase> fires</phrase><object><patch_index_0006><patch_index_0879>"
            f"{DELIMITER}<patch_index_1024><patch_index_1100></object>")
    g = _one_problem(text, "<patch_index_1024> and <patch_index_1100> are out of range")
    assert "no valid box left" not in g.problems[0]
    assert g.entity_tuples()[1] == ("fires", (25, 30), [patch_index_to_box(6, 879)])


def test_malformed_index() -> None:
    text = PREFIX + " by<phrase> a fire</phrase><object><patch_index_0006><patch_index_12a></object>."
    g = _one_problem(text, "'<object>' of phrase 'a fire' is malformed", "found '<patch_index_12a>'")
    assert g.caption == "An image of a snowman by a fire."
    assert len(g.entities) == 1


def test_inverted_box() -> None:
    text = PREFIX + " by<phrase> a fire</phrase><object><patch_index_0879><patch_index_0006></object>"
    g = _one_problem(text, "box <patch_index_0879><patch_index_0006> of 'a fire' dropped: it is inverted")
    assert len(g.entities) == 1
    _snowman_kept(g)


def test_object_without_phrase_is_not_an_entity() -> None:
    text = "<grounding> An image of<object>" + SNOWMAN_BOX + "</object> by a fire"
    g = _one_problem(text, "'<object>' without a phrase before it (" + SNOWMAN_BOX + ")", "not an entity")
    assert g.caption == "An image of by a fire"
    assert g.entities == []
    # the processor reports it under a made-up name: the documented difference
    assert processor_result(text)[1] == [("<patch_index_44><patch_index_863>", (11, 11),
                                          [(0.390625, 0.046875, 0.984375, 0.828125)])]


@pytest.mark.parametrize("phrase", ["", "  "])
def test_object_after_an_empty_phrase_is_not_an_entity(phrase: str) -> None:
    g = _one_problem(f"An image of<phrase>{phrase}</phrase><object>{SNOWMAN_BOX}</object>.",
                     "after an empty phrase", "not an entity")
    assert (g.caption, g.entities) == (f"An image of{phrase}.", [])


def test_delimiter_without_a_second_box() -> None:
    text = PREFIX + f" by<phrase> a fire</phrase><object><patch_index_0006><patch_index_0879>{DELIMITER}</object>"
    g = _one_problem(text, "expected another box", "after '</delimiter_of_multi_objects/>', found '</object>'")
    assert len(g.entities) == 1


@pytest.mark.parametrize("text", ["", "   ", "<image>. the, to</image>", "<s></s>", "<grounding>"])
def test_empty_text(text: str) -> None:
    g = _one_problem(text, "the generation is empty")
    assert (g.caption, g.entities, g.raw) == ("", [], text)


@pytest.mark.parametrize(
    ("tail", "fragment"),
    [
        ("<foo> by", "removed '<foo>' from the caption"),
        ("</object> by", "'</object>' without an '<object>'"),
        (f"{DELIMITER} by", "outside '<object>…</object>'"),
        ("<patch_index_0044> by", "location token '<patch_index_0044>' outside '<object>…</object>'"),
        ("<image> by", "'<image>' without a '</image>'"),
    ],
)
def test_stray_tags(tail: str, fragment: str) -> None:
    g = _one_problem(PREFIX + tail, fragment)
    assert g.caption == "An image of a snowman by"
    _snowman_kept(g)


def test_one_message_per_defect_in_order() -> None:
    text = ("<grounding><phrase> a</phrase> b</phrase><object><patch_index_0001><patch_index_0002></object>"
            "<phrase> c</phrase><object><patch_index_1><patch_index_9999></object>")
    g = parse_generation(text)
    assert len(g.problems) == 4
    assert "phrase 'a' has no box" in g.problems[0]
    assert "'</phrase>' without a '<phrase>'" in g.problems[1]
    assert "'<object>' without a phrase" in g.problems[2]
    assert "<patch_index_9999> is out of range" in g.problems[3]
    assert (g.caption, g.entities) == ("a b c", [])


def test_very_long_and_pathological_texts_are_parsed() -> None:
    """A million characters each; on texts like these a regular expression such as <.*?> backtracks
    quadratically and would not finish (a speed check with figures belongs in a benchmark, not here)."""
    group = "<phrase> a snowman</phrase><object>" + SNOWMAN_BOX + "</object> and"
    texts = [
        group * (1_000_000 // len(group)),  # a million characters of sound text
        "<" * 1_000_000,  # a regular expression such as <.*?> takes quadratic time here
        "<\n" * 500_000 + ">",
        "<phrase> a" * 100_000,
        "<object><patch_index_" * 50_000,
        "<phrase>x</phrase><object><patch_index_" + "9" * 1_000_000 + "><patch_index_1></object>",
    ]
    for text in texts:
        g = parse_generation(text)
        assert g.raw is text
    g = parse_generation(texts[0])
    assert g.problems == [] and len(g.entities) == 1_000_000 // len(group)
    assert g.entities[-1].phrase == "a snowman"
    long_digits = parse_generation(texts[-1])
    assert long_digits.entities == [] and "out of range" in long_digits.problems[0]
    assert len(long_digits.problems[0]) < 300  # the message quotes a short form of the token
