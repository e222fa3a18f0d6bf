"""helpers' public names: what a lesson imports is importable from ``helpers`` itself."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import helpers
from helpers.course.notebooks import course_notebooks

ROOT = Path(__file__).resolve().parent.parent
#: Imported by their own module on purpose: the solution cells show where the solutions live.
SOLUTIONS = ("helpers.course.solutions", "helpers.course.solutions_more")


def _lesson_imports() -> list[tuple[str, str, str]]:
    """``(notebook, module, name)`` for every name a notebook's code imports from a module of ``helpers``."""
    found = []
    for path in course_notebooks():
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            code = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
            for node in ast.walk(ast.parse(code)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("helpers."):
                    found += [(path.name, node.module, alias.name) for alias in node.names]
    return found


def test_every_name_a_lesson_imports_is_public() -> None:
    """Lessons imported names from helpers.world.training, helpers.grounding.quantization and helpers.course.colab
    that ``helpers`` did not export (notebooks 02, 11, 12, 13)."""
    imports = [(nb, module, name) for nb, module, name in _lesson_imports() if module not in SOLUTIONS]
    for nb, module, name in imports:
        assert name in helpers.__all__, f"{nb} imports {name} from {module}, and helpers does not export it"
        assert getattr(helpers, name) is getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name, module", [
    *[(name, "helpers.world.training")
      for name in ("IGNORE", "TASK_WEIGHTS", "attention_targets", "dense_targets", "encode_example")],
    ("check_available", "helpers.grounding.quantization"),
    ("install_extra", "helpers.course.colab"),
])
def test_the_names_the_lessons_needed_are_exported(name: str, module: str) -> None:
    assert helpers.__getattr__(name) is getattr(importlib.import_module(module), name)


def test_the_lessons_training_and_colab_names_load_no_torch() -> None:
    """``from helpers import install_extra`` runs before a lesson installs the quant extra, so it must not import
    torch (nor ``import helpers`` itself)."""
    code = ("import sys\nfrom helpers import install_extra, check_available\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    assert done.stdout.strip() == "[]"
