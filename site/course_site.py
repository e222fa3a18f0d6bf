"""Sphinx extension for the course website.

- ``{course-notebooks}``: the notebooks in order, each with its title, its objective (the "By the end you
  can …" sentence of its first cell) and an "Open in Colab" text link, read from the notebooks themselves.
- The Colab badge that every notebook carries is an image on another host; on the site it becomes a text
  link, so that no page requests anything from another host.
- A picture a cell drew has no alternative text of its own (HTML would read out its hashed file name): it gets
  :data:`OUTPUT_ALT`, which points a screen reader at the cell and its explanation.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform
from sphinx.util.docutils import SphinxDirective

from helpers.course.colab import colab_badge_url
from helpers.course.notebooks import course_notebooks

BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
OUTPUT_ALT = "Picture drawn by the code cell above; the text around it says what it shows."


def notebook_entries(folder: Path) -> list[tuple[str, str, str]]:
    """``(file name, title, objective)`` of each notebook in ``folder``, in order of their numbers."""
    entries = []
    for path in course_notebooks(folder):
        first = nbformat.read(path, as_version=4).cells[0]
        lines = [line.strip() for line in first.source.splitlines()]
        if first.cell_type != "markdown" or not lines[0].startswith("# "):
            raise ValueError(f"{path}: the first cell must be markdown starting with the '# ' title")
        objective = " ".join(line for line in lines[1:] if line)
        if not objective.startswith("By the end you can"):
            raise ValueError(f"{path}: the first cell must state the objective ('By the end you can …')")
        entries.append((path.name, lines[0][2:].strip(), objective))
    if not entries:
        raise ValueError(f"no notebooks NN_*.ipynb in {folder}")
    return entries


class CourseNotebooks(SphinxDirective):
    """The list of notebooks for the home page."""

    def run(self) -> list[nodes.Node]:
        folder = Path(self.env.srcdir) / "notebooks"
        items = [f"1. **{{doc}}`{title} </notebooks/{Path(name).stem}>`** — {objective} "
                 f"[Open in Colab]({colab_badge_url(name)})" for name, title, objective in notebook_entries(folder)]
        return self.parse_text_to_nodes("\n".join(items))


class ColabBadgeToText(SphinxTransform):
    """Replace the Colab badge image by the words "Open in Colab" (the link around it stays); give a cell's
    picture :data:`OUTPUT_ALT` when it has no alternative text."""

    default_priority = 400

    def apply(self, **kwargs) -> None:
        for image in list(self.document.findall(nodes.image)):
            if image["uri"] == BADGE_IMAGE:
                image.replace_self(nodes.Text("Open in Colab"))
            elif not image.get("alt"):
                image["alt"] = OUTPUT_ALT


def setup(app: Sphinx) -> dict:
    app.add_directive("course-notebooks", CourseNotebooks)
    app.add_transform(ColabBadgeToText)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
