"""Tests for ``python -m helpers ground`` (helpers.course.cli), run in a clean subprocess like a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers.course import cli as cli_ground
from helpers.course.batch import annotation_canvas
from helpers.course.paths import repo_root
from helpers.world.scenes import sample_scenes


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", KOSMOS2_PROGRESS="0", KOSMOS2_MODEL="")
    return subprocess.run([sys.executable, "-m", "helpers", "ground", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.fixture()
def workdir(tmp_path) -> Path:
    """A working folder with ``scenes/`` (two images) and a loose image ``extra.png``."""
    (tmp_path / "scenes").mkdir()
    scenes = sample_scenes(3, seed=7)
    for i, scene in enumerate(scenes[:2]):
        scene.image.save(tmp_path / "scenes" / f"s{i}.png")
    scenes[2].image.save(tmp_path / "extra.png")
    return tmp_path


def test_ground_writes_results_and_pngs(tiny_model_dir, workdir) -> None:
    proc = run_cli("scenes", "extra.png", "--out", "out", "--model", str(tiny_model_dir),
                   "--batch-size", "2", "--max-new-tokens", "5", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = (workdir / "out" / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["file"] for r in records] == [str(Path("scenes/s0.png")), str(Path("scenes/s1.png")), "extra.png"]
    for rec in records:
        assert set(rec) >= {"file", "prompt", "caption", "entities", "problems", "width", "height", "annotated"}
        assert rec["prompt"] == cli_ground.DEFAULT_PROMPT
        assert rec["caption"].startswith("An image of")
        with Image.open(workdir / "out" / rec["annotated"]) as png, Image.open(workdir / rec["file"]) as original:
            assert png.format == "PNG" and png.size == annotation_canvas(original).size
    assert "wrote 3 result(s) to out/results.jsonl" in proc.stdout
    assert f"{records[2]['file']}: {records[2]['caption']!r}" in proc.stdout


def test_box_and_prompt_reach_the_model(tiny_model_dir, workdir, monkeypatch, capsys) -> None:
    monkeypatch.chdir(workdir)  # in-process this time (the subprocess path is tested above)
    code = cli_ground.main(["extra.png", "--out", "boxed", "--model", str(tiny_model_dir), "--max-new-tokens", "3",
                            "--prompt", "<grounding><phrase> It</phrase> is", "--box", "0.1", "0.2", "0.5", "0.6",
                            "--quiet"])
    assert code == 0
    assert capsys.readouterr().out == ""
    (rec,) = [json.loads(x) for x in (workdir / "boxed" / "results.jsonl").read_text().splitlines()]
    assert rec["generated"].startswith("<grounding><phrase> It</phrase><object><patch_index_0195><patch_index_0623>")


def test_missing_images_exit_2_with_a_message(workdir) -> None:
    proc = run_cli("scenes", "nope.png", "gone/", "--out", "out", cwd=workdir)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error: 2 image path(s) do not exist: nope.png, gone" in proc.stderr
    assert not (workdir / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["extra.png"], "the following arguments are required: --out"),
        (["extra.png", "--out", "o", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["extra.png", "--out", "o", "--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1, got 0"),
        (["extra.png", "--out", "o", "--prompt", " "], "argument --prompt: must not be empty"),
        (["extra.png", "--out", "o", "--box", "0.1", "0.1", "0.5", "0.5"], "--box: a box needs a <phrase>"),
        (["extra.png", "--out", "o", "--prompt", "<phrase> It</phrase>", "--box", "5", "5", "50", "50"],
         "--box: normalized box values must lie in [0, 1]"),
    ],
)
def test_bad_arguments_exit_2_without_loading_a_model(workdir, monkeypatch, capsys, args, message) -> None:
    monkeypatch.chdir(workdir)
    assert cli_ground.main(args) == 2
    assert message in capsys.readouterr().err


def test_help_and_a_bad_model(workdir, monkeypatch, capsys) -> None:
    assert cli_ground.main(["--help"]) == 0
    assert "--max-new-tokens" in capsys.readouterr().out
    monkeypatch.chdir(workdir)
    assert cli_ground.main(["extra.png", "--out", "o", "--model", str(workdir / "no_model")]) == 1
    err = capsys.readouterr().err
    assert "error: model directory" in err and "does not exist" in err


def test_help_through_the_top_level_command_loads_no_torch() -> None:
    code = ("import sys; from helpers.__main__ import main\n"
            "try:\n    main(['ground', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo_root(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m helpers ground" in proc.stdout
    assert proc.stdout.strip().endswith("False")
