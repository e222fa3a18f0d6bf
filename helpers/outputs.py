"""Results a notebook leaves behind for the main job (``make run``): annotated images and what was grounded.

In a learner's session nothing is written. When ``KOSMOS2_OUTPUT_DIR`` is set (the main job sets it for
each notebook it executes) :func:`record` saves the annotated image as a PNG and appends one JSON line to
``records.jsonl`` in that folder.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

OUTPUT_ENV = "KOSMOS2_OUTPUT_DIR"
NOTEBOOK_ENV = "KOSMOS2_NOTEBOOK"


def output_dir() -> Path | None:
    """The folder results go to, or ``None`` in an ordinary session."""
    value = os.environ.get(OUTPUT_ENV, "").strip()
    return Path(value) if value else None


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    if not slug:
        raise ValueError(f"name must contain letters or digits, got {text!r}")
    return slug[:60]


def record(name: str, grounding, image=None) -> Path | None:
    """Save ``grounding`` (and ``image`` annotated with it) when the main job runs; return the PNG path.

    ``grounding`` is a :class:`helpers.tokens.Grounding`. Returns ``None`` (and writes nothing) in an
    ordinary session.
    """
    out = output_dir()
    if out is None:
        return None
    notebook = os.environ.get(NOTEBOOK_ENV, "notebook")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    png = None
    if image is not None:
        from helpers.plotting import draw_entities

        png = images / f"{_slug(notebook)}__{_slug(name)}.png"
        draw_entities(image, grounding).save(png)
    entry = {
        "notebook": notebook,
        "name": name,
        "caption": grounding.caption,
        "entities": [
            {"phrase": e.phrase, "span": list(e.span), "boxes": [list(b) for b in e.boxes]} for e in grounding.entities
        ],
        "boxes_px": [[list(_px(b, image.size)) for b in e.boxes] for e in grounding.entities] if image is not None else None,
        "problems": list(grounding.problems),
        "image": str(png) if png else None,
    }
    with open(out / "records.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return png


def _px(box, size):
    from helpers.boxes import to_pixels

    return tuple(round(v, 1) for v in to_pixels(box, size))


def read_records(out: Path) -> list[dict]:
    """Every record written under ``out`` (empty when none)."""
    path = Path(out) / "records.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
