"""Rewrite every notebook's Colab set-up cell and "Open in Colab" badge from pyproject.toml's Repository URL.

Run it after changing ``[project.urls] Repository`` (for example when publishing the course under its
own address): ``python tools/set_up_cells.py``. tests/test_notebooks.py checks that the notebooks agree.
"""

from __future__ import annotations

import argparse
import re

import nbformat

from helpers.course.colab import COLAB_CELL, colab_badge_url
from helpers.course.notebooks import course_notebooks

BADGE_LINK = re.compile(r"\(https://colab\.research\.google\.com/github/[^)\s]+\)")


def main(argv: list[str] | None = None) -> None:
    """Rewrite the set-up cell and badge of every course notebook (the script takes no arguments)."""
    argparse.ArgumentParser(prog="python tools/set_up_cells.py", description=__doc__.splitlines()[0]).parse_args(argv)
    for path in course_notebooks():
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        code[0].source = COLAB_CELL
        nb.cells[1].source = BADGE_LINK.sub(f"({colab_badge_url(path.name)})", nb.cells[1].source)
        nbformat.write(nb, path)
        print(f"{path.name}: set-up cell and badge for {colab_badge_url(path.name)}")


if __name__ == "__main__":
    main()
