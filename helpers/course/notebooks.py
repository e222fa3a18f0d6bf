"""Execute the course's notebooks headless (the main job, and re-storing outputs after a change).

``python -m helpers notebooks notebooks/04_post_processing.ipynb`` re-executes a notebook in place with
the same settings the tests use (bundled model, no progress bars), so its stored outputs match a fresh run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from helpers.course.paths import notebooks_dir
from helpers.grounding.checks import fail, parse

#: Environment every headless run uses: no progress bars and no parallel tokenizers. The offline, bundled-model
#: setting is not here: ``python -m helpers notebooks`` adds it (:func:`main`), the main job does not.
HEADLESS_ENV = {"KOSMOS2_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false"}


class NotebookCellError(RuntimeError):
    """A cell of a notebook failed (raised, ran past the time-out, or its kernel died); the message names the
    notebook, the cell and the error in one line."""


def check_kernel() -> None:
    """Raise a ``RuntimeError`` saying what to install when the notebooks' kernel (ipykernel) is missing."""
    if importlib.util.find_spec("ipykernel") is None:
        raise RuntimeError("running notebooks needs ipykernel, which is not installed: pip install -e '.[lab]' in "
                           "your clone of the course (make install does)")


def course_notebooks(folder: Path | None = None) -> list[Path]:
    """The numbered notebooks ``NN_slug.ipynb`` in order."""
    folder = folder or notebooks_dir()
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


@contextmanager
def _env(extra: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(path: Path, out: Path | None = None, *, timeout: int = 600, env: dict[str, str] | None = None,
            setup: str | None = None) -> float:
    """Execute ``path`` top to bottom in its folder; write it to ``out`` (default: in place). Returns seconds.

    ``setup`` is code run in the notebook's kernel before its first cell, in a cell that the written copy
    leaves out (the main job uses it to keep the notebook's groundings). Pictures that a cell shows both as
    PNG and as JPEG are stored once, as PNG.

    Raises:
        NotebookCellError: a cell failed, e.g. ``notebooks/x.ipynb: cell 4 of 9 ('value = compute()') raised
            ValueError: bad value``; the notebook is not written.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    check_kernel()
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    if setup:
        nb.cells.insert(0, nbformat.v4.new_code_cell(setup))
    extra = dict(HEADLESS_ENV, **(env or {}))
    start = time.perf_counter()
    with _env(extra):
        running: list[int] = []  # the index of the cell that runs
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent.resolve())}},
                                on_cell_execute=lambda cell, cell_index: running.append(cell_index))
        try:
            # the kernel process's own log (e.g. its note about local TCP) is not course output; cell output,
            # stderr included, still reaches the notebook through the kernel's messages
            client.execute(stderr=subprocess.DEVNULL)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
            if isinstance(err, CellExecutionError):
                what = f"raised {err.ename}: {' '.join(str(err.evalue).split())[:300]}"
            elif isinstance(err, CellTimeoutError):
                what = f"did not finish within {timeout} s"
            else:
                what = "killed its kernel"
            if not running:
                raise NotebookCellError(f"{path}: the kernel died before any cell ran") from None
            index, skip = running[-1], 1 if setup else 0  # the set-up cell is not one of the notebook's
            first = next((line.strip() for line in nb.cells[index].source.splitlines() if line.strip()), "")
            cell = ("the set-up cell" if index < skip else
                    f"cell {index + 1 - skip} of {len(nb.cells) - skip} ({first[:60]!r})")
            raise NotebookCellError(f"{path}: {cell} {what}") from None
    seconds = time.perf_counter() - start
    if setup:
        del nb.cells[0]
    for cell in nb.cells:  # keep stored notebooks free of per-run metadata, and pictures stored once
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                data.pop("image/jpeg", None)
    nbformat.write(nb, out or path)
    return seconds


def check_notebook(path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` unless it is a Jupyter notebook that nbformat reads and validates
    (checked before anything runs: a picture or a JSON file of another shape used to end in a traceback)."""
    import nbformat

    def refuse(problem: str) -> ValueError:
        problem = " ".join(problem.split())
        problem = problem if len(problem) <= 200 else problem[:199] + "…"
        return ValueError(f"{str(path)!r} {problem}; expected a Jupyter notebook (.ipynb JSON)")

    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise refuse(f"is not UTF-8 text (byte {err.start} is not UTF-8)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise refuse(f"is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise refuse(f"holds a JSON {type(data).__name__}, not a notebook (an object with a list of 'cells')")
    if not isinstance(data.get("cells"), list):
        got = type(data["cells"]).__name__ if "cells" in data else "nothing"
        raise refuse(f"is not a notebook: its 'cells' must be a list, got {got}")
    try:
        with warnings.catch_warnings():  # nbformat's notes on missing cell ids and the like: not errors
            warnings.simplefilter("ignore")
            nbformat.validate(nbformat.reads(text, as_version=4))
    except Exception as err:  # a cell of the wrong shape (nbformat raises several kinds for it)
        raise refuse(f"is not a valid notebook ({type(err).__name__}: {err})") from None


PROG = "python -m helpers notebooks"


def main(argv: Sequence[str] | None = None) -> int:
    """Re-execute the notebooks named in ``argv`` (default: every course notebook); return the exit code: 0,
    2 with a one-line message when a named notebook is not a file or not a notebook (:func:`check_notebook`), 1
    when ipykernel is missing (all checked before any runs), 1 with a one-line message naming the notebook and the
    cell when a cell fails (that notebook is left as it was, and the ones after it are not run)."""
    parser = argparse.ArgumentParser(prog=PROG,
                                     description="Re-execute notebooks in place, offline on the bundled model.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every course notebook")
    args = parse(parser, argv)
    if isinstance(args, int):  # --help (0) or a bad option, which argparse has reported (2)
        return args
    paths = args.notebooks or course_notebooks()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return fail(f"{len(missing)} notebook file(s) not found: {', '.join(missing)} (the course's notebooks are "
                    f"in {notebooks_dir()})", prog=PROG)
    for p in paths:
        try:
            check_notebook(p)
        except ValueError as err:
            return fail(str(err), prog=PROG)
    try:
        check_kernel()
    except RuntimeError as err:
        return fail(str(err), code=1, prog=PROG)
    for k, p in enumerate(paths):
        try:
            seconds = execute(p, env={"HF_HUB_OFFLINE": "1", "KOSMOS2_MODEL": ""})
        except NotebookCellError as err:  # the notebook is left as it was
            rest = f" (not run: {', '.join(q.name for q in paths[k + 1:])})" if paths[k + 1:] else ""
            return fail(f"{err}{rest}", code=1, prog=PROG)
        print(f"{p.name}: executed in {seconds:.1f} s")
    return 0

