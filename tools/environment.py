"""Print the conda environment file of the course, made from pyproject.toml (``make environment.yml``).

It is the learner's environment: the pip list is the project's dependencies plus its ``lab`` extra (JupyterLab and
its kernel), then the course itself (``-e .``). The other extras (``quant``: the quantized-weight libraries, which
have no wheels for some machines, an Intel Mac among them; ``test``; ``site``) are left out, so that a machine
without them still gets a working environment; the file's comments say how to add them, and where torch's CPU
wheel comes from on Linux without an NVIDIA GPU. ``make test`` installs everything with pip instead.
tests/test_packaging.py checks that environment.yml is what this prints.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The extra the environment installs; the others are named in its comments.
EXTRA = "lab"
#: Where torch's CPU-only wheels are (PyPI's Linux wheel of torch is the CUDA build).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def environment_yml(pyproject: Path = ROOT / "pyproject.toml") -> str:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    python = re.fullmatch(r">=\s*(\d+\.\d+)", project["requires-python"])
    if python is None:
        raise ValueError(f"expected requires-python of the form '>=3.X', got {project['requires-python']!r}")
    extras = project["optional-dependencies"]
    others = [name for name in extras if name != EXTRA]
    pip = project["dependencies"] + extras[EXTRA] + ["-e ."]
    lines = [
        "# Conda environment for the Kosmos-2 grounding course, generated from pyproject.toml by",
        "# `make environment.yml` (tools/environment.py): do not edit by hand.",
        "#   conda env create -f environment.yml   (run from the root of a clone)",
        f"#   conda activate {project['name']}",
        f"# It installs the course with its `{EXTRA}` extra. Add the others ({', '.join(others)}) once it is active,",
        "# from the root of the clone:",
        *(f'#   pip install -e ".[{name}]"' for name in others),
        "# On Linux without an NVIDIA GPU, PyPI's torch is the CUDA build (several GB); torch's CPU wheel comes from",
        f"# {TORCH_CPU_INDEX}: create the environment with",
        f"#   PIP_EXTRA_INDEX_URL={TORCH_CPU_INDEX} conda env create -f environment.yml",
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
