"""One rule for where a command may write (:func:`helpers.grounding.checks.out_problem`): every command refuses an
output path under a file with one line and exit status 2 before it loads, reads, draws or trains anything (finetune
used to train its whole budget and then crash; ground loaded the model first)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from PIL import Image

import helpers.grounding.model as model_module
from helpers.__main__ import main as helpers_main
from helpers.course import cli as cli_ground
from helpers.course import distributed, mainjob
from helpers.grounding import checks, finetune
from helpers.grounding.checks import out_problem
from helpers.world import modelcard, new_kinds, training


def test_out_problem_names_what_is_in_the_way(tmp_path) -> None:
    (tmp_path / "afile").write_text("mine")
    (tmp_path / "folder").mkdir()
    afile, folder = tmp_path / "afile", tmp_path / "folder"
    assert out_problem("--out", folder / "new", folder=True, wanted="a folder") is None
    assert out_problem("--out", folder, folder=True, wanted="a folder") is None
    assert out_problem("--out", folder / "r.jsonl", folder=False, wanted="a file") is None
    assert out_problem("--out", afile, folder=False, wanted="a file") is None  # a file to replace
    assert out_problem("--out", afile, folder=True, wanted="a folder for the model") == (
        f"--out {str(afile)!r} is a file; give a folder for the model")
    assert out_problem("--out", folder, folder=False, wanted="the results file's name") == (
        f"--out {str(folder)!r} is a folder; give the results file's name")
    for is_folder in (True, False):
        assert out_problem("--data", afile / "sub" / "deeper", folder=is_folder, wanted="x") == (
            f"--data {str(afile / 'sub' / 'deeper')!r}: {str(afile)!r} is a file, so nothing can be written under it")


def _refuse(*_args, **_kwargs):
    pytest.fail("the command started work although its output path was bad")


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test when any command loads a model, reads data, draws scenes, trains or runs a notebook."""
    for module, name in ((cli_ground, "load"), (distributed, "load"), (model_module, "load"),
                         (training, "train"), (training, "new_model"), (finetune, "check_kosmos2"),
                         (finetune, "read_coco"), (finetune, "finetune"), (new_kinds, "write_coco"),
                         (mainjob, "course_notebooks"), (mainjob, "execute"), (modelcard, "load")):
        monkeypatch.setattr(module, name, _refuse)


@pytest.mark.parametrize("argv", [
    ["ground", "p.png", "--out", "afile/sub"],
    ["evaluate", "world", "--scenes", "1", "--out", "afile/sub.jsonl"],
    ["distributed", "p.png", "--out", "afile/sub.jsonl"],
    ["train", "--out", "afile/sub", "--no-evaluate", "--steps", "1"],
    ["train", "--out", "model", "--checkpoint", "afile/sub", "--no-evaluate", "--steps", "1"],
    ["finetune", "--data", "ft.json", "--images", ".", "--base", "base", "--out", "afile/sub", "--steps", "1"],
    ["finetune-demo", "--out", "afile/sub", "--steps", "1"],
    ["finetune-demo", "--out", "adapters", "--data", "afile/sub", "--steps", "1"],
    ["run", "--out", "afile/sub"],
])
def test_every_command_refuses_an_output_under_a_file_before_any_work(tmp_path, monkeypatch, capsys, no_work,
                                                                        argv) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine")
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    before = sorted(os.listdir(tmp_path))
    assert helpers_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(("python -m helpers ", "accelerate launch -m helpers distributed")) and ": error: " in err
    assert "afile' is a file, so nothing can be written under it" in err, err
    assert sorted(os.listdir(tmp_path)) == before and (tmp_path / "afile").read_text() == "mine"


def test_the_finetune_function_checks_its_output_before_loading(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(model_module, "load", _refuse)
    monkeypatch.setattr(finetune, "check_kosmos2", _refuse)
    (tmp_path / "afile").write_text("mine")
    cat = finetune.Category(1, "cat", "cats")
    group = [finetune.AnnotatedObject(cat, (0, 0, 1, 1), "a cat")]
    records = [finetune.ImageRecord(tmp_path / "p.png", 8, 8, 0, [group])]
    with pytest.raises(finetune.FinetuneError, match=r"afile' is a file, so nothing can be written under it$"):
        finetune.finetune("base", records, tmp_path / "afile" / "sub", finetune.FinetuneConfig(steps=1))
    with pytest.raises(finetune.FinetuneError, match=r"^output folder '.*afile' is a file; give a folder for the"):
        finetune.check_output(tmp_path / "afile")


def test_the_write_probe_leaves_nothing_behind_and_creates_no_folder(tmp_path) -> None:
    assert out_problem("--out", tmp_path / "a" / "b", folder=True, wanted="a folder") is None
    assert out_problem("--out", tmp_path / "r.jsonl", folder=False, wanted="a file") is None
    assert out_problem("--out", tmp_path, folder=True, wanted="a folder") is None
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def locked(tmp_path, monkeypatch):
    """A folder ``locked`` that takes no new file (with an empty, writable folder ``locked/empty`` in it): ``chmod
    555`` for a normal user; for root, whom modes do not stop, ``chattr +i`` where the file system has it, else
    a patch that makes the probe's write there fail as such a folder makes it fail."""
    folder = tmp_path / "locked"
    (folder / "empty").mkdir(parents=True)
    undo = None
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = lambda: folder.chmod(0o755)  # noqa: E731
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        undo = lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)  # noqa: E731
    else:
        real = tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve() == folder.resolve():
                raise PermissionError(errno.EPERM, "Operation not permitted", str(folder))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(checks.tempfile, "mkstemp", mkstemp)
    try:
        yield folder
    finally:
        if undo is not None:
            undo()


@pytest.mark.parametrize("argv", [
    ["ground", "p.png", "--out", "locked/sub"],
    ["ground", "p.png", "--out", "locked"],
    ["evaluate", "world", "--scenes", "1", "--out", "locked/r.jsonl"],
    ["distributed", "p.png", "--out", "locked/r.jsonl"],
    ["train", "--out", "locked/sub", "--no-evaluate", "--steps", "1"],
    ["train", "--out", "model", "--checkpoint", "locked/sub", "--no-evaluate", "--steps", "1"],
    ["finetune", "--data", "ft.json", "--images", ".", "--base", "base", "--out", "locked/sub", "--steps", "1"],
    ["finetune", "--data", "ft.json", "--images", ".", "--base", "base", "--out", "locked/empty", "--steps", "1"],
    ["finetune-demo", "--out", "locked/sub", "--steps", "1"],
    ["finetune-demo", "--out", "adapters", "--data", "locked/sub", "--steps", "1"],
    ["run", "--out", "locked/sub"],
    ["modelcard", "locked", "--scenes", "1"],
])
def test_every_command_refuses_a_folder_it_cannot_write_in_before_any_work(tmp_path, monkeypatch, capsys, no_work,
                                                                           locked, argv) -> None:
    """A read-only folder (or one without permission) is found by a write probe before any work: the run used
    to do all its work (hours of evaluation or training) and then end in a PermissionError traceback. finetune
    writes its adapters beside --out and renames them into place, so the folder holding --out is probed."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    before = sorted(os.listdir(tmp_path))
    assert helpers_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert ": error: " in err and re.search(r"nothing can be written in '[^']*locked' \(\w", err), err
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(locked) == ["empty"]
    assert os.listdir(locked / "empty") == []


@pytest.mark.parametrize("command", [["ground", "p.png"], ["evaluate", "world"], ["distributed", "p.png"]])
def test_an_empty_out_is_refused(tmp_path, monkeypatch, capsys, no_work, command) -> None:
    """``--out ''`` wrote into the current folder (ground) or to the default file (evaluate)."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    assert helpers_main([*command, "--out", ""]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and ": error: --out is empty; give " in err, err
    assert os.listdir(tmp_path) == ["p.png"]
