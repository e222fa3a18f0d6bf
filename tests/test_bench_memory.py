"""bench/memory.py: each path loads in its own process and reports its private and file-backed memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_bad_options_are_refused_before_anything_loads(tmp_path) -> None:
    done = run("--weights", str(tmp_path), "--paths", "int3")
    assert done.returncode == 2 and "--paths takes names from none, 4bit, int8, int4, int4-onnx" in done.stderr
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    done = run("--weights", str(tmp_path), "--paths", "none")
    assert done.returncode == 2 and "holds files but no config.json" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written
