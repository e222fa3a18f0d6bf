"""bench/memory.py: each path loads in its own process and reports its private and file-backed memory; a run
that fails is a row with its reason."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "memory.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_every_path_gets_a_row_and_int4_onnx_builds_then_reads_its_graphs(tiny_model_dir, tmp_path) -> None:
    done = run("--weights", str(tiny_model_dir), "--paths", "none,int4-onnx", "--new-tokens", "2",
               "--repeats", "2", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "memory.json").read_text(encoding="utf-8"))
    assert report["command"].startswith("python bench/memory.py --weights") and report["cpu"].startswith("CPU: ")
    rows = report["rows"]
    assert [(r["path"], r["graphs"]) for r in rows] == [("none", None), ("int4-onnx", False), ("int4-onnx", True)] * 2
    for row in rows:
        assert 0 < row["private_peak_load_gib"] <= row["private_peak_gib"]
        assert row["file_peak_gib"] > 0 and row["load_s"] > 0 and row["caption_s"] > 0
    markdown = (tmp_path / "memory.md").read_text(encoding="utf-8")
    assert "| int4-onnx (graphs built) | 2 |" in markdown and "| int4-onnx (graphs read) | 2 |" in markdown
    assert markdown.splitlines()[0].endswith(f"{report['date']}; command: `{report['command']}`")
    assert "one caption of 2 tokens" in markdown.splitlines()[0]


def test_bad_options_are_refused_before_anything_loads(tmp_path) -> None:
    done = run("--weights", str(tmp_path), "--paths", "int3")
    assert done.returncode == 2 and "--paths takes names from none, 4bit, int8, int4, int4-onnx" in done.stderr
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    done = run("--weights", str(tmp_path), "--paths", "none")
    assert done.returncode == 2 and "holds files but no config.json" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written


def _script():
    """bench/memory.py imported from its file (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("kosmos2_bench_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _children(monkeypatch, memory, failing: dict[str, tuple[int, str]]) -> list[str]:
    """Replace the processes of each path: those in ``failing`` end with (status, error output), the others print
    a row as a real one does. Returns the list of paths started."""
    started, real_run = [], subprocess.run

    def run(command, **kwargs):
        if "--child" not in command:  # not a path's process (platform asks uname for the CPU)
            return real_run(command, **kwargs)
        path = command[command.index("--child") + 1]
        started.append(path)
        if path in failing:
            status, error = failing[path]
            return subprocess.CompletedProcess(command, status, stdout="", stderr=error)
        row = {"path": path, "status": "ok", "load_s": 1.0, "caption_s": 0.5, "new_tokens": 16,
               "private_peak_load_gib": 0.1, "private_peak_gib": 0.2, "file_peak_gib": 0.3, "graphs": None}
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps(row) + "\n", stderr="")

    monkeypatch.setattr(memory.subprocess, "run", run)
    return started


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")  # a checkpoint: no random weights are saved
    return folder


def test_a_path_that_fails_is_a_row_with_its_reason_and_the_exit_status_is_1(tmp_path, monkeypatch, checkpoint):
    memory = _script()
    started = _children(monkeypatch, memory, {
        "int4": (1, "Traceback (most recent call last):\nValueError: Unrecognized processing class in /w"),
        "int4-onnx": (-9, "")})  # killed for memory: no error output
    out = tmp_path / "out"
    assert memory.main(["--weights", str(checkpoint), "--paths", "none,int4,int4-onnx", "--repeats", "1",
                        "--out", str(out)]) == 1
    assert started == ["none", "int4", "int4-onnx"]  # int4-onnx's graphs were not built: none to read
    rows = json.loads((out / "memory.json").read_text(encoding="utf-8"))["rows"]
    assert [(r["path"], r["status"]) for r in rows] == [("none", "ok"), ("int4", "error"), ("int4-onnx", "error")]
    assert rows[1]["reason"] == "the process ended with status 1: ValueError: Unrecognized processing class in /w"
    assert rows[2]["reason"] == "the process ended with status -9: exit status -9"
    markdown = (out / "memory.md").read_text(encoding="utf-8")
    assert "| int4 (failed) | 1 | – | – | – | – |" in markdown
    assert "| int4-onnx (graphs built) (failed) | 1 | – | – | – | – |" in markdown
    assert f"- int4: {rows[1]['reason']}" in markdown and f"- int4-onnx (graphs built): {rows[2]['reason']}" in markdown


def test_when_every_path_fails_the_earlier_files_stay(tmp_path, monkeypatch, checkpoint, capsys):
    memory = _script()
    _children(monkeypatch, memory, {"none": (1, "RuntimeError: no"), "int4": (1, "RuntimeError: no")})
    out = tmp_path / "out"
    out.mkdir()
    for name in ("memory.json", "memory.md"):
        (out / name).write_text(f"the earlier {name}\n", encoding="utf-8")
    assert memory.main(["--weights", str(checkpoint), "--paths", "none,int4", "--repeats", "1",
                        "--out", str(out)]) == 1
    assert {p.name: p.read_text(encoding="utf-8") for p in out.iterdir()} == {
        "memory.json": "the earlier memory.json\n", "memory.md": "the earlier memory.md\n"}
    assert f"no run succeeded: {out} is left as it was" in capsys.readouterr().err


def test_weights_that_cannot_be_written_are_refused_before_any_are_made(tmp_path, monkeypatch, capsys):
    memory = _script()
    monkeypatch.setattr(memory, "save_random_checkpoint", lambda folder: pytest.fail("weights made"))
    afile = tmp_path / "afile.txt"
    afile.write_text("notes", encoding="utf-8")
    for weights, message in ((afile, f"--weights {str(afile)!r} is a file; give a Kosmos-2 checkpoint folder"),
                             (afile / "sub", f"--weights {str(afile / 'sub')!r}: {str(afile)!r} is a file"),
                             ("", "--weights is empty; give a Kosmos-2 checkpoint folder")):
        with pytest.raises(SystemExit) as stop:
            memory.main(["--weights", str(weights), "--paths", "none"])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.txt"]
