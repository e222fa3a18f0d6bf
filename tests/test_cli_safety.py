"""The commands refuse bad paths with one line and exit status 2 (1 for a model folder that holds no model that
loads), before doing any work, and never delete what they did not write: ``run --out``, ``notebooks``,
``modelcard`` (the ``ground`` and ``distributed`` cases are in their own test files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.__main__ import main as helpers_main
from helpers.course import mainjob


@pytest.fixture()
def fake_notebooks(monkeypatch, tmp_path_factory):
    """``run`` on one stand-in notebook whose "execution" only writes the executed copy (no kernel)."""
    nb = tmp_path_factory.mktemp("nbs") / "01_demo.ipynb"
    nb.write_text("{}")
    ran = []

    def execute(path, out, setup=None):
        ran.append(out)
        Path(out).write_text("executed")
        return 0.0

    monkeypatch.setattr(mainjob, "course_notebooks", lambda: [nb])
    monkeypatch.setattr(mainjob, "execute", execute)
    return ran


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_run_leaves_a_folder_it_did_not_write_alone(fake_notebooks, tmp_path, monkeypatch, capsys) -> None:
    mine = tmp_path / "mine"
    (mine / "notebooks").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    (mine / "notebooks" / "lesson.ipynb").write_text("{}")
    assert mainjob.main(["--out", str(mine)]) == 2
    err = _error_line(capsys)
    assert err.startswith("python -m helpers run: error: --out ")
    assert "is not empty and was not written by an earlier run (it has no .helpers-run file)" in err
    assert "choose a new or empty folder" in err
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "notebooks" / "lesson.ipynb").exists()
    assert not fake_notebooks  # nothing ran
    monkeypatch.chdir(mine)  # `--out .` in a project folder
    assert helpers_main(["run", "--out", "."]) == 2
    assert "choose a new or empty folder" in _error_line(capsys)
    assert sorted(p.name for p in mine.iterdir()) == ["notebooks", "notes.txt"]


def test_run_refuses_a_file(fake_notebooks, tmp_path, capsys) -> None:
    (tmp_path / "f.txt").write_text("x")
    assert mainjob.main(["--out", str(tmp_path / "f.txt")]) == 2
    assert "f.txt' is a file; give a new or empty folder for the results" in _error_line(capsys)
    assert (tmp_path / "f.txt").read_text() == "x"


def test_run_uses_a_new_or_empty_folder_and_marks_it(fake_notebooks, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (empty, tmp_path / "new" / "deeper"):
        assert mainjob.main(["--out", str(out)]) == 0
        assert (out / mainjob.MARKER_NAME).is_file()
        assert (out / "notebooks" / "01_demo.ipynb").read_text() == "executed"
        assert json.loads((out / "summary.json").read_text())["failed"] == 0


def test_run_replaces_what_an_earlier_run_wrote_and_nothing_else(fake_notebooks, tmp_path) -> None:
    out = tmp_path / "out"
    assert mainjob.main(["--out", str(out)]) == 0
    (out / "notebooks" / "00_stale.ipynb").write_text("{}")
    (out / "images").mkdir()
    (out / "images" / "stale.png").write_text("")
    (out / "records.jsonl").write_text('{"stale": true}\n')
    (out / "my_notes.txt").write_text("mine")  # put there by a person: a run leaves it
    assert mainjob.main(["--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "notebooks").iterdir()) == ["01_demo.ipynb"]
    assert not (out / "images").exists() and not (out / "records.jsonl").exists()
    assert (out / "my_notes.txt").read_text() == "mine"


def test_run_replaces_a_results_folder_from_before_the_marker(fake_notebooks, tmp_path, capsys) -> None:
    """A folder that holds exactly a run's layout with its summary.json (what runs wrote before they left a
    marker) is replaced; the same layout with a stranger in it, or without a run's summary, is not."""
    out = tmp_path / "old_run"
    (out / "notebooks").mkdir(parents=True)
    (out / "notebooks" / "00_stale.ipynb").write_text("{}")
    (out / "records.jsonl").write_text("")
    summary = {"notebooks": [], "output_dir": "/elsewhere/outputs", "records": [], "seconds": 1.0, "failed": 0}
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "extra.txt").write_text("a stranger")
    assert mainjob.main(["--out", str(out)]) == 2
    assert "was not written by an earlier run" in _error_line(capsys)
    (out / "extra.txt").unlink()
    (out / "summary.json").write_text('{"something": "else"}')
    assert mainjob.main(["--out", str(out)]) == 2
    assert (out / "notebooks" / "00_stale.ipynb").exists()
    capsys.readouterr()
    (out / "summary.json").write_text(json.dumps(summary))
    assert mainjob.main(["--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "notebooks").iterdir()) == ["01_demo.ipynb"]
    assert (out / mainjob.MARKER_NAME).is_file()


def test_run_keeps_the_browser_tests_screenshots_in_the_course_outputs_folder(fake_notebooks, tmp_path,
                                                                              monkeypatch) -> None:
    """``make run`` after ``make test``: the repository's outputs/ holds only screenshots/ (tests/test_site.py)."""
    monkeypatch.setattr(mainjob, "repo_root", lambda: tmp_path)
    shots = tmp_path / "outputs" / "screenshots"
    shots.mkdir(parents=True)
    (shots / "home.png").write_text("png")
    monkeypatch.chdir(tmp_path)
    assert mainjob.main([]) == 0  # make run: --out outputs
    assert (shots / "home.png").read_text() == "png"
    assert (tmp_path / "outputs" / "notebooks" / "01_demo.ipynb").exists()
    assert mainjob.main(["--out", "outputs"]) == 0
    assert (shots / "home.png").read_text() == "png"
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "screenshots").mkdir(parents=True)
    assert mainjob.main(["--out", str(elsewhere)]) == 2  # only the course's own outputs/ may hold them


def test_notebooks_command_names_a_missing_notebook(tmp_path, capsys) -> None:
    assert helpers_main(["notebooks", str(tmp_path / "nothere.ipynb")]) == 2
    err = _error_line(capsys)
    assert err.startswith("python -m helpers notebooks: error: 1 notebook file(s) not found: ")
    assert "nothere.ipynb" in err


_NOT_A_NOTEBOOK = {
    "photo.png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff", "is not UTF-8 text"),
    "cells.ipynb": (b'{"cells": 3}', "is not a notebook: its 'cells' must be a list, got int"),
    "list.ipynb": (b"[]", "holds a JSON list, not a notebook"),
    "broken.ipynb": (b'{"cells": [', "is not JSON"),
    "cell.ipynb": (b'{"cells": [3], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}', "is not a valid notebook"),
}


@pytest.mark.parametrize("name", sorted(_NOT_A_NOTEBOOK))
def test_notebooks_command_refuses_what_is_not_a_notebook_before_running_any(tmp_path, capsys, monkeypatch,
                                                                            name) -> None:
    """A picture used to end in a UnicodeDecodeError traceback, ``{"cells": 3}`` in a TypeError: one line naming
    the file and what was expected, exit 2, before any notebook runs (a good one named first stays untouched)."""
    from helpers.course import notebooks

    monkeypatch.setattr(notebooks, "execute", lambda *a, **k: pytest.fail("a notebook ran"))
    monkeypatch.setattr(notebooks, "check_kernel", lambda: None)  # whether ipykernel is installed does not matter
    good = tmp_path / "01_good.ipynb"
    good.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    before = good.read_text()
    content, message = _NOT_A_NOTEBOOK[name]
    bad = tmp_path / name
    bad.write_bytes(content)
    assert helpers_main(["notebooks", str(good), str(bad)]) == 2
    err = _error_line(capsys)
    assert err.startswith(f"python -m helpers notebooks: error: {str(bad)!r} {message}")
    assert err.rstrip().endswith("expected a Jupyter notebook (.ipynb JSON)")
    assert bad.read_bytes() == content and good.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["01_good.ipynb", name])


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "does not exist: expected a saved world model"),
    (lambda d: (d / "file.txt", (d / "file.txt").write_text(""))[0], "is not a folder"),
    (lambda d: d, "has no config.json, so it is not a saved model"),
])
def test_modelcard_command_names_a_bad_model_folder(tmp_path, capsys, make, message) -> None:
    """A model folder that holds no model that loads: exit 1, as ground, evaluate and finetune say it."""
    assert helpers_main(["modelcard", str(make(tmp_path))]) == 1
    err = _error_line(capsys)
    assert err.startswith("python -m helpers modelcard: error: ") and message in err


def test_modelcard_render_only_needs_an_evaluation(tmp_path, capsys) -> None:
    assert helpers_main(["modelcard", str(tmp_path), "--render-only"]) == 2
    assert "--render-only needs" in _error_line(capsys)


def test_run_and_notebooks_say_what_to_install_without_a_kernel_and_write_nothing(fake_notebooks, tmp_path,
                                                                                  monkeypatch, capsys) -> None:
    """ipykernel is the [lab] extra (Colab's set-up must not upgrade Colab's own kernel): without it, both commands
    stop with one line naming the extra, before an earlier run's results are replaced or a notebook is touched."""
    import importlib.util

    from helpers.course import notebooks

    out = tmp_path / "out"
    assert mainjob.main(["--out", str(out)]) == 0  # an earlier run's results, which must stay
    before = sorted(p.name for p in out.iterdir())
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "ipykernel" else real_find_spec(name, *a, **k))
    monkeypatch.setattr(mainjob, "execute", lambda *a, **k: pytest.fail("a notebook ran"))
    assert mainjob.main(["--out", str(out)]) == 1
    assert "needs ipykernel" in _error_line(capsys) and sorted(p.name for p in out.iterdir()) == before
    nb = tmp_path / "01_x.ipynb"
    notebook = json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    nb.write_text(notebook)
    assert helpers_main(["notebooks", str(nb)]) == 1
    assert "pip install -e '.[lab]'" in _error_line(capsys) and nb.read_text() == notebook
    with pytest.raises(RuntimeError, match="needs ipykernel"):
        notebooks.execute(nb)
