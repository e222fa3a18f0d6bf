"""The code's style: ruff's check (its settings in pyproject.toml) over the package, the benchmarks, the site, the
tools, the tests and the notebooks, as a contributor runs it: `python -m ruff check`."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing_to_say() -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_reads_the_projects_settings() -> None:
    """ruff must use pyproject.toml's [tool.ruff]: its line length, and the folders it adds to ruff's own excludes
    (ruff's default excludes already hold "_build", so a bare "build" in the output proved nothing)."""
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--show-settings", "helpers/__init__.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "line_length = 120" in done.stdout
    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["ruff"]["extend-exclude"]
    shown = re.search(r"^file_resolver\.extend_exclude = \[(.*?)\]", done.stdout, re.M | re.S)
    assert shown, done.stdout
    assert wanted and re.findall(r'"([^"]*)"', shown[1]) == wanted
