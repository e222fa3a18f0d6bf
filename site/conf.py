"""Sphinx configuration of the course website: `make site` builds it into build/site from the stored notebooks.

Nothing is executed (the pages show the outputs stored in the notebooks) and no page loads anything from
another host: the theme is Furo from PyPI, search is Sphinx's own, and `course_site` (in this folder)
turns the notebooks' Colab badge images into text links.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from helpers.course.colab import REPO_URL  # noqa: E402  (the package is installed; site/ is not)

project = "Kosmos-2 grounding course"
author = "The Kosmos-2 grounding course authors"
copyright = "The Kosmos-2 grounding course authors, MIT licence"

extensions = ["myst_nb", "course_site"]
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# The stored outputs are the course's results; the site never re-runs a notebook.
nb_execution_mode = "off"
# A cell's printout is one block on the page, as in Jupyter, even where it came in several writes.
nb_merge_streams = True
# Widgets need a running kernel: without one, pages show their text form (notebook 10 says so), and no
# widget JavaScript is fetched from a CDN.
nb_ipywidgets_js = {}
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
# No MathJax from a CDN: the notebooks have no formulas, and this keeps it so.
myst_enable_extensions = ["colon_fence", "substitution"]
myst_substitutions = {"repository": f"[{REPO_URL}]({REPO_URL})"}
myst_heading_anchors = 3
# The exercise solutions are the only folded cells (their `hide-cell` tag; tests/test_notebooks.py checks both):
# each page shows one toggle per solution, with these words, which each Exercises heading names.
nb_code_prompt_show = "Show the solution"
nb_code_prompt_hide = "Hide the solution"

html_theme = "furo"
html_title = "Kosmos-2 grounding course"
html_favicon = "favicon.svg"
html_static_path = []
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None
