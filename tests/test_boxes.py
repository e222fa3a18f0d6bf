"""helpers.grounding.boxes: conversions between normalized and pixel boxes, IoU, rounding, and the error messages."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from helpers.grounding.boxes import (
    EDGE_TOLERANCE_PX,
    check_normalized,
    coco_to_normalized,
    check_pixel_box,
    iou,
    is_one_box,
    normalized_to_coco,
    pixel_error,
    round_box,
    to_normalized,
    to_pixels,
)

SNOWMAN_BOX = (0.390625, 0.046875, 0.984375, 0.828125)


def test_to_pixels_scales_x_by_width_and_y_by_height() -> None:
    assert to_pixels((0.1, 0.2, 0.5, 1.0), (640, 480)) == pytest.approx((64.0, 96.0, 320.0, 480.0))
    assert to_pixels((0, 0, 1, 1), (7, 3)) == (0.0, 0.0, 7.0, 3.0)
    assert to_pixels(np.array([0.25, 0.5, 0.75, 1.0]), (np.int64(8), 4)) == (2.0, 2.0, 6.0, 4.0)


def test_to_normalized_inverts_to_pixels() -> None:
    for size in [(640, 480), (1, 1), (333, 1000)]:
        back = to_normalized(to_pixels(SNOWMAN_BOX, size), size)
        assert back == pytest.approx(SNOWMAN_BOX, abs=1e-12)
    assert to_normalized((64, 96, 320, 480), (640, 480)) == pytest.approx((0.1, 0.2, 0.5, 1.0))


def test_to_normalized_allows_float_rounding_at_the_edges() -> None:
    assert to_normalized((-1e-9, 0.0, 640 + 1e-9, 480.0), (640, 480)) == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("box_px", [(0, 0, 641, 480), (-1, 0, 10, 10), (0, 0, 10, 480.01)])
def test_pixel_boxes_beyond_the_image_are_refused(box_px) -> None:
    with pytest.raises(ValueError, match=r"reaches beyond the image of 640 x 480 pixels"):
        to_normalized(box_px, (640, 480))
    with pytest.raises(ValueError, match=r"reaches beyond the image"):
        check_pixel_box(box_px, (640, 480))


def test_check_pixel_box_returns_floats() -> None:
    assert check_pixel_box([1, 2, 3, 4], (10, 10)) == (1.0, 2.0, 3.0, 4.0)
    assert all(type(v) is float for v in check_pixel_box([1, 2, 3, 4], (10, 10)))


@pytest.mark.parametrize("size", [(0, 10), (10, -1), (10.0, 10), (True, 10), (10,), "ab", 5, (10, 10, 3)])
def test_image_size_must_be_two_positive_ints(size) -> None:
    with pytest.raises(ValueError, match=r"image_size must be \(width, height\)"):
        to_pixels(SNOWMAN_BOX, size)
    with pytest.raises(ValueError, match=r"image_size must be \(width, height\)"):
        check_pixel_box((0, 0, 1, 1), size)


def test_iou_values() -> None:
    a = (0.0, 0.0, 0.5, 0.5)
    assert iou(a, a) == 1.0
    assert iou(a, (0.25, 0.0, 0.75, 0.5)) == pytest.approx(1 / 3)
    assert iou((0, 0, 1, 1), (0, 0, 0.5, 1)) == 0.5
    assert iou(a, (0.5, 0.5, 1.0, 1.0)) == 0.0  # touching corners
    assert iou(a, (0.6, 0.6, 0.9, 0.9)) == 0.0  # disjoint
    assert iou((0.2, 0.2, 0.2, 0.2), (0.2, 0.2, 0.2, 0.2)) == 0.0  # no area at all
    assert iou((0.1, 0.1, 0.1, 0.9), (0.0, 0.0, 1.0, 1.0)) == 0.0  # a line inside a box
    assert iou((10, 10, 30, 30), (20, 20, 40, 40)) == pytest.approx(100 / 700)  # pixels
    assert iou(a, (0.0, 0.0, 0.25, 0.25)) == iou((0.0, 0.0, 0.25, 0.25), a) == pytest.approx(0.25)


def test_iou_checks_its_boxes() -> None:
    with pytest.raises(ValueError, match="box a is inverted"):
        iou((0.5, 0, 0.2, 1), (0, 0, 1, 1))
    with pytest.raises(ValueError, match="box b must have 4 numbers"):
        iou((0, 0, 1, 1), (0, 0, 1))


def test_round_box_is_what_the_article_does() -> None:
    assert round_box(SNOWMAN_BOX) == tuple(round(v, 2) for v in SNOWMAN_BOX) == (0.39, 0.05, 0.98, 0.83)
    assert round_box(SNOWMAN_BOX, 0) == (0.0, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="ndigits must be an int >= 0"):
        round_box(SNOWMAN_BOX, -1)
    with pytest.raises(ValueError, match="ndigits must be an int >= 0"):
        round_box(SNOWMAN_BOX, 1.5)  # type: ignore[arg-type]


def test_numpy_and_torch_whole_numbers_count_as_ints() -> None:
    """``round_box(box, np.int64(2))`` was refused while sizes took numpy ints, and ``to_pixels`` refused a torch
    tensor of the size while it took a numpy array (and a torch.Size)."""
    import torch

    assert round_box(SNOWMAN_BOX, np.int64(2)) == round_box(SNOWMAN_BOX, 2) == (0.39, 0.05, 0.98, 0.83)
    for size in (torch.tensor([640, 480]), np.array([640, 480]), torch.Size([640, 480]), (640, 480)):
        assert to_pixels(SNOWMAN_BOX, size) == (250.0, 22.5, 630.0, 397.5)
    for size in (torch.tensor([640.5, 480.0]), torch.tensor([0, 480]), torch.tensor([[640, 480]]), torch.tensor(640)):
        with pytest.raises(ValueError, match=r"^image_size must be \(width, height\), two positive ints, got tensor"):
            to_pixels(SNOWMAN_BOX, size)


def test_pixel_error_is_the_largest_difference_in_pixels() -> None:
    rounded = round_box(SNOWMAN_BOX)
    diffs = [abs(0.390625 - 0.39) * 640, abs(0.046875 - 0.05) * 480, abs(0.984375 - 0.98) * 640,
             abs(0.828125 - 0.83) * 480]
    assert pixel_error(SNOWMAN_BOX, rounded, (640, 480)) == pytest.approx(max(diffs))
    assert pixel_error(SNOWMAN_BOX, rounded, (640, 480)) == pytest.approx(2.8)
    assert pixel_error(SNOWMAN_BOX, SNOWMAN_BOX, (640, 480)) == 0.0
    with pytest.raises(ValueError, match="looks like a pixel box"):
        pixel_error(SNOWMAN_BOX, (250, 22, 630, 397), (640, 480))


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((0.5, 0.1, 0.4, 0.9), r"normalized box is inverted: expected x0 <= x1 and y0 <= y1"),
        ((0.1, 0.9, 0.4, 0.1), r"inverted"),
        ((0.1, 0.1, 0.5), r"must have 4 numbers \(x0, y0, x1, y1\), got 3"),
        ((0.1, 0.1, 0.5, 0.5, 0.5), r"got 5"),
        (0.5, r"must be a sequence of 4 numbers"),
        ((0.1, float("nan"), 0.5, 0.9), r"finite numbers"),
        ((0.1, 0.1, float("inf"), 0.9), r"finite numbers"),
        (("a", "b", "c", "d"), r"must hold numbers, got 'a'"),
        ((0.1, None, 0.5, 0.9), r"must hold numbers, got None"),
        ((0.1, True, 0.5, 0.9), r"must hold numbers, got True"),
        ((0.1, 1j, 0.5, 0.9), r"must hold numbers"),
        ((-0.1, 0.1, 0.5, 0.9), r"values must lie in \[0, 1\]"),
        ((12, 30, 250, 400), r"It looks like a pixel box: "),  # the hints themselves: the tests below
    ],
)
def test_check_normalized_errors(box, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_normalized(box)
    with pytest.raises(ValueError, match=message):
        to_pixels(box, (640, 480))


def test_check_normalized_accepts_other_number_types() -> None:
    assert check_normalized((0, Fraction(1, 4), np.float32(0.5), 1)) == (0.0, 0.25, 0.5, 1.0)
    assert check_normalized((0.3, 0.3, 0.3, 0.3)) == (0.3, 0.3, 0.3, 0.3)  # no area, but valid


def test_the_pixel_box_hint_has_the_numbers_when_the_image_size_is_known() -> None:
    """The hint only named to_normalized(box_px, image_size), also where the size was at hand (to_pixels)."""
    box_px = (12, 30, 250, 400)
    expected = (r"got \(12.0, 30.0, 250.0, 400.0\)\. It looks like a pixel box: divide the x values by the image's "
                r"width 640 and the y values by its height 480, which gives \(0\.0187, 0\.0625, 0\.3906, 0\.8333\)\.$")
    with pytest.raises(ValueError, match=expected):
        to_pixels(box_px, (640, 480))
    with pytest.raises(ValueError, match=expected):
        check_normalized(box_px, (640, 480))
    with pytest.raises(ValueError, match=expected):
        pixel_error(SNOWMAN_BOX, box_px, (640, 480))
    with pytest.raises(ValueError, match=r"its height 480, but as pixels it reaches beyond the image of 640 x 480 "
                                         r"pixels\.$"):
        to_pixels((12, 30, 900, 400), (640, 480))
    with pytest.raises(ValueError, match=r"its height 480, and give the corners as x0 y0 x1 y1, top left first: as "
                                         r"pixels this box is inverted\.$"):
        check_normalized((250, 30, 12, 400), (640, 480))  # inside the image, but inverted: not 'beyond' it
    with pytest.raises(ValueError, match=r"It looks like a pixel box: convert it with to_normalized\(box_px, "
                                         r"image_size\)\.$"):
        check_normalized(box_px)  # the size unknown
    with pytest.raises(ValueError, match=r"image_size must be \(width, height\)"):
        check_normalized(SNOWMAN_BOX, (640, 0))


def test_no_pixel_hint_for_negative_values() -> None:
    with pytest.raises(ValueError) as info:
        check_normalized((-5, 0, 300, 200))
    assert "pixel box" not in str(info.value)


def test_pixel_box_errors_name_the_pixel_box() -> None:
    with pytest.raises(ValueError, match="pixel box is inverted"):
        to_normalized((30, 0, 10, 10), (640, 480))
    with pytest.raises(ValueError, match="pixel box must hold finite numbers"):
        to_normalized((0, 0, float("nan"), 10), (640, 480))


# ----------------------------------------------------------------------------- COCO [x, y, w, h] pixel boxes



def test_pixel_error_scales_y_by_the_height() -> None:
    """On a tall image (100 x 400) a y difference dominates: 0.1 of the height is 40 pixels, not 10."""
    box = (0.1, 0.1, 0.5, 0.5)
    assert pixel_error(box, (0.12, 0.2, 0.5, 0.5), (100, 400)) == pytest.approx(40.0)  # y0 moved
    assert pixel_error(box, (0.1, 0.1, 0.52, 0.6), (100, 400)) == pytest.approx(40.0)  # y1 moved


def test_coco_box_to_normalized() -> None:
    assert coco_to_normalized([20, 10, 40, 30], (200, 100)) == pytest.approx((0.1, 0.1, 0.3, 0.4))
    assert coco_to_normalized((0, 0, 200, 100), (200, 100)) == (0.0, 0.0, 1.0, 1.0)
    assert coco_to_normalized([np.float64(20.0), 10, 40, 30], (200, 100)) == pytest.approx((0.1, 0.1, 0.3, 0.4))


def test_normalized_to_coco_is_the_inverse_of_coco_to_normalized() -> None:
    assert normalized_to_coco((0.1, 0.1, 0.3, 0.4), (200, 100)) == pytest.approx([20, 10, 40, 30])
    for bbox in ([20, 10, 40, 30], [0.5, 0, 199.5, 100], [13.25, 7.5, 1, 2]):
        assert normalized_to_coco(coco_to_normalized(bbox, (200, 100)), (200, 100)) == pytest.approx(bbox)
    with pytest.raises(ValueError, match="has no area"):
        normalized_to_coco((0.3, 0.1, 0.3, 0.4), (200, 100))
    with pytest.raises(ValueError, match="two positive ints"):
        normalized_to_coco((0.1, 0.1, 0.3, 0.4), (0, 100))


def test_star_data_writes_its_boxes_with_the_one_conversion(tmp_path, monkeypatch) -> None:
    """write_coco computed its COCO boxes itself: a second copy of the conversion."""
    import json

    from helpers.grounding import boxes
    from helpers.world import new_kinds

    calls = []
    monkeypatch.setattr(new_kinds, "normalized_to_coco",
                        lambda box, size: calls.append((box, size)) or boxes.normalized_to_coco(box, size))
    data = json.loads(new_kinds.write_coco(tmp_path, 3, seed=5, name="t").read_text("utf-8"))
    assert len(calls) == len(data["annotations"]) > 0
    # Each box written is the box of its object in the scene drawn (a round trip of the written box would hold for
    # any box at all).
    scenes = [new_kinds.star_scene(5 * new_kinds.SEED_STRIDE + i) for i in range(3)]
    expected = [boxes.normalized_to_coco(o.box, s.image.size) for s in scenes for o in s.objects]
    assert len(data["annotations"]) == len(expected)
    for ann, box in zip(data["annotations"], expected):
        assert ann["bbox"] == pytest.approx(box)


@pytest.mark.parametrize("value, one", [
    ((0.1, 0.2, 0.3, 0.4), True), ([1, 2, 3, 4], True), (np.array([0.1, 0.2, 0.3, 0.4]), True),
    ([(0.1, 0.2, 0.3, 0.4)], False), ([], False), ([True, 0, 1, 1], False), ((0.1, 0.2, 0.3), False),
    ([(0, 0, 1, 1)] * 4, False),
])
def test_is_one_box_tells_a_bare_box_from_a_list_of_boxes(value, one) -> None:
    assert is_one_box(value) is one


def test_coco_box_overshooting_by_less_than_the_tolerance_is_clipped() -> None:
    assert EDGE_TOLERANCE_PX == 1.0
    assert coco_to_normalized([150.5, 60, 50, 40.4], (200, 100)) == pytest.approx((150.5 / 200, 0.6, 1.0, 1.0))
    assert coco_to_normalized([-0.5, -1.0, 10, 10], (200, 100)) == pytest.approx((0.0, 0.0, 9.5 / 200, 0.09))


@pytest.mark.parametrize("bbox", [
    [100.5, 10, 0.4, 10],   # starts past the right edge (it used to give (1.005, 0.1, 1.0, 0.2), inverted)
    [10, 100.2, 10, 0.5],   # starts past the bottom edge
    [100, 10, 0.5, 10],     # starts on the right edge: nothing left after clipping
    [10, 100, 10, 1.0],     # starts on the bottom edge
    [-1.0, 10, 0.9, 10],    # ends before the left edge
    [10, -0.8, 10, 0.5],    # ends before the top edge
])
def test_coco_box_with_nothing_inside_the_image_is_refused(bbox) -> None:
    with pytest.raises(ValueError, match=r"lies outside the image of 100 x 100 pixels: nothing of it is inside"):
        coco_to_normalized(bbox, (100, 100))


@pytest.mark.parametrize("bbox, message", [
    ([20, 10, 40], r"'bbox' must be \[x, y, w, h\] \(4 numbers, pixels\)"),
    ("20 10 40 30", r"'bbox' must be \[x, y, w, h\]"),
    ({"x": 1, "y": 2, "w": 3, "h": 4}, r"'bbox' must be \[x, y, w, h\]"),
    ([20, 10, "40", 30], "each 'bbox' value must be a number, got '40'"),
    ([20, 10, True, 30], "each 'bbox' value must be a number, got True"),
    ([20, 10, float("nan"), 30], "each 'bbox' value must be finite"),
    ([20, 10, 0, 30], r"'bbox' \[20, 10, 0, 30\] has no area"),
    ([20, 10, 40, -3], "has no area"),
    ([70, 10, 40, 30], r"reaches beyond the image of 100 x 100 pixels \(it ends at x = 110"),
    ([-1.5, 10, 40, 30], "reaches beyond the image of 100 x 100"),
])
def test_coco_box_errors_say_what_is_wrong(bbox, message) -> None:
    with pytest.raises(ValueError, match=message):
        coco_to_normalized(bbox, (100, 100), what="'bbox'")



def test_coco_box_reaching_below_a_wide_image_is_refused() -> None:
    """The bottom edge is checked against the height: on a 200 x 100 image a box ending at y = 110 reaches
    beyond, though 110 is less than the width."""
    with pytest.raises(ValueError, match=r"reaches beyond the image of 200 x 100 pixels \(it ends at x = 10, y = 110;"):
        coco_to_normalized([0, 50, 10, 60], (200, 100), what="'bbox'")


def test_coco_box_checks_the_image_size() -> None:
    with pytest.raises(ValueError, match="two positive ints"):
        coco_to_normalized([0, 0, 1, 1], (0, 100))


def test_one_coco_box_conversion_for_refcoco_and_finetuning() -> None:
    """RefCOCO and the fine-tuning data convert COCO boxes with coco_to_normalized, and Flickr30k uses its
    tolerance: no copy of the rule or of the tolerance elsewhere."""
    import re

    from helpers.course.paths import repo_root
    from helpers.grounding import boxes, finetune, refcoco

    from helpers.grounding import flickr30k

    assert flickr30k.EDGE_TOLERANCE_PX is boxes.EDGE_TOLERANCE_PX  # Flickr30k's corner boxes: the same tolerance
    for module in (refcoco, finetune):
        text = Path(module.__file__).read_text("utf-8")
        assert "coco_to_normalized(" in text
        assert not re.search(r"^EDGE_TOLERANCE_PX\s*=", text, re.M)
        assert not re.search(r"x \+ w > width", text)
    defined = [p.name for p in (repo_root() / "helpers").rglob("*.py")
               if re.search(r"^EDGE_TOLERANCE_PX\s*=", p.read_text("utf-8"), re.M)]
    assert defined == ["boxes.py"]


@pytest.mark.parametrize("box, message", [
    ((0.1, 0.1, 1.5, 0.5), r"must lie in \[0, 1\], got \(0.1, 0.1, 1.5, 0.5\)\.$"),  # a slip, not pixels: no hint
    ((1.2, 0.1, 0.5, 0.5), r"must lie in \[0, 1\], got \(1.2, 0.1, 0.5, 0.5\)\.$"),  # out of range before inverted
    ((250, 22, 630, 397), r"It looks like a pixel box: convert it with to_normalized"),
    ((0.5, 0.1, 0.2, 0.5), r"normalized box is inverted"),
])
def test_a_normalized_box_error_names_the_first_thing_wrong(box, message) -> None:
    from helpers.grounding.boxes import check_normalized, looks_like_pixels

    with pytest.raises(ValueError, match=message):
        check_normalized(box)
    assert looks_like_pixels(box) is (box == (250, 22, 630, 397))
