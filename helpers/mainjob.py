"""The main job behind ``make run``: execute the whole series headless and collect what it grounded.

For each numbered notebook it writes the executed copy to ``OUT/notebooks/``; the notebooks themselves
save annotated images to ``OUT/images/`` and one JSON line per grounding to ``OUT/records.jsonl``
(see :mod:`helpers.outputs`). At the end it prints, per notebook, the phrases and pixel boxes it grounded
and where the images are, and writes ``OUT/summary.json``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from helpers.notebooks import course_notebooks, execute
from helpers.outputs import OUTPUT_ENV, read_records


def _fmt_box(box) -> str:
    return "(" + ", ".join(f"{v:.0f}" for v in box) + ")"


def main(out: Path) -> int:
    """Run every notebook; return 0 when all ran, 1 when any failed (the others still run)."""
    out = Path(out).resolve()
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
            entry["seconds"] = round(execute(nb, out / "notebooks" / nb.name, env={OUTPUT_ENV: str(out)}), 1)
            entry["ok"] = True
        except Exception as err:  # report and go on with the next notebook
            entry.update(ok=False, error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            failed += 1
        summary["notebooks"].append(entry)
        status = f"{entry['seconds']:.1f} s" if entry["ok"] else f"FAILED: {entry['error']}"
        print(f"== {nb.name}  ({status})", flush=True)
        for rec in [r for r in read_records(out) if r["notebook"] == nb.stem]:
            print(f"   {rec['name']}: {rec['caption']!r}")
            for ent, boxes in zip(rec["entities"], rec["boxes_px"] or [None] * len(rec["entities"])):
                shown = ", ".join(_fmt_box(b) for b in boxes) if boxes else str(ent["boxes"])
                print(f"      {ent['phrase']!r}: {shown} px")
            if rec["problems"]:
                print(f"      problems: {rec['problems']}")
            if rec["image"]:
                print(f"      image: {rec['image']}")
    summary["records"] = read_records(out)
    summary["seconds"] = round(time.perf_counter() - total, 1)
    summary["failed"] = failed
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"\n{len(notebooks) - failed}/{len(notebooks)} notebooks ran in {summary['seconds']:.0f} s; "
          f"summary: {out / 'summary.json'}")
    return 1 if failed else 0
