"""Tests for ``python -m helpers ground`` (helpers.course.cli), run in a clean subprocess like a user would."""

from __future__ import annotations

import argparse
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
        (["extra.png", "--out", "o", "--prompt", "<grounding><phrase> It</phrase><object><patch_index_0000>"],
         "argument --prompt: the prompt must not contain '<object>'"),
        (["extra.png", "--out", "o", "--prompt", "<image> An image of"], "(here: --box X0 Y0 X1 Y1)"),
        (["extra.png", "--out", "o", "--box", "0.1", "0.1", "0.5", "0.5"], "--box: a box needs a <phrase>"),
        (["extra.png", "--out", "o", "--prompt", "<phrase> It</phrase>", "--box", "-5", "5", "50", "50"],
         "--box: normalized box values must lie in [0, 1]"),
        (["extra.png", "--out", "o", "--prompt", "<phrase> It</phrase>", "--box", "5", "5", "5000", "50"],
         "--box takes x0 y0 x1 y1 as fractions of the image's width and height (each from 0 to 1), not pixels; "
         "got 5 5 5000 50."),
        (["extra.png", "--out", "o", "--batch-size", "2.5"],
         "argument --batch-size: must be a whole number, got '2.5'"),
        (["extra.png", "--out", "o", "--max-new-tokens", "-3"],
         "argument --max-new-tokens: must be at least 1, got -3"),
    ],
)
def test_bad_arguments_exit_2_without_loading_a_model(workdir, monkeypatch, capsys, args, message) -> None:
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(cli_ground, "load", lambda *a, **k: pytest.fail("the model was loaded"))
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


def test_the_count_options_parse_the_text_and_apply_the_package_rule(monkeypatch) -> None:
    from helpers.grounding import checks

    assert checks.positive_int_option("3") == 3 and checks.positive_int_option(" 12 ") == 12
    for text in ["0", "-1", "x", "2.5", ""]:
        with pytest.raises(argparse.ArgumentTypeError):
            checks.positive_int_option(text)
    assert checks.count_option("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="must be at least 0, got -1"):
        checks.count_option("-1")
    assert checks.positive_number_option("0.5") == 0.5
    for text in ["0", "nan", "inf", "x"]:
        with pytest.raises(argparse.ArgumentTypeError, match="must be a number above 0"):
            checks.positive_number_option(text)
    monkeypatch.setattr(checks, "is_positive_int", lambda value: value != 7)  # the rule lives in checks
    with pytest.raises(argparse.ArgumentTypeError, match="must be at least 1, got 7"):
        checks.positive_int_option("7")
    # every command line takes its count options from there
    import helpers.course.cli_evaluate as cli_evaluate
    import helpers.course.distributed as distributed
    import helpers.grounding.finetune as finetune
    import helpers.world.training as training
    from helpers.world import modelcard, new_kinds

    for module in (cli_ground, cli_evaluate, distributed, finetune, training, modelcard, new_kinds):
        text = Path(module.__file__).read_text("utf-8")
        assert "ArgumentTypeError(f\"must be at least" not in text and "def positive_int(" not in text, module


def test_a_pixel_box_gets_the_command_line_to_type(workdir, monkeypatch, capsys) -> None:
    """The message for a pixel box is for a command-line user: what --box takes and, for one image, the
    normalized values to type (not the Python function to_normalized)."""
    monkeypatch.chdir(workdir)
    with Image.open(workdir / "extra.png") as im:
        width, height = im.size
    box_px = [width * 0.1, height * 0.25, width * 0.5, height * 0.75]
    args = ["--out", "o", "--prompt", "<grounding><phrase> It</phrase> is", "--box", *map(str, box_px)]
    assert cli_ground.main(["extra.png", *args]) == 2
    err = capsys.readouterr().err
    assert "to_normalized" not in err and len(err.strip().splitlines()) == 1
    assert "not pixels" in err and f"for extra.png ({width} x {height} pixels) type --box 0.1 0.25 0.5 0.75" in err
    assert cli_ground.main(["scenes", *args]) == 2  # several images: how to convert, no values
    err = capsys.readouterr().err
    assert "Divide the x values by the image's width and the y values by its height" in err
    assert "to_normalized" not in err and "type --box" not in err
    inverted = [str(box_px[2]), str(box_px[1]), str(box_px[0]), str(box_px[3])]  # inside the image, x0 > x1
    assert cli_ground.main(["extra.png", *args[:-4], *inverted]) == 2
    assert "as pixels this box is inverted" in capsys.readouterr().err
    assert not (workdir / "o").exists()


def test_an_unreadable_image_stops_the_run_before_the_model_loads(workdir, monkeypatch, capsys) -> None:
    """Every image is opened first: a broken file is named before any model loads, and the results of an
    earlier run stay as they were."""
    monkeypatch.chdir(workdir)
    (workdir / "out").mkdir()
    (workdir / "out" / "results.jsonl").write_text('{"earlier": "run"}\n')
    (workdir / "broken.png").write_bytes(b"not a png")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the images were checked")

    monkeypatch.setattr(cli_ground, "load", no_model)
    assert cli_ground.main(["scenes", "broken.png", "extra.png", "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m helpers ground: error: 1 of 4 image(s) cannot be read: file broken.png")
    assert len(err.strip().splitlines()) == 1
    assert (workdir / "out" / "results.jsonl").read_text() == '{"earlier": "run"}\n'
    assert sorted(p.name for p in (workdir / "out").iterdir()) == ["results.jsonl"]


def test_out_that_is_a_file_is_refused_before_the_model_loads(workdir, monkeypatch, capsys) -> None:
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(cli_ground, "load", lambda *a, **k: pytest.fail("model loaded"))
    assert cli_ground.main(["extra.png", "--out", "extra.png"]) == 2
    assert "--out 'extra.png' is a file; give a folder for results.jsonl and the PNGs" in capsys.readouterr().err


def test_an_out_folder_holding_the_images_is_refused_before_the_model_loads(workdir, monkeypatch, capsys) -> None:
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(cli_ground, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    before = sorted(p.name for p in (workdir / "scenes").iterdir())
    assert cli_ground.main(["scenes", "--out", "scenes"]) == 2
    err = capsys.readouterr().err
    assert "holds the input image(s) s0.png, s1.png, which their annotated copies would replace" in err
    assert sorted(p.name for p in (workdir / "scenes").iterdir()) == before


def test_the_pixel_box_hint_divides_by_the_size_of_a_large_photo_itself(tmp_path, monkeypatch, capsys) -> None:
    """Loading shrinks a 4200 x 1000 image to 4096 x 975 for the model, but the pixels a user reads off the
    file are the file's: the values to type come from its own size."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (4200, 1000), (200, 180, 160)).save(tmp_path / "wide.png")
    box_px = ["420", "250", "2100", "750"]
    assert cli_ground.main(["wide.png", "--out", "o", "--prompt", "<grounding><phrase> It</phrase> is",
                            "--box", *box_px]) == 2
    err = capsys.readouterr().err
    assert "for wide.png (4200 x 1000 pixels) type --box 0.1 0.25 0.5 0.75" in err, err


def test_a_write_that_fails_during_the_run_names_out_not_its_temporary_file(workdir, monkeypatch, capsys) -> None:
    """A write that fails after the check (a full disk) named the hidden temporary file, e.g.
    ``[Errno 28] No space left on device: 'out/.results.jsonl.10728.tmp'``."""
    import errno

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "out/.results.jsonl.10728.tmp")

    monkeypatch.setattr(cli_ground, "load", lambda *a, **k: (None, None))
    monkeypatch.setattr(cli_ground, "ground_folder", full_disk)
    monkeypatch.chdir(workdir)
    assert cli_ground.main(["extra.png", "--out", "out"]) == 2
    assert capsys.readouterr().err == ("python -m helpers ground: error: --out 'out': writing the results failed (No "
                                       "space left on device)\n")
