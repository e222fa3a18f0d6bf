"""Print the conda environment file of the course, made from pyproject.toml (``make environment.yml``).

The pip list is the project's dependencies plus its ``lab``, ``test``, ``quant`` and ``site`` extras (JupyterLab and
its kernel; the quantized-weight libraries, for the CPU paths as much as the GPU ones; the website and its browser
tests), then the course itself
(``-e .``): what ``make test`` installs.
tests/test_packaging.py checks that environment.yml is what this prints.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def environment_yml(pyproject: Path = ROOT / "pyproject.toml") -> str:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    python = re.fullmatch(r">=\s*(\d+\.\d+)", project["requires-python"])
    if python is None:
        raise ValueError(f"expected requires-python of the form '>=3.X', got {project['requires-python']!r}")
    extras = project["optional-dependencies"]
    pip = project["dependencies"] + extras["lab"] + extras["test"] + extras["quant"] + extras["site"] + ["-e ."]
    lines = [
        "# Conda environment for the Kosmos-2 grounding course, generated from pyproject.toml by",
        "# `make environment.yml` (tools/environment.py): do not edit by hand.",
        "#   conda env create -f environment.yml   (run from the root of a clone)",
        f"#   conda activate {project['name']}",
        f"name: {project['name']}",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        f"  - python={python.group(1)}",
        "  - pip",
        "  - pip:",
        *(f'      - "{spec}"' for spec in pip),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(environment_yml())
