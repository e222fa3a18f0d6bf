"""The course's results files: one record layout for every grounded image, the JSON Lines writer and reader, and
what the main job keeps.

Every file of groundings the course writes (``python -m helpers ground``, ``python -m helpers distributed``
and the main job's ``records.jsonl``) holds one JSON line per grounded image in the layout of
:func:`grounding_record`::

    {"file": "scenes/a.png", "annotated": "a.png", "width": 160, "height": 120,
     "prompt": "<grounding> An image of", "caption": "An image of a red circle.",
     "entities": [{"phrase": "a red circle", "span": [12, 24],
                   "boxes": [[0.1, 0.2, 0.4, 0.6]], "boxes_px": [[16.0, 24.0, 64.0, 72.0]]}],
     "problems": [], "generated": "<grounding> An image of<phrase> a red circle</phrase><object>…</object>."}

``boxes`` are normalized ``(x0, y0, x1, y1)``; ``boxes_px`` the same boxes in pixels of the original image
(``width`` x ``height``: for a file, the file's own size turned by its EXIF orientation, even when the model
saw a copy that loading shrank; in the main job's ``records.jsonl``, whose ``file`` is ``null``, the size of the
image ``ground()`` saw, after any shrinking);
``generated`` is the decoded text after the image prefix (the prompt and the model's answer, tags kept);
``file`` is the image's path (``null`` for an image that was never a file) and ``annotated`` the PNG with
the boxes drawn (``null`` when none was written).

:func:`write_jsonl` writes the results files of ``ground`` and ``distributed``, and also ``python -m helpers
evaluate``'s ``outputs/evaluate/<benchmark>.jsonl``, whose lines are the benchmark's scored items in a layout of
their own (``{"task": …, "scene": …, …}``), not grounding records; :func:`read_jsonl` reads any of these files.

The lessons hold no code for the main job. When it executes a notebook, the main job first runs
:func:`start_recording` in the notebook's kernel (in a set-up cell that it removes again from the
executed copy): from then on every :func:`helpers.grounding.model.ground` call in that kernel adds one
record per image to ``OUT/records.jsonl`` (with ``"notebook"`` and ``"cell"``, the execution count) and
the annotated picture to ``OUT/images/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

from helpers.grounding import model as grounding_model
from helpers.grounding.boxes import to_pixels
from helpers.grounding.checks import write_files
from helpers.grounding.plotting import draw_entities
from helpers.grounding.tokens import strip_image_prefix

RECORDS_NAME = "records.jsonl"


def grounding_record(file: str | None, prompt: str, grounding, image_size: tuple[int, int],
                     annotated: str | None = None) -> dict:
    """The JSON record of one grounded image (the layout is in the module docstring).

    ``image_size`` is the original image's ``(width, height)``, which ``boxes_px`` are measured in; for an image
    file, the size :func:`helpers.grounding.images.load_image_and_size` gives, not that of a shrunk copy.
    """
    width, height = image_size
    entities = []
    for e in grounding.entities:
        d = e.to_dict()
        d["boxes_px"] = [[round(v, 1) for v in to_pixels(b, (width, height))] for b in e.boxes]
        entities.append(d)
    return {
        "file": file, "annotated": annotated, "width": width, "height": height, "prompt": prompt,
        "caption": grounding.caption, "entities": entities, "problems": list(grounding.problems),
        "generated": strip_image_prefix(grounding.raw),
    }


def _cell() -> int | None:
    """The number of the running notebook cell as the executed notebook shows it (``In [n]``), or ``None``
    outside IPython. While a cell runs, IPython's ``execution_count`` already holds the next cell's number."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    count = getattr(shell, "execution_count", None) if shell is not None else None
    return count - 1 if isinstance(count, int) else None


def start_recording(out: str | Path, notebook: str) -> Callable:
    """Keep every later grounding of this process under ``out``: records and annotated PNGs.

    Adds a hook to :data:`helpers.grounding.model.GROUND_HOOKS` and returns it (remove it from that list
    to stop). ``notebook`` names the records and the pictures (``OUT/images/<notebook>_NNN.png``).
    """

    out = Path(out)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    count = 0

    def keep(images: list, prompts: list[str], results: list) -> None:
        nonlocal count
        with open(out / RECORDS_NAME, "a", encoding="utf-8") as f:
            for image, prompt, grounding in zip(images, prompts, results):
                count += 1
                png = images_dir / f"{notebook}_{count:03d}.png"
                draw_entities(image, grounding).save(png)
                entry = {"notebook": notebook, "cell": _cell(),
                         **grounding_record(None, prompt, grounding, image.size, annotated=str(png))}
                f.write(_json_line(entry))

    grounding_model.GROUND_HOOKS.append(keep)
    return keep


def _json_line(row: dict) -> str:
    """One JSON Lines line: UTF-8 text as it is, and no ``NaN`` or ``Infinity``, which are not JSON."""
    return json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write ``rows`` to the JSON Lines file ``path`` all at once (:func:`helpers.grounding.checks.write_files`)
    and return its path: a write that fails (a value that is not JSON, a full disk, Ctrl-C) leaves an earlier
    ``path`` as it was and no temporary file.

    Raises:
        ValueError: a row holds ``NaN`` or an infinity; TypeError: a row holds something JSON cannot hold.
        OSError: the file cannot be written.
    """
    text = "".join(_json_line(row) for row in rows)  # every row checked before anything is written
    return write_files({path: text})[0]


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON Lines file (``records.jsonl``, ``results.jsonl``), blank lines skipped.

    Raises:
        ValueError: a line is not JSON (the message gives the file and the line's number).
    """
    records = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{str(path)!r} line {n} is not JSON: {err}") from None
    return records


def read_records(out: str | Path) -> list[dict]:
    """Every record the main job wrote under ``out`` (empty when none; see :func:`read_jsonl`)."""
    path = Path(out) / RECORDS_NAME
    return read_jsonl(path) if path.exists() else []
