"""bench/report.py: every benchmark script records the same facts of its run, refuses an --out it could not
write before measuring anything, and writes its files all at once."""

from __future__ import annotations

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


@pytest.mark.parametrize("script, work, args", [
    ("kernels", "measure", ["--tiny"]),
    ("bundled_accuracy", "compare", []),
    ("benchmark", "run_paths", ["--tiny"]),
    ("benchmark", "run_isolated", ["--tiny", "--cpu-table"]),
])
def test_an_out_that_is_a_file_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys, script, work,
                                                               args) -> None:
    module = _script(script)
    monkeypatch.setattr(module, work, lambda *a, **k: pytest.fail(f"{work} ran before --out was checked"))
    taken = tmp_path / "taken.txt"
    taken.write_text("notes", encoding="utf-8")
    with pytest.raises(SystemExit) as stop:
        module.main([*args, "--out", str(taken)])
    assert stop.value.code == 2
    assert f"error: --out {str(taken)!r} is a file; give a folder for" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.txt"]


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
