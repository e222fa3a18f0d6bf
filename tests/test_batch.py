"""Tests for helpers.course.batch: grounding a folder of images into JSON Lines and annotated PNGs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

import helpers.grounding.model
from helpers.course.batch import (
    ANNOTATION_MIN_SIDE,
    annotation_canvas,
    RESULTS_NAME,
    annotated_names,
    contact_sheet,
    ground_folder,
    image_files,
    read_results,
)
from helpers.course.outputs import grounding_record
from helpers.grounding.images import ImageLoadError
from helpers.course.solutions_more import count_phrases
from helpers.world.scenes import sample_scenes
from helpers.grounding.tokens import location_tokens, parse_generation
from helpers.grounding.prompts import CAPTION_PROMPT, GENERATION_PROMPT


@pytest.fixture()
def folder(tmp_path) -> Path:
    """Three scenes of different sizes as PNGs, and a file that is not an image."""
    images = tmp_path / "scenes"
    images.mkdir()
    for i, scene in enumerate(sample_scenes(3, seed=11)):
        scene.image.save(images / f"scene_{i}.png")
    (images / "notes.txt").write_text("not an image")
    return images


def test_image_files_expands_folders_and_names_every_missing_path(folder, tmp_path) -> None:
    files = image_files([folder, folder / "scene_1.png"])
    assert [f.name for f in files] == ["scene_0.png", "scene_1.png", "scene_2.png", "scene_1.png"]
    assert image_files(folder / "scene_2.png") == [folder / "scene_2.png"]
    with pytest.raises(ImageLoadError, match=r"2 image path\(s\) do not exist: .*a\.png, .*b\.png"):
        image_files([tmp_path / "a.png", folder, tmp_path / "b.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageLoadError, match="without image files"):
        image_files([tmp_path / "empty"])


def test_what_a_folder_holds_besides_images_is_skipped_with_one_line(folder, capsys) -> None:
    """Files without an image ending (a PNG named b.jfif or c, notes) and sub-folders were skipped without a word."""
    files = image_files([folder])
    assert [f.name for f in files] == ["scene_0.png", "scene_1.png", "scene_2.png"]
    assert capsys.readouterr().err == (f"skipped 1 of 4 item(s) in {str(folder)!r} that are not image files by their "
                                       "ending (.png, .jpg, .jpeg, .webp, .bmp, .gif, .tif, .tiff; sub-folders are "
                                       "not searched): notes.txt\n")
    for name in ("b.jfif", "c", "d.PNG.bak", "e", "f", "g"):
        (folder / name).write_bytes((folder / "scene_0.png").read_bytes())
    (folder / "sub").mkdir()
    assert image_files([folder / "scene_1.png", folder]) == [folder / "scene_1.png", *files]
    err = capsys.readouterr().err
    assert err.startswith(f"skipped 8 of 11 item(s) in {str(folder)!r} that are not image files by their ending ")
    assert err.endswith("sub-folders are not searched): b.jfif, c, d.PNG.bak, e, f and 3 more\n")
    assert err.count("\n") == 1
    image_files([folder / "scene_1.png"])  # files given one by one: nothing to say
    assert capsys.readouterr().err == ""


def test_ground_folder_says_what_it_skipped_once(tiny_model, folder, tmp_path, capsys) -> None:
    model, processor = tiny_model
    records = ground_folder(model, processor, [folder], CAPTION_PROMPT, tmp_path / "o", max_new_tokens=2,
                            progress=False)
    assert len(records) == 3
    err = capsys.readouterr().err
    assert err.count("skipped 1 of 4 item(s)") == 1 and err.endswith("not searched): notes.txt\n")


@pytest.mark.parametrize("paths", [lambda folder: [Image.open(folder / "scene_0.png")],
                                   lambda folder: [folder, sample_scenes(1, seed=1)[0].image],
                                   lambda folder: sample_scenes(1, seed=1)[0].image,
                                   lambda folder: [None], lambda folder: 5])
def test_paths_are_files_and_folders_not_images(tiny_model, folder, tmp_path, paths) -> None:
    """A PIL image, natural after ground() took them, failed inside pathlib."""
    model, processor = tiny_model
    with pytest.raises(TypeError, match=r"^paths must be image files and folders of images \(str or os\.PathLike; "
                                        r"ground\(\) takes PIL images\), got "):
        ground_folder(model, processor, paths(folder), CAPTION_PROMPT, tmp_path / "o", max_new_tokens=2)
    assert not (tmp_path / "o").exists()


def test_bad_out_dir_and_counts_are_refused_before_out_dir_is_made(tiny_model, folder, tmp_path) -> None:
    """An out_dir that is a file gave FileExistsError, and max_new_tokens=0 was refused only after out_dir had been
    created (by ground()), leaving an empty folder behind."""
    model, processor = tiny_model
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ValueError, match=rf"^out_dir {re.escape(repr(str(afile)))} is a file; give a folder for "
                                         r"results\.jsonl and the annotated PNGs$"):
        ground_folder(model, processor, [folder], CAPTION_PROMPT, afile, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"afile' is a file, so nothing can be written under it$"):
        ground_folder(model, processor, [folder], CAPTION_PROMPT, afile / "sub", max_new_tokens=2)
    assert afile.read_text() == ""
    for bad, error in ((0, ValueError), (-3, ValueError), (2.0, TypeError), ("5", TypeError)):
        with pytest.raises(error, match=r"^max_new_tokens must be a positive int"):
            ground_folder(model, processor, [folder], CAPTION_PROMPT, tmp_path / "new" / "o", max_new_tokens=bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "scenes"]


def test_annotated_names_are_distinct(tmp_path) -> None:
    paths = [Path("a/x.png"), Path("b/x.jpg"), Path("c/X.png"), Path("results.png"), Path("y.jpeg")]
    assert annotated_names(paths, tmp_path) == ["x.png", "x_2.png", "X_3.png", "results.png", "y.png"]


def test_the_results_never_replace_the_input_images(tiny_model, folder) -> None:
    model, processor = tiny_model
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ValueError, match=r"holds the input image\(s\) scene_0.png, scene_1.png, scene_2.png, "
                                         "which their annotated copies would replace"):
        ground_folder(model, processor, [folder], CAPTION_PROMPT, folder, max_new_tokens=2)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written there


def test_grounding_record_has_normalized_and_pixel_boxes() -> None:
    text = ("<image>.</image><grounding> An image of<phrase> two red circles</phrase><object>"
            "<patch_index_0000><patch_index_0033></delimiter_of_multi_objects/><patch_index_0528>"
            "<patch_index_1023></object>.")
    g = parse_generation(text)
    rec = grounding_record("scenes/a.png", CAPTION_PROMPT, g, (320, 160), annotated="a.png")
    assert rec["caption"] == "An image of two red circles."
    (ent,) = rec["entities"]
    assert ent["phrase"] == "two red circles" and ent["span"] == [12, 27]
    assert ent["boxes"] == [list(b) for b in g.entities[0].boxes]
    assert ent["boxes_px"] == [[5.0, 2.5, 15.0, 7.5], [165.0, 82.5, 315.0, 157.5]]
    assert rec["generated"].startswith("<grounding> An image of<phrase>")
    assert (rec["file"], rec["annotated"], rec["width"], rec["height"], rec["problems"]) == \
        ("scenes/a.png", "a.png", 320, 160, [])
    json.dumps(rec)  # plain JSON types only


def test_ground_folder_writes_jsonl_and_pngs(tiny_model, folder, tmp_path) -> None:
    model, processor = tiny_model
    out = tmp_path / "out"
    records = ground_folder(model, processor, [folder], CAPTION_PROMPT, out, batch_size=2, max_new_tokens=6,
                            progress=False)
    assert len(records) == 3
    assert read_results(out) == records == read_results(out / RESULTS_NAME)
    images = [Image.open(folder / f"scene_{i}.png") for i in range(3)]
    direct = helpers.grounding.model.ground(model, processor, [im.convert("RGB") for im in images], CAPTION_PROMPT,
                                  max_new_tokens=6, batch_size=3, progress=False)
    for i, (rec, im, g) in enumerate(zip(records, images, direct)):
        assert rec["file"] == str(folder / f"scene_{i}.png")
        assert rec["prompt"] == CAPTION_PROMPT and rec["caption"] == g.caption
        assert rec["problems"] == g.problems
        assert (rec["width"], rec["height"]) == im.size
        annotated = Image.open(out / rec["annotated"])
        assert annotated.format == "PNG" and annotated.size == annotation_canvas(im).size
    assert sorted(p.name for p in out.iterdir()) == [RESULTS_NAME, "scene_0.png", "scene_1.png", "scene_2.png"]


def test_annotation_canvas_enlarges_small_pictures_so_labels_stay_small_beside_the_objects() -> None:
    from helpers.grounding.plotting import label_boxes

    scene = sample_scenes(1, seed=5, size=(85, 97))[0]
    canvas = annotation_canvas(scene.image)
    assert min(canvas.size) == ANNOTATION_MIN_SIDE
    assert abs(canvas.width / canvas.height - 85 / 97) < 0.01
    entities = [(obj.phrase, None, [obj.box]) for obj in scene.objects]
    for size in (scene.image.size, canvas.size):
        tallest = max(lab.rect_px[3] - lab.rect_px[1] for lab in label_boxes(size, entities))
        share = tallest / size[1]
        assert (share > 0.1) if size == scene.image.size else (share < 0.06), (size, share)
    big = Image.new("RGB", (500, 400))
    assert annotation_canvas(big) is big


def test_ground_folder_with_a_user_box(tiny_model, folder, tmp_path) -> None:
    model, processor = tiny_model
    box = (0.2, 0.3, 0.6, 0.9)
    records = ground_folder(model, processor, [folder / "scene_0.png"], GENERATION_PROMPT, tmp_path / "o",
                            max_new_tokens=4, box=box, progress=False)
    generated = records[0]["generated"]
    assert generated.startswith(f"<grounding><phrase> It</phrase><object>{location_tokens(box)}</object> is")
    plain = Image.open(folder / "scene_0.png").convert("RGB")
    assert Image.open(tmp_path / "o" / "scene_0.png").convert("RGB").tobytes() != plain.tobytes()


@pytest.fixture()
def large_photos(tmp_path) -> list[Path]:
    """Two images that load_image shrinks (longest side over 4096 pixels): a wide PNG, and a JPEG stored
    4200 x 1000 whose EXIF orientation 6 turns it upright to 1000 x 4200 (flat colours: small files)."""
    wide = tmp_path / "wide.png"
    Image.new("RGB", (4200, 1000), (200, 180, 160)).save(wide)
    upright = tmp_path / "upright.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (4200, 1000), (90, 140, 200)).save(upright, exif=exif)
    return [wide, upright]


def test_large_photos_are_recorded_at_the_files_own_size(tiny_model, large_photos, tmp_path) -> None:
    """The model sees a copy shrunk to 4096 pixels a side; width, height and boxes_px are still those of the
    file (as the EXIF orientation turns it), not of the copy (4096 x 975, boxes 2.5 % too small)."""
    from helpers.course.batch import check_images
    from helpers.grounding.images import load_image

    model, processor = tiny_model
    out = tmp_path / "out"
    records = ground_folder(model, processor, large_photos, GENERATION_PROMPT, out, box=(0.2, 0.3, 0.6, 0.9),
                            max_new_tokens=2, progress=False)
    expected = [(4200, 1000), (1000, 4200)]
    assert [(r["width"], r["height"]) for r in records] == expected
    for rec, (width, height), path in zip(records, expected, large_photos):
        assert rec["entities"], rec["generated"]  # the user box's phrase at least
        for entity in rec["entities"]:
            assert entity["boxes_px"] == [[round(x0 * width, 1), round(y0 * height, 1), round(x1 * width, 1),
                                           round(y1 * height, 1)] for x0, y0, x1, y1 in entity["boxes"]]
        with Image.open(out / rec["annotated"]) as png:  # drawn on the copy the model saw
            assert png.size == load_image(path).size and max(png.size) == 4096
    assert check_images(large_photos) == expected


def test_ground_folder_input_errors(tiny_model, folder, tmp_path) -> None:
    model, processor = tiny_model
    with pytest.raises(ValueError, match="needs a <phrase>"):
        ground_folder(model, processor, [folder], CAPTION_PROMPT, tmp_path, box=(0.1, 0.1, 0.5, 0.5))
    with pytest.raises(ValueError, match="x0 < x1 and y0 < y1"):
        ground_folder(model, processor, [folder], GENERATION_PROMPT, tmp_path, box=(0.5, 0.1, 0.5, 0.5))
    with pytest.raises(ValueError, match="normalized box values must lie in"):
        ground_folder(model, processor, [folder], GENERATION_PROMPT, tmp_path, box=(10, 10, 50, 50))
    with pytest.raises(ValueError, match="prompt must be a non-empty str"):
        ground_folder(model, processor, [folder], "  ", tmp_path)
    for bad in (-1, 0):  # 0 is not "the default"
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            ground_folder(model, processor, [folder], CAPTION_PROMPT, tmp_path, batch_size=bad)
    with pytest.raises(TypeError, match="batch_size must be a positive int"):
        ground_folder(model, processor, [folder], CAPTION_PROMPT, tmp_path, batch_size=0.0)
    with pytest.raises(ImageLoadError, match="do not exist"):
        ground_folder(model, processor, [tmp_path / "none.png"], CAPTION_PROMPT, tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match="broken.png"):
        ground_folder(model, processor, [broken], CAPTION_PROMPT, tmp_path / "b")


def test_a_failed_run_leaves_the_earlier_results_file_as_it_was(tiny_model, folder, tmp_path) -> None:
    """results.jsonl is written to a temporary file and put in place at the end: an image that fails in a
    later batch leaves the earlier file whole (not emptied, not half-written) and no temporary file."""
    model, processor = tiny_model
    out = tmp_path / "out"
    out.mkdir()
    (out / RESULTS_NAME).write_text('{"earlier": "run"}\n')
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match="broken.png"):
        ground_folder(model, processor, [folder / "scene_0.png", broken], CAPTION_PROMPT, out, batch_size=1,
                      max_new_tokens=3, progress=False)
    assert (out / RESULTS_NAME).read_text() == '{"earlier": "run"}\n'
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    records = ground_folder(model, processor, [folder / "scene_0.png"], CAPTION_PROMPT, out, max_new_tokens=3,
                            progress=False)
    assert read_results(out) == records
    assert sorted(p.name for p in out.iterdir()) == [RESULTS_NAME, "scene_0.png"]


def test_check_images_names_every_unreadable_file(folder, tmp_path) -> None:
    from helpers.course.batch import check_images

    good = sorted(folder.glob("*.png"))
    assert check_images(good) == [Image.open(p).size for p in good]
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"junk")
    with pytest.raises(ImageLoadError,
                       match=r"^2 of 5 image\(s\) cannot be read: file .*a\.png .*\(also unreadable: .*b\.png\)$"):
        check_images([*good, tmp_path / "a.png", tmp_path / "b.png"])


def test_read_results_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no results file"):
        read_results(tmp_path)
    (tmp_path / RESULTS_NAME).write_text('{"a": 1}\n\nnot json\n')
    with pytest.raises(ValueError, match="line 3 is not JSON"):
        read_results(tmp_path)


def test_read_results_refuses_files_that_are_not_results(tmp_path) -> None:
    """A PNG gave a UnicodeDecodeError, and a JSON array came back as [[{…}]]."""
    png = tmp_path / "scene.png"
    sample_scenes(1, seed=1)[0].image.save(png)
    with pytest.raises(ValueError, match=rf"^{re.escape(repr(str(png)))} is not a results file \(JSON Lines: one "
                                         r"grounding record per line, as ground_folder\(\) writes\): it is not "
                                         r"UTF-8 text$"):
        read_results(png)
    for text, got in (('[{"a": 1}]', '[{"a": 1}]'), ('{"entities": []}\n[1, 2]\n', "[1, 2]"),
                      ('{"caption": "x"}\n', '{"caption": "x"}'), ('{"entities": "a dog"}\n', '{"entities": "a dog"}')):
        other = tmp_path / "other.jsonl"
        other.write_text(text)
        with pytest.raises(ValueError, match=r" is not a results file .*: record \d is not a JSON object with an "
                                             rf"'entities' list, got {re.escape(got)}$"):
            read_results(other)
    other.write_text('{"file": "a.png", "entities": []}\n')
    assert read_results(other) == [{"file": "a.png", "entities": []}]


@pytest.mark.parametrize("one", ["scene.png", Path("scene.png"), b"scene.png",
                                 lambda: sample_scenes(1, seed=1)[0].image])
def test_contact_sheet_wants_a_list_of_images(one, tmp_path, monkeypatch) -> None:
    """``contact_sheet("x.png")`` read the name character by character: "no image file at 'x'"."""
    monkeypatch.chdir(tmp_path)
    sample_scenes(1, seed=1)[0].image.save("scene.png")
    one = one() if callable(one) else one
    with pytest.raises(TypeError, match=r"^images must be a list of PIL images or image files; for one, write "
                                        rf"\[image\]; got {type(one).__name__}: "):
        contact_sheet(one)
    assert contact_sheet(["scene.png"]).size == (200, 150)


def test_contact_sheet_places_every_image(folder) -> None:
    files = image_files([folder])
    sheet = contact_sheet(files + [Image.new("RGB", (50, 100), (255, 0, 0))], columns=2, cell=(100, 80))
    assert sheet.size == (200, 160)
    # the red image (4th) sits centred in the second row's right cell, shrunk to fit 96 x 76
    assert sheet.getpixel((150, 120)) == (255, 0, 0)
    assert sheet.getpixel((105, 120)) == (255, 255, 255)
    with pytest.raises(ValueError, match="at least one image"):
        contact_sheet([])
    with pytest.raises(ValueError, match="columns"):
        contact_sheet(files, columns=0)
    with pytest.raises(ValueError, match="cell"):
        contact_sheet(files, cell=(100,))


def test_count_phrases_solution(tmp_path) -> None:
    records = [
        {"entities": [{"phrase": "a red circle"}, {"phrase": "two blue squares"}]},
        {"entities": [{"phrase": "The red circle"}]},
        {"entities": []},
    ]
    (tmp_path / RESULTS_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    assert count_phrases(tmp_path) == count_phrases(records) == {"red circle": 2, "two blue squares": 1}
    with pytest.raises(ValueError, match="'entities'"):
        count_phrases([{"caption": "x"}])


@pytest.mark.parametrize("cell", [(4, 4), (3, 3), (100, 7)])
def test_contact_sheet_refuses_cells_too_small_for_a_picture(cell) -> None:
    with pytest.raises(ValueError, match=r"cell must be at least 8 x 8 pixels"):
        contact_sheet([sample_scenes(1, seed=1)[0].image], cell=cell)
