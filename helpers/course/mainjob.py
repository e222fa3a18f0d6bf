"""The main job behind ``make run``: execute the whole series headless and collect what it grounded.

For each numbered notebook it writes the executed copy to ``OUT/notebooks/``, every image the notebook
grounded, annotated, to ``OUT/images/`` and one JSON line per grounded image to ``OUT/records.jsonl``
(see :mod:`helpers.course.outputs`; the lessons themselves contain nothing for this). At the end it
prints, per notebook, the phrases and pixel boxes it grounded and where the images are, and writes
``OUT/summary.json``.

A run replaces only a folder that a run wrote: it puts :data:`MARKER_NAME` into the output folder and, when run
again on that folder, removes what the earlier run wrote (:data:`RUN_ENTRIES`) and leaves anything else. A
folder that is new or empty is used as it is; any other folder is refused (exit status 2), so ``--out .`` or
``--out ~`` cannot wipe a repository or a home folder (see :func:`prepare_output`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from helpers.course.notebooks import check_kernel, course_notebooks, execute
from helpers.course.outputs import RECORDS_NAME, read_records
from helpers.course.paths import repo_root
from helpers.grounding.checks import fail, out_problem, parse

PROG = "python -m helpers run"
#: Groundings printed per notebook (all of them are in ``records.jsonl``).
SHOWN = 5
#: The file a run writes into its output folder first: only a folder holding it is replaced by a later run.
MARKER_NAME = ".helpers-run"
SUMMARY_NAME = "summary.json"
#: Everything a run writes into its output folder (and all that a later run removes there).
RUN_ENTRIES = ("notebooks", "images", RECORDS_NAME, SUMMARY_NAME, MARKER_NAME)
#: What else the course keeps in the repository's ``outputs/`` folder: the browser tests' screenshots
#: (``tests/test_site.py``) and the results of ``python -m helpers evaluate``. A run leaves them alone.
COURSE_ENTRIES = ("screenshots", "evaluate")


class OutputFolderError(ValueError):
    """The output folder cannot be used: it is a file or lies under one, or is a non-empty folder that no run
    wrote."""


def _from_an_earlier_run(out: Path, names: set[str]) -> bool:
    """True when ``out``, whose entries are ``names`` and which has no marker, holds what a run wrote before
    runs left one: nothing but :data:`RUN_ENTRIES`, with a ``summary.json`` in the layout :func:`main` writes."""
    if not names <= set(RUN_ENTRIES) or not (out / SUMMARY_NAME).is_file():
        return False
    try:
        summary = json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(summary, dict) and {"notebooks", "output_dir", "records", "failed"} <= set(summary)


def prepare_output(out: Path) -> None:
    """Make ``out`` ready for a run: create it, or empty it of an earlier run's results, and mark it.

    ``out`` may be missing, an empty folder, or a folder an earlier run wrote (it holds :data:`MARKER_NAME`,
    or, from before runs left one, nothing but a run's results with its ``summary.json``). Only the earlier
    run's own entries (:data:`RUN_ENTRIES`) are removed; anything else in a marked folder stays.

    Raises:
        OutputFolderError: ``out`` is a file or lies under one, or is a non-empty folder that no run wrote
            (nothing in it is touched).
    """
    problem = out_problem("--out", out, folder=True, wanted="a new or empty folder for the results")
    if problem:
        raise OutputFolderError(problem)
    names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if out == repo_root() / "outputs":
        names -= set(COURSE_ENTRIES)
    if names and MARKER_NAME not in names and not _from_an_earlier_run(out, names):
        raise OutputFolderError(
            f"--out {out} is not empty and was not written by an earlier run (it has no {MARKER_NAME} file), so "
            "it is left as it is: a run replaces only its own results; choose a new or empty folder")
    for name in RUN_ENTRIES:
        path = out / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    (out / "notebooks").mkdir(parents=True)
    (out / MARKER_NAME).write_text(
        "Written by `python -m helpers run`: a later run may replace notebooks/, images/, records.jsonl and "
        "summary.json in this folder.\n", encoding="utf-8")


def _fmt_box(box) -> str:
    return "(" + ", ".join(f"{v:.0f}" for v in box) + ")"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m helpers run [--out DIR]``: run every notebook; return 0 when all ran, 1 when any failed
    (the others still run) or ipykernel is missing (before anything is written), 2 when ``DIR`` cannot be used
    (see :func:`prepare_output`)."""
    parser = argparse.ArgumentParser(prog=PROG, description="Run every notebook headless and collect what they "
                                     "ground.")
    parser.add_argument("--out", type=Path, default=Path("outputs"),
                        help="folder for the results (default: outputs): a new or empty folder, or one an earlier "
                             "run wrote (its results are replaced)")
    args = parse(parser, argv)
    if isinstance(args, int):  # --help (0) or a bad option, which argparse has reported (2)
        return args
    out = args.out.expanduser().resolve()
    try:
        check_kernel()  # before prepare_output, which replaces an earlier run's results
    except RuntimeError as err:
        return fail(str(err), code=1, prog=PROG)
    try:
        prepare_output(out)
    except (OutputFolderError, OSError) as err:
        return fail(str(err), prog=PROG)
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
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"\n{len(notebooks) - failed}/{len(notebooks)} notebooks ran in {summary['seconds']:.0f} s; "
          f"summary: {out / SUMMARY_NAME}")
    return 1 if failed else 0
