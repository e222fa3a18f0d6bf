"""The code's style: ruff's check (its settings in pyproject.toml) over the package, the benchmarks, the site, the
tools, the tests and the notebooks, as a contributor runs it: `python -m ruff check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing_to_say() -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_reads_the_projects_settings() -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--show-settings", "helpers/__init__.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "line_length = 120" in done.stdout and "build" in done.stdout
