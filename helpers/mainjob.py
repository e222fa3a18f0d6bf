"""The main job behind ``make run`` (placeholder until the course's main job is written)."""

from __future__ import annotations

from pathlib import Path


def main(out: Path) -> int:
    """Run the main job, writing results under ``out``; for now it only says that it is not written yet."""
    print(f"main job not written yet (results would go to {out})")
    return 0
