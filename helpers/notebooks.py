"""Execute the course's notebooks headless (the main job, and re-storing outputs after a change).

``python -m helpers.notebooks notebooks/04_post_processing.ipynb`` re-executes a notebook in place with
the same settings the tests use (bundled model, no progress bars), so its stored outputs match a fresh run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from helpers.paths import notebooks_dir

#: Environment every headless run uses: offline model choice and no progress bars.
HEADLESS_ENV = {"KOSMOS2_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false"}


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


def execute(path: Path, out: Path | None = None, *, timeout: int = 600, env: dict[str, str] | None = None) -> float:
    """Execute ``path`` top to bottom in its folder; write it to ``out`` (default: in place). Returns seconds."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    extra = dict(HEADLESS_ENV, KOSMOS2_NOTEBOOK=path.stem, **(env or {}))
    start = time.perf_counter()
    with _env(extra):
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        # the kernel process's own log (e.g. its note about local TCP) is not course output; cell output,
        # stderr included, still reaches the notebook through the kernel's messages
        client.execute(stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    for cell in nb.cells:  # keep stored notebooks free of per-run metadata
        cell.metadata.pop("execution", None)
    nbformat.write(nb, out or path)
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Re-execute notebooks in place, offline on the bundled model.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every course notebook")
    args = parser.parse_args(argv)
    paths = args.notebooks or course_notebooks()
    for p in paths:
        seconds = execute(p, env={"HF_HUB_OFFLINE": "1", "KOSMOS2_MODEL": ""})
        print(f"{p.name}: executed in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
