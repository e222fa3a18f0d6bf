"""bench/report.py: every benchmark script records the same facts of its run, refuses an --out it could not
write before measuring anything, writes no file without one, and writes its files all at once; a work folder keeps
the settings of the run that made it."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from helpers.course.paths import repo_root
from helpers.grounding.evaluation import METRICS

BENCH = repo_root() / "bench"
FACTS = {"date", "command", "cpu", "python", "torch", "transformers", "libraries"}


def _script(name: str):
    """A script of bench/ imported from its file (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"kosmos2_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _report_module():
    return _script("report")


def _run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=repo_root(), env={**os.environ, "KOSMOS2_PROGRESS": "0",
                                                                 "HF_HUB_OFFLINE": "1"})


def test_the_command_line_is_quoted_and_hides_scratch_folders() -> None:
    R = _report_module()
    line = R.command_line("benchmark.py", ["--cpu-table", "--work", "/tmp/my scratch", "--out", "a b"],
                          hide=["--work"])
    assert line == "python bench/benchmark.py --cpu-table --work WORK --out 'a b'"


def test_the_facts_of_a_run() -> None:
    import torch

    facts = _report_module().run_facts("kernels.py", ["--tiny"])
    assert set(facts) == FACTS and facts["command"] == "python bench/kernels.py --tiny"
    assert facts["torch"] == torch.__version__ and facts["cpu"].startswith("CPU: ")
    assert set(facts["libraries"]) == {"bitsandbytes", "torchao", "onnxruntime"}
    assert abs(datetime.now(timezone.utc) - datetime.fromisoformat(facts["date"])) < timedelta(minutes=5)


def test_write_puts_json_and_markdown_in_place_or_nothing(tmp_path) -> None:
    R = _report_module()
    paths = R.write(tmp_path / "new", {"x.json": {"figure": 1.5, "word": "café"}, "x.md": "| a |\n"})
    assert [p.name for p in paths] == ["x.json", "x.md"]
    assert json.loads(paths[0].read_text(encoding="utf-8")) == {"figure": 1.5, "word": "café"}
    with pytest.raises(TypeError):  # the second file holds a figure JSON cannot hold: the first is not replaced
        R.write(tmp_path / "new", {"x.md": "| b |\n", "x.json": {"figure": object()}})
    assert paths[1].read_text(encoding="utf-8") == "| a |\n"
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["x.json", "x.md"]


#: (script, what does its work, arguments): each script's main, called in this process with that work refused.
SCRIPTS = [
    ("kernels", "measure", ["--tiny"]),
    ("bundled_accuracy", "compare", []),
    ("benchmark", "run_paths", ["--tiny"]),
    ("benchmark", "run_isolated", ["--tiny", "--cpu-table"]),
    ("memory", "save_random_checkpoint", ["--weights", "new-weights"]),
    ("profile_step", "profile", ["--tiny"]),
]


@pytest.mark.parametrize("out", ["a file", "empty"])
@pytest.mark.parametrize("script, work, args", SCRIPTS)
def test_an_out_that_cannot_be_a_folder_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys, script, work,
                                                                        args, out) -> None:
    """A file, or ``--out "$OUT"`` with the variable unset: as a ``Path``, '' would be '.', the folder the script
    runs in."""
    module = _script(script)
    monkeypatch.setattr(module, work, lambda *a, **k: pytest.fail(f"{work} ran before --out was checked"))
    monkeypatch.chdir(tmp_path)
    taken = tmp_path / "taken.txt"
    taken.write_text("notes", encoding="utf-8")
    given, message = ((str(taken), f"error: --out {str(taken)!r} is a file; give a folder for") if out == "a file"
                      else ("", "error: --out is empty; give a folder for"))
    with pytest.raises(SystemExit) as stop:
        module.main([*args, "--out", given])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.txt"]


def _stand_in_rows(*paths: str) -> list[dict]:
    """benchmark.py's rows for ``paths`` as its --cpu-table writes a path whose process failed."""
    return [{"path": p, "description": "stand-in", "batch_size": None, "status": "error", "reason": "stand-in",
             "quantization": None, "dtype": "–", "attention": "sdpa", "cache": "dynamic", "compile": False}
            for p in paths]


@pytest.mark.parametrize("script, work, args, line", [
    ("benchmark", "run_paths", ["--tiny", "--paths", "fp32"], "| fp32 |"),
    ("benchmark", "run_isolated", ["--tiny", "--cpu-table", "--paths", "fp32"], "| fp32 |"),
    ("bundled_accuracy", "compare", ["--paths", "int8"], "| float32 (none) |"),
    ("kernels", "measure", ["--tiny", "--kernels", "read"], "| kernel |"),
])
def test_without_out_a_script_prints_its_table_and_writes_no_file(tmp_path, monkeypatch, capsys, script, work,
                                                                  args, line) -> None:
    """No default folder: a trial run cannot replace the committed tables of bench/results/ (run from the root).
    The work is replaced by what it returns when nothing could run."""
    import torch

    module = _script(script)
    metrics = {key: {"hits": 0, "total": 0} for _, key, _ in METRICS}
    done = {"run_paths": lambda *a, **k: _stand_in_rows("fp32"),
            "run_isolated": lambda *a, **k: _stand_in_rows("fp32"),
            "compare": lambda *a, **k: {"scenes": 1, "seed": 0, "tolerance_points": 1.0, "threads": 1,
                                        "paths": {"none": {"dtype": "float32", **metrics}}},
            "measure": lambda *a, **k: []}[work]
    monkeypatch.setattr(module, work, done)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # --cpu-table's 2 threads: not for this process
    monkeypatch.chdir(tmp_path)
    assert module.main(args) == 0
    assert list(tmp_path.iterdir()) == []
    assert line in capsys.readouterr().out


def test_ctrl_c_ends_a_script_with_one_line(capsys) -> None:
    R = _report_module()

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert R.exit_status(lambda: 3) == 3
    assert R.exit_status(interrupted) == 130
    assert capsys.readouterr().err == "stopped (Ctrl-C) before the end of the run: no file of --out was written\n"


def test_a_work_folder_keeps_the_settings_of_the_run_that_made_it(tmp_path, capsys) -> None:
    R = _report_module()
    parser = argparse.ArgumentParser(prog="script")
    work = tmp_path / "work"
    R.check_settings(parser, "--work", work, {"model": "tiny (--tiny)"})  # a new folder: recorded
    R.check_settings(parser, "--work", work, {"model": "tiny (--tiny)", "--new-tokens": 4})  # more settings
    R.check_settings(parser, "--work", work, {"model": "tiny (--tiny)"})  # those it names agree
    assert json.loads((work / "settings.json").read_text(encoding="utf-8")) == {"model": "tiny (--tiny)",
                                                                               "--new-tokens": 4}
    with pytest.raises(SystemExit) as stop:
        R.check_settings(parser, "--work", work, {"model": "full size", "--new-tokens": 4, "--threads": 2})
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"script: error: --work {str(work)!r} holds the work of a run with model tiny (--tiny); this run has "
        "model full size: give the same settings to go on with it, or a new --work folder")
    assert json.loads((work / "settings.json").read_text(encoding="utf-8"))["model"] == "tiny (--tiny)"
    (tmp_path / "older").mkdir()
    (tmp_path / "older" / "fp32.json").write_text("[]", encoding="utf-8")  # rows of a run that recorded nothing
    with pytest.raises(SystemExit):
        R.check_settings(parser, "--work", tmp_path / "older", {"model": "full size"})
    assert "holds files but no settings.json" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "older").iterdir()) == ["fp32.json"]
    broken = tmp_path / "broken"
    broken.mkdir()
    for text, why in (("{not json", "is not valid JSON"), ("[4]", "holds a JSON list")):
        (broken / "settings.json").write_text(text, encoding="utf-8")
        with pytest.raises(SystemExit):
            R.check_settings(parser, "--work", broken, {"model": "full size"})
        line = capsys.readouterr().err.splitlines()[-1]
        assert line.startswith(f"script: error: --work settings file {str(broken / 'settings.json')!r}") and why in line
        assert line.endswith("expected the settings a bench run records (a JSON object); give a new folder")
        assert (broken / "settings.json").read_text(encoding="utf-8") == text  # left as it was


def test_memory_refuses_an_out_that_is_a_file_before_saving_weights(tmp_path) -> None:
    taken = tmp_path / "taken.txt"
    taken.write_text("notes", encoding="utf-8")
    done = _run("memory.py", "--weights", str(tmp_path / "weights"), "--out", str(taken), timeout=120)
    assert done.returncode == 2 and f"error: --out {str(taken)!r} is a file; give a folder for" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.txt"]  # no weights saved


def test_bundled_accuracy_records_its_run_and_each_path_against_float32(tmp_path) -> None:
    done = _run("bundled_accuracy.py", "--scenes", "2", "--paths", "int8", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "bundled_accuracy.json").read_text(encoding="utf-8"))
    assert set(report) >= FACTS | {"scenes", "seed", "paths"}
    assert report["command"] == f"python bench/bundled_accuracy.py --scenes 2 --paths int8 --out {tmp_path}"
    assert list(report["paths"]) == ["none", "int8"] and report["scenes"] == 2
    points = lambda m: 100 * m["hits"] / m["total"] if m["total"] else 0.0  # noqa: E731
    for _, key, _ in METRICS:
        moved = points(report["paths"]["int8"][key]) - points(report["paths"]["none"][key])
        assert report["paths"]["int8"]["points_vs_float32"][key] == pytest.approx(round(moved, 2)), key
    markdown = (tmp_path / "bundled_accuracy.md").read_text(encoding="utf-8")
    assert report["command"] in markdown and "| float32 (none) |" in markdown and "| int8 |" in markdown


@pytest.mark.parametrize("script, args, known", [
    ("memory.py", ["--weights", "WEIGHTS"], "none, 4bit, int8, int4, int4-onnx"),
    ("bundled_accuracy.py", [], "4bit, nf4, 8bit, int8, int4, int4-onnx"),
])
def test_unknown_or_no_paths_are_refused_with_the_known_ones(tmp_path, script, args, known) -> None:
    args = [str(tmp_path / "weights") if a == "WEIGHTS" else a for a in args]
    for given in ("int4,int3", " , "):
        done = _run(script, *args, "--paths", given, "--out", str(tmp_path / "out"), timeout=120)
        assert done.returncode == 2 and f"error: --paths takes names from {known}, got {given!r}" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no weights saved, nothing written


def test_bundled_accuracy_refuses_a_path_whose_library_is_missing_before_float32_runs(monkeypatch, capsys) -> None:
    from helpers.grounding import quantization

    accuracy = _script("bundled_accuracy")
    monkeypatch.setattr(accuracy, "compare", lambda *a, **k: pytest.fail("evaluated without bitsandbytes"))
    real = quantization.installed_version
    monkeypatch.setattr(quantization, "installed_version", lambda name: None if name == "bitsandbytes" else real(name))
    with pytest.raises(SystemExit) as stop:
        accuracy.main(["--paths", "int8,4bit"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "error: --paths 4bit: quantization='4bit' needs bitsandbytes >= " in err and "not installed: pip" in err


def test_bundled_accuracy_keeps_no_int4_onnx_graphs_in_the_courses_cache(tmp_path, monkeypatch) -> None:
    """Its graphs are built for the run only: the course's cache keeps two weight sets, and a learner's real-model
    graphs would make room for the bundled model's."""
    import helpers.grounding.model
    from helpers.grounding.onnx_decoder import CACHE_ENV_VAR

    accuracy = _script("bundled_accuracy")
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    loaded = []

    def load(*args, quantization, **kwargs):
        loaded.append((quantization, os.environ.get(CACHE_ENV_VAR)))
        raise KeyboardInterrupt  # enough: how the path was loaded is known

    monkeypatch.setattr(helpers.grounding.model, "load", load)
    with pytest.raises(KeyboardInterrupt):
        accuracy.compare(1, 0, ["int4-onnx"])
    assert loaded == [("none", "off")] and os.environ[CACHE_ENV_VAR] == str(tmp_path / "cache")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the private memory is read from Linux's /proc")
def test_memory_peaks_follow_the_private_memory_and_start_again_at_reset() -> None:
    """A block of 256 MiB, written and freed: the private peak keeps it, the file pages do not count it, and a
    reset starts from what the process holds now."""
    import time

    import numpy as np

    from helpers.grounding.quantization import release_freed_memory

    report = _report_module()
    assert report.MemoryPeaks.available()
    with report.MemoryPeaks(interval=0.01) as peaks:
        before, files_before = peaks.gib("RssAnon"), peaks.gib("RssFile")
        block = np.ones(2**28, dtype=np.uint8)  # written, so its pages are resident
        time.sleep(0.2)  # the thread's readings catch it: no reading is asked for while it lives
        del block
        release_freed_memory()
        assert peaks.gib("RssAnon") >= before + 0.24  # the peak, though the block is gone
        assert peaks.gib("RssFile") < files_before + 0.2
        peaks.reset()
        assert peaks.gib("RssAnon") < before + 0.2  # numpy handed the block back: the new peak does not hold it


def test_memory_peaks_refuse_an_unknown_field_and_a_bad_interval() -> None:
    report = _report_module()
    with pytest.raises(ValueError, match="interval must be a number above 0, got 0"):
        report.MemoryPeaks(interval=0)
    with pytest.raises(ValueError, match="field must be one of RssAnon, RssFile, got 'VmRSS'"):
        report.MemoryPeaks().gib("VmRSS")
