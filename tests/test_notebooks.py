"""Every notebook: its structure and stored outputs; and the exercise solutions in helpers.course.solutions.

nbval (``pytest notebooks/``) re-executes the notebooks and compares outputs; these tests check what
nbval does not: the skeleton every notebook of the series follows (title, "Where this fits" with its
Colab badge, the set-up cell, summary, exercises with collapsed solutions, a Japanese summary) and that
the stored outputs are clean (no errors, no stderr, no absolute paths, small PNG pictures, execution
counts in order, no plumbing for the main job in the lessons).
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from helpers.course.colab import COLAB_CELL, colab_badge_url
from helpers.course.notebooks import course_notebooks
from helpers.course.paths import bundled_model_dir, notebooks_dir
from helpers.course.solutions import ask_about_box, patch_index_of_pixel
from helpers.grounding.boxes import to_pixels
from helpers.grounding.tokens import box_to_patch_index, location_tokens
from helpers.world.scenes import character_illustration

NOTEBOOKS = [p.name for p in course_notebooks()]
SOLUTION_HEAD = "# Solution — try it yourself first"
ABSOLUTE_PATH = re.compile(r"(/work/|/home/|/Users/|/root/|/tmp/|site-packages|[A-Z]:\\\\)")
PROGRESS_BAR = re.compile(r"\d+%\|")
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def _load(name: str) -> nbformat.NotebookNode:
    path = notebooks_dir() / name
    assert path.is_file(), f"{path} is missing"
    return nbformat.read(path, as_version=4)


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def _markdown(nb: nbformat.NotebookNode) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "markdown"]


def _bullets(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("- ")]


@pytest.fixture(scope="module", params=NOTEBOOKS)
def notebook(request: pytest.FixtureRequest) -> tuple[str, nbformat.NotebookNode]:
    return request.param, _load(request.param)


# --------------------------------------------------------------------------------------------- skeleton


def test_title_names_the_number_and_states_an_objective(notebook) -> None:
    name, nb = notebook
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    lines = [line for line in first.source.splitlines() if line.strip()]
    assert lines[0].startswith(f"# {name[:2]} · "), lines[0]
    assert len(lines) >= 2 and lines[1].startswith("By the end you can"), "the title needs a one-line objective"


def test_where_this_fits_has_its_own_colab_badge(notebook) -> None:
    name, nb = notebook
    second = nb.cells[1]
    assert second.cell_type == "markdown" and second.source.startswith("## Where this fits")
    assert f"({colab_badge_url(name)})" in second.source
    assert "colab-badge.svg" in second.source


def test_first_code_cell_is_the_colab_cell_then_a_setup_cell(notebook) -> None:
    _, nb = notebook
    code = _code_cells(nb)
    assert code[0].source == COLAB_CELL
    assert nb.cells.index(code[0]) == 2, "the set-up cell comes right after 'Where this fits'"
    setup = code[1].source
    assert "from helpers" in setup or "import helpers" in setup


def test_summary_has_three_to_five_bullets(notebook) -> None:
    _, nb = notebook
    summaries = [text for text in _markdown(nb) if "## Summary" in text]
    assert len(summaries) == 1
    summary = summaries[0].split("## Summary", 1)[1]
    assert 3 <= len(_bullets(summary)) <= 5


def test_exercises_have_collapsed_solutions_that_ran(notebook) -> None:
    """A solution's code and output are both collapsed in Jupyter (a click opens each) and folded behind one
    toggle on the website (myst-nb's ``hide-cell`` tag); no other cell is folded, and the Exercises heading says
    how to open a solution."""
    _, nb = notebook
    start = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "## Exercises" in c.source)
    solutions = [c for c in nb.cells[start:] if c.cell_type == "code"]
    assert 2 <= len(solutions) <= 3
    stars = [text for text in _markdown(nb)[0:] if re.search(r"\*\*\d\. ★", text)]
    assert [len(re.search(r"★+", t).group()) for t in stars] == sorted(len(re.search(r"★+", t).group()) for t in stars)
    for cell in solutions:
        assert cell.source.splitlines()[0] == SOLUTION_HEAD
        assert cell.metadata.get("jupyter") == {"source_hidden": True, "outputs_hidden": True}, cell.source[:80]
        assert "hide-cell" in cell.metadata.get("tags", []), f"not folded on the website: {cell.source[:80]!r}"
        assert cell.outputs, f"solution cell shows nothing: {cell.source[:80]!r}"
    others = [c for c in nb.cells if not any(c is s for s in solutions)]
    assert not [c.source[:80] for c in others if c.metadata.get("jupyter") or
                any(t.startswith("hide-") for t in c.metadata.get("tags", []))], "only solutions are collapsed"
    heading = nb.cells[start].source.split("**1. ★", 1)[0]
    assert "click" in heading and "Show the solution" in heading, "the Exercises heading says how to open a solution"


def test_ends_with_a_japanese_summary(notebook) -> None:
    _, nb = notebook
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## まとめ")
    bullets = _bullets(last.source)
    assert 3 <= len(bullets) <= 5
    assert all(JAPANESE.search(b) for b in bullets)


def test_has_at_least_one_picture(notebook) -> None:
    _, nb = notebook
    pngs = [o for c in _code_cells(nb) for o in c.outputs if "image/png" in o.get("data", {})]
    assert pngs


# --------------------------------------------------------------------------------------------- outputs


def test_execution_counts_run_from_one_in_order(notebook) -> None:
    _, nb = notebook
    counts = [c.execution_count for c in _code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1))


def test_stored_outputs_have_no_errors_stderr_paths_or_progress_bars(notebook) -> None:
    _, nb = notebook
    for cell in _code_cells(nb):
        for out in cell.outputs:
            assert out.output_type != "error", f"error output in {cell.source[:80]!r}"
            if out.output_type == "stream":
                assert out.name == "stdout", f"stderr in {cell.source[:80]!r}: {out.text[:200]!r}"
                text = out.text
            else:
                text = "".join(v for k, v in out.get("data", {}).items() if k.startswith("text/"))
            assert not ABSOLUTE_PATH.search(text), f"absolute path in the output of {cell.source[:80]!r}"
            assert not PROGRESS_BAR.search(text), f"progress bar in the output of {cell.source[:80]!r}"


def test_pictures_are_small_pngs(notebook) -> None:
    _, nb = notebook
    for cell in _code_cells(nb):
        for out in cell.outputs:
            data = out.get("data", {})
            assert "image/jpeg" not in data and "image/svg+xml" not in data
            if "image/png" in data:
                image = Image.open(io.BytesIO(base64.b64decode(data["image/png"])))
                assert image.format == "PNG" and image.width <= 600, image.size
    size = (notebooks_dir() / notebook[0]).stat().st_size
    assert size < 400_000, f"{notebook[0]} is {size} bytes"


def test_prompts_in_code_stay_english(notebook) -> None:
    _, nb = notebook
    for cell in _code_cells(nb):
        for line in cell.source.splitlines():
            if "<grounding>" in line:
                assert not JAPANESE.search(line), line


def test_lessons_hold_no_plumbing_for_the_main_job(notebook) -> None:
    _, nb = notebook
    for cell in _code_cells(nb):
        assert not re.search(r"\brecord\(|helpers\.course\.outputs|display_formatter", cell.source), cell.source[:120]


def test_real_model_cells_check_for_the_bundled_model(notebook) -> None:
    _, nb = notebook
    for cell in _code_cells(nb):
        if '["image_url"]' in cell.source:
            assert "model.load_info.bundled" in cell.source, cell.source[:120]


# --------------------------------------------------------------------------------------------- solutions


def test_patch_index_of_pixel_matches_the_grid() -> None:
    from helpers.course.solutions import patch_index_of_pixel

    size = (512, 384)
    for row in range(32):
        for column in range(32):
            centre = ((column + 0.5) * 512 / 32, (row + 0.5) * 384 / 32)
            assert patch_index_of_pixel(*centre, size) == row * 32 + column
    assert patch_index_of_pixel(0, 0, size) == 0
    assert patch_index_of_pixel(511, 383, size) == 1023  # the last pixel
    assert patch_index_of_pixel(300, 120, size) == 10 * 32 + 18


def test_a_pixel_is_not_a_corner_coordinate() -> None:
    """Pixel indices run from 0 to width - 1 and go to the bin they lie in (floor); a box's bottom-right corner is
    a coordinate and goes to the last bin the box reaches (ceil - 1). Notebook 01 called (512, 384) a pixel and
    put it in bin 1023, while its own left-half box ended at x = 256 in column 15, not 16."""
    size = (512, 384)
    assert patch_index_of_pixel(256, 383, size) == 31 * 32 + 16  # the first pixel of the right half
    assert box_to_patch_index((0, 0, 0.5, 1))[1] == 31 * 32 + 15  # the left half ends where column 16 begins
    assert location_tokens((0, 0, 0.5, 1)) == "<patch_index_0000><patch_index_1007>"
    with pytest.raises(ValueError, match=r"x_px=512 .* 0 <= x_px < 512 .*right edge, a coordinate"):
        patch_index_of_pixel(512, 100, size)
    with pytest.raises(ValueError, match=r"y_px=384 .*bottom edge, a coordinate.*box_to_patch_index"):
        patch_index_of_pixel(100, 384, size)


@pytest.mark.parametrize(
    "args, message",
    [
        ((513, 10, (512, 384)), "outside the image"),
        ((-1, 10, (512, 384)), "outside the image"),
        ((10, float("nan"), (512, 384)), "finite number"),
        ((10, 10, (512,)), "image_size"),
        ((10, 10, (0, 384)), "image_size"),
    ],
)
def test_patch_index_of_pixel_rejects_bad_input(args, message: str) -> None:
    from helpers.course.solutions import patch_index_of_pixel

    with pytest.raises(ValueError, match=message):
        patch_index_of_pixel(*args)


def test_modern_kwargs_translate_the_article_call() -> None:
    import torch
    from transformers import BitsAndBytesConfig

    from helpers.course.solutions import modern_from_pretrained_kwargs

    translated = modern_from_pretrained_kwargs(load_in_4bit=True, device_map={"": 0})
    assert set(translated) == {"quantization_config", "device_map", "dtype"}
    config = translated["quantization_config"]
    assert isinstance(config, BitsAndBytesConfig) and config.load_in_4bit and not config.load_in_8bit
    assert config.to_dict() == BitsAndBytesConfig(load_in_4bit=True).to_dict()  # bitsandbytes' defaults
    assert config.bnb_4bit_compute_dtype == torch.float32
    assert translated["dtype"] == torch.float16  # transformers 4's choice for the layers left unquantized
    assert translated["device_map"] == {"": 0}
    assert modern_from_pretrained_kwargs(torch_dtype=torch.bfloat16) == {"dtype": torch.bfloat16}
    eight = modern_from_pretrained_kwargs(load_in_8bit=True)
    assert eight["quantization_config"].load_in_8bit and not eight["quantization_config"].load_in_4bit
    assert eight["dtype"] == torch.float16
    assert modern_from_pretrained_kwargs() == {}
    auto = modern_from_pretrained_kwargs(torch_dtype="auto", load_in_4bit=True)  # 2023 code often said "auto"
    assert auto["dtype"] == "auto" and auto["quantization_config"].bnb_4bit_compute_dtype == torch.float32


def test_modern_kwargs_load_the_bundled_model_in_the_asked_dtype() -> None:
    import torch
    from transformers import AutoModelForImageTextToText

    from helpers.course.solutions import modern_from_pretrained_kwargs

    model = AutoModelForImageTextToText.from_pretrained(
        bundled_model_dir(), **modern_from_pretrained_kwargs(torch_dtype=torch.bfloat16)
    )
    assert model.dtype == torch.bfloat16


def test_modern_kwargs_reject_contradictions() -> None:
    from helpers.course.solutions import modern_from_pretrained_kwargs

    with pytest.raises(ValueError, match="not both"):
        modern_from_pretrained_kwargs(load_in_4bit=True, load_in_8bit=True)
    with pytest.raises(TypeError, match="True or False"):
        modern_from_pretrained_kwargs(load_in_4bit="yes")  # type: ignore[arg-type]


def test_count_token_kinds_on_a_tokenized_grounding() -> None:
    from transformers import AutoProcessor

    from helpers.course.solutions import count_token_kinds

    tokenizer = AutoProcessor.from_pretrained(bundled_model_dir()).tokenizer
    tokens = tokenizer.tokenize("<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>")
    assert count_token_kinds(tokens) == {"text": 2, "tag": 4, "location": 2}
    assert count_token_kinds(["<s>", "\u2581a", ",", "</delimiter_of_multi_objects/>", "<patch_index_1023>"]) == {
        "text": 2, "tag": 2, "location": 1}
    assert count_token_kinds([]) == {"text": 0, "tag": 0, "location": 0}
    with pytest.raises(TypeError, match="list of token strings"):
        count_token_kinds("<phrase>")
    with pytest.raises(TypeError, match="token 1"):
        count_token_kinds(["<s>", 5])  # type: ignore[list-item]


def test_grid_round_trip_loses_more_of_small_boxes() -> None:
    from helpers.course.solutions import grid_round_trip
    from helpers.grounding.tokens import patch_index_to_box

    exact = patch_index_to_box(44, 863)
    assert grid_round_trip(exact) == (exact, 1.0)
    big_box, big = grid_round_trip((0.1, 0.1, 0.9, 0.9))
    small_box, small = grid_round_trip((0.1, 0.1, 0.13, 0.13))
    assert big_box == (0.109375, 0.109375, 0.890625, 0.890625)
    assert 0 < small < big < 1
    with pytest.raises(ValueError):
        grid_round_trip((0.5, 0.5, 0.5, 0.9))


def test_entity_boxes_px_accepts_groundings_and_processor_tuples() -> None:
    from helpers.course.article import article_outputs
    from helpers.course.solutions import entity_boxes_px
    from helpers.grounding.tokens import parse_generation

    snowman = article_outputs()["snowman"]
    grounding = parse_generation(snowman["raw_generation"])
    tuples = [(p, tuple(s), [tuple(b) for b in bs]) for p, s, bs in snowman["entities"]]
    rows = entity_boxes_px(grounding, (512, 384))
    assert rows == entity_boxes_px(tuples, (512, 384)) == entity_boxes_px(grounding.entities, (512, 384))
    assert rows[0] == ("a snowman", [(200, 18, 504, 318)])
    assert rows[1] == ("a fire", [(104, 6, 248, 330)])
    with pytest.raises(TypeError):
        entity_boxes_px("a snowman", (512, 384))
    with pytest.raises(ValueError, match="image_size"):
        entity_boxes_px(grounding, (512, 0))


@pytest.fixture(scope="module")
def bundled():
    from helpers.grounding.model import load

    return load(bundled_model_dir(), verbose=False)


def test_ask_about_box_sends_the_pixel_box_as_location_tokens(bundled) -> None:
    from helpers.grounding.boxes import to_normalized
    from helpers.course.solutions import ask_about_box
    from helpers.world.scenes import character_illustration
    from helpers.grounding.tokens import box_to_patch_index, patch_index_to_box

    model, processor = bundled
    scene = character_illustration()
    box_px = (26, 144, 195, 330)
    answer, grounding = ask_about_box(model, processor, scene.image, box_px, "character", max_new_tokens=12)
    assert grounding.caption.startswith("Question: What is this character")
    assert "Answer:" in grounding.caption
    assert answer == grounding.caption.split("Answer:", 1)[1].strip()
    snapped = patch_index_to_box(*box_to_patch_index(to_normalized(box_px, scene.image.size)))
    first = grounding.entities[0]
    assert first.phrase == "this character" and first.boxes[0] == snapped


def test_ask_about_box_rejects_bad_boxes_and_nouns(bundled) -> None:
    from helpers.course.solutions import ask_about_box
    from helpers.world.scenes import character_illustration

    model, processor = bundled
    image = character_illustration().image
    with pytest.raises(ValueError, match="beyond the image"):
        ask_about_box(model, processor, image, (0, 0, 600, 100))
    with pytest.raises(ValueError, match="x0 < x1 and y0 < y1"):
        ask_about_box(model, processor, image, (50, 50, 50, 100))
    with pytest.raises(ValueError, match="noun"):
        ask_about_box(model, processor, image, (10, 10, 100, 100), noun=" ")
    with pytest.raises(TypeError, match="noun"):
        ask_about_box(model, processor, image, (10, 10, 100, 100), noun=None)  # type: ignore[arg-type]


def test_ask_about_box_refuses_a_normalized_box(bundled) -> None:
    """A box of fractions was taken for pixels: (0.1, 0.2, 0.5, 0.8) became a box inside bin 0."""
    model, processor = bundled
    image = character_illustration().image
    in_pixels = tuple(round(v, 1) for v in to_pixels((0.1, 0.2, 0.5, 0.8), image.size))
    with pytest.raises(ValueError, match=r"looks like a normalized box") as err:
        ask_about_box(model, processor, image, (0.1, 0.2, 0.5, 0.8))
    assert f"to_pixels(box, image.size) gives {in_pixels}" in str(err.value) and "bboxes=[[box]]" in str(err.value)
    with pytest.raises(ValueError, match=r"looks like a normalized box: every value is below 2"):
        ask_about_box(model, processor, image, (0, 0, 1, 1.5))
    # two pixels are a real part of a tiny image, and a box of two pixels or more reads as pixels anywhere
    answer, _ = ask_about_box(model, processor, image.resize((8, 8)), (0, 0, 1, 1), max_new_tokens=4)
    assert isinstance(answer, str)
    assert ask_about_box(model, processor, image, (0, 0, 2, 2), max_new_tokens=4)[1].entities[0].boxes


def test_every_notebook_is_numbered_and_checked() -> None:
    found = sorted(p.name for p in Path(notebooks_dir()).glob("*.ipynb"))
    assert found == NOTEBOOKS
    assert len(NOTEBOOKS) >= 12
    assert [name[:2] for name in NOTEBOOKS] == [f"{i:02d}" for i in range(1, len(NOTEBOOKS) + 1)]


# --------------------------------------------------------------------------------------------- the command


def test_a_failing_cell_is_named_in_one_line_and_its_notebook_left_as_it_was(tmp_path, capsys) -> None:
    """``python -m helpers notebooks`` printed nbclient's 40-line traceback, without saying which notebook failed."""
    from helpers.course.notebooks import main

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A lesson"), nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("\n# the broken step\nraise ValueError('bad\\nvalue')"),
                nbformat.v4.new_code_cell("y = 2")]
    failing, after = tmp_path / "fail.ipynb", tmp_path / "after.ipynb"
    nbformat.write(nb, failing)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("z = 3")]), after)
    stored = failing.read_bytes(), after.read_bytes()
    assert main([str(failing), str(after)]) == 1
    err = capsys.readouterr().err
    assert err == (f"python -m helpers notebooks: error: {failing}: cell 3 of 4 ('# the broken step') raised "
                   "ValueError: bad value (not run: after.ipynb)\n")
    assert (failing.read_bytes(), after.read_bytes()) == stored
