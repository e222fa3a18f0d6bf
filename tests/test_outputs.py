"""helpers.course.outputs: the one record layout, and how the main job keeps a notebook's groundings
without any code in the lesson."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nbformat
from PIL import Image

from helpers.course.notebooks import execute
from helpers.course.outputs import RECORDS_NAME, read_records, start_recording
from helpers.grounding import model as grounding_model
from helpers.grounding.model import ground
from helpers.world.scenes import sample_scenes


def test_recording_keeps_every_grounded_image_with_its_record(tiny_model, tmp_path: Path) -> None:
    model, processor = tiny_model
    images = [s.image for s in sample_scenes(2, seed=3)]
    hook = start_recording(tmp_path, "07_demo")
    try:
        results = ground(model, processor, images, max_new_tokens=4)
    finally:
        grounding_model.GROUND_HOOKS.remove(hook)
    ground(model, processor, images[0], max_new_tokens=4)  # after removing the hook: not recorded
    records = read_records(tmp_path)
    assert [r["notebook"] for r in records] == ["07_demo", "07_demo"]
    for rec, image, result in zip(records, images, results):
        assert rec["caption"] == result.caption and rec["prompt"] == "<grounding> An image of"
        assert (rec["width"], rec["height"]) == image.size and rec["file"] is None
        with Image.open(rec["annotated"]) as png:
            assert png.size == image.size
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["07_demo_001.png", "07_demo_002.png"]


def test_execute_runs_the_setup_code_and_leaves_it_out_of_the_written_notebook(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(SEEN)"),
                nbformat.v4.new_code_cell("from PIL import Image\nImage.new('RGB', (8, 8), 'red')")]
    source = tmp_path / "nb.ipynb"
    nbformat.write(nb, source)
    out = tmp_path / "done.ipynb"
    execute(source, out, setup="SEEN = 'from the set-up'")
    done = nbformat.read(out, as_version=4)
    assert [c.source for c in done.cells] == [c.source for c in nb.cells]
    assert done.cells[0].outputs[0].text == "from the set-up\n"
    picture = done.cells[1].outputs[0].data
    assert "image/png" in picture and "image/jpeg" not in picture  # stored once, as PNG
    assert [c.execution_count for c in done.cells] == [2, 3]
    assert not (tmp_path / RECORDS_NAME).exists()
    assert json.loads(out.read_text())["nbformat"] == 4


def test_a_record_names_the_cell_that_grounded_as_the_executed_notebook_numbers_it(tmp_path: Path) -> None:
    import nbformat

    source, out, results = tmp_path / "nb.ipynb", tmp_path / "run.ipynb", tmp_path / "results"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell(  # what ground() does after generating: call the hooks
                    "from PIL import Image\n"
                    "from helpers.grounding import model\n"
                    "from helpers.grounding.tokens import parse_generation\n"
                    "for hook in model.GROUND_HOOKS:\n"
                    "    hook([Image.new('RGB', (8, 8))], ['<grounding>'], [parse_generation('<phrase> a dot</phrase>"
                    "<object><patch_index_0000><patch_index_1023></object>')])"),
                nbformat.v4.new_code_cell("y = 2")]
    nbformat.write(nb, source)
    execute(source, out, setup=f"from helpers.course.outputs import start_recording\n"
                               f"start_recording({str(results)!r}, 'nb')")
    (record,) = read_records(results)
    assert record["cell"] == nbformat.read(out, as_version=4).cells[1].execution_count


def test_a_broken_records_line_is_named(tmp_path: Path) -> None:
    (tmp_path / RECORDS_NAME).write_text('{"notebook": "a"}\n\n{"notebook": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"records.jsonl' line 3 is not JSON"):
        read_records(tmp_path)


def test_write_jsonl_replaces_the_file_only_when_every_line_is_written(tmp_path: Path) -> None:
    """``python -m helpers evaluate`` wrote its rows through ``<name>.partial`` and left that file behind when a row
    could not be written (a NaN score); ``ground`` and ``distributed`` cleaned up theirs. Now one writer does."""
    from helpers.course.outputs import read_jsonl, write_jsonl

    out = tmp_path / "new" / "rows.jsonl"
    assert write_jsonl(out, [{"phrase": "a café"}, {"n": 2}]) == out
    assert out.read_text(encoding="utf-8") == '{"phrase": "a café"}\n{"n": 2}\n'  # UTF-8 as it is, one per line
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_jsonl(out, [{"n": 3}, {"iou": float("nan")}])

    def stopped():
        yield {"n": 4}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(out, stopped())
    assert read_jsonl(out) == [{"phrase": "a café"}, {"n": 2}]  # the earlier file, as it was
    assert sorted(p.name for p in out.parent.iterdir()) == ["rows.jsonl"]  # no temporary file left


def test_write_files_replaces_none_when_one_cannot_be_written(tmp_path: Path) -> None:
    """A model card and its figures (``README.md`` beside ``evaluation.json``) were written one after the other, so
    a failure between them left new figures beside the old card. Now every text is written before any file is
    replaced."""
    from helpers.grounding import checks

    card, figures = tmp_path / "README.md", tmp_path / "evaluation.json"
    assert checks.write_files({figures: "{}\n", card: "old card\n"}) == [figures, card]
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate is no UTF-8: the second text fails
        checks.write_files({figures: '{"new": 1}\n', card: "new card \ud800\n"})
    (tmp_path / "taken").write_text("a file", encoding="utf-8")
    with pytest.raises(OSError):  # the second file's folder cannot be made
        checks.write_files({figures: '{"new": 1}\n', tmp_path / "taken" / "card.md": "x"})
    assert figures.read_text(encoding="utf-8") == "{}\n" and card.read_text(encoding="utf-8") == "old card\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "evaluation.json", "taken"]  # no temporaries


@pytest.mark.parametrize("command", ["ground", "distributed", "evaluate"])
def test_every_results_file_is_written_by_the_one_writer(command, tiny_model_dir, tmp_path, monkeypatch) -> None:
    """``ground`` (batch), ``distributed`` and ``evaluate`` each wrote JSON Lines with their own copy. Each command
    runs here with the writer its module uses replaced by one that records its calls: a module that kept the import
    but wrote its rows itself would leave the calls empty."""
    from helpers.course import batch, cli, cli_evaluate, distributed, outputs

    calls = []

    def spy(path, rows):
        rows = list(rows)
        calls.append((Path(path), rows))
        return outputs.write_jsonl(path, rows)

    image = tmp_path / "scene.png"
    sample_scenes(1, seed=3)[0].image.save(image)
    model = ["--model", str(tiny_model_dir), "--quiet"]
    out = tmp_path / "out" / batch.RESULTS_NAME
    if command == "ground":
        module, main, argv = batch, cli.main, [str(image), "--out", str(out.parent), "--max-new-tokens", "4", *model]
    elif command == "distributed":
        module, main, argv = distributed, distributed.main, [str(image), "--out", str(out), "--max-new-tokens", "4",
                                                             *model]
    else:
        module, main, argv = cli_evaluate, cli_evaluate.main, ["world", "--scenes", "1", "--out", str(out), *model]
    monkeypatch.setattr(module, "write_jsonl", spy)
    assert main(argv) == 0
    assert [path for path, _ in calls] == [out]
    assert calls[0][1] and outputs.read_jsonl(out) == json.loads(json.dumps(calls[0][1]))  # as JSON keeps them
