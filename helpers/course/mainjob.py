"""The main job behind ``make run``: execute the whole series headless and collect what it grounded.

For each numbered notebook it writes the executed copy to ``OUT/notebooks/``, every image the notebook
grounded, annotated, to ``OUT/images/`` and one JSON line per grounded image to ``OUT/records.jsonl``
(see :mod:`helpers.course.outputs`; the lessons themselves contain nothing for this). At the end it
prints, per notebook, the phrases and pixel boxes it grounded and where the images are, and writes
``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from helpers.course.notebooks import course_notebooks, execute
from helpers.course.outputs import RECORDS_NAME, read_records

#: Groundings printed per notebook (all of them are in ``records.jsonl``).
SHOWN = 5


def _fmt_box(box) -> str:
    return "(" + ", ".join(f"{v:.0f}" for v in box) + ")"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m helpers run [--out DIR]``: run every notebook; return 0 when all ran, 1 when any failed
    (the others still run)."""
    parser = argparse.ArgumentParser(prog="python -m helpers run", description="Run every notebook headless and "
                                     "collect what they ground.")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the results (default: outputs)")
    out = parser.parse_args(argv).out.resolve()
    if out.exists():
        shutil.rmtree(out)
    (out / "notebooks").mkdir(parents=True)
    notebooks = course_notebooks()
    if not notebooks:
        print("no notebooks found", file=sys.stderr)
        return 1
    summary: dict = {"notebooks": [], "output_dir": str(out)}
    failed = 0
    total = time.perf_counter()
    for nb in notebooks:
        entry = {"notebook": nb.name, "executed": str(out / "notebooks" / nb.name)}
        try:
            setup = f"from helpers.course.outputs import start_recording\nstart_recording({str(out)!r}, {nb.stem!r})"
            entry["seconds"] = round(execute(nb, out / "notebooks" / nb.name, setup=setup), 1)
            entry["ok"] = True
        except Exception as err:  # report and go on with the next notebook
            entry.update(ok=False, error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            failed += 1
        summary["notebooks"].append(entry)
        status = f"{entry['seconds']:.1f} s" if entry["ok"] else f"FAILED: {entry['error']}"
        print(f"== {nb.name}  ({status})", flush=True)
        records = [r for r in read_records(out) if r["notebook"] == nb.stem]
        for rec in records[:SHOWN]:
            print(f"   cell {rec['cell']}: {rec['caption']!r}")
            for ent in rec["entities"]:
                print(f"      {ent['phrase']!r}: {', '.join(_fmt_box(b) for b in ent['boxes_px'])} px")
            if rec["problems"]:
                print(f"      problems: {rec['problems']}")
            print(f"      image: {rec['annotated']}")
        if len(records) > SHOWN:
            print(f"   … and {len(records) - SHOWN} more groundings in {out / RECORDS_NAME}")
    summary["records"] = read_records(out)
    summary["seconds"] = round(time.perf_counter() - total, 1)
    summary["failed"] = failed
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"\n{len(notebooks) - failed}/{len(notebooks)} notebooks ran in {summary['seconds']:.0f} s; "
          f"summary: {out / 'summary.json'}")
    return 1 if failed else 0
