"""What every benchmark script records of its run, and how it writes its files.

``benchmark.py``, ``kernels.py``, ``memory.py`` and ``bundled_accuracy.py`` each write ``NAME.json`` (the figures,
with the facts of the run from :func:`run_facts`: when, the command, the CPU, the versions) and ``NAME.md`` (the
table that README and notebook 11 show). :func:`check_out` refuses an ``--out`` that cannot take them before
anything is measured, and :func:`write` replaces the files only once all of them are written.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from helpers.grounding.checks import out_problem, write_files
from helpers.grounding.quantization import installed_version

#: The quantization libraries whose versions every report records (``None``: not installed).
LIBRARIES = ("bitsandbytes", "torchao", "onnxruntime")


def cpu_name() -> str:
    """The CPU's model, the cores the system has and the threads torch uses, e.g.
    ``CPU: AMD EPYC (2 cores, torch uses 2 threads)``."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu} ({os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads)"


def command_line(script: str, argv: Sequence[str] | None, hide: Sequence[str] = ()) -> str:
    """How the run was started, as one shell line, ``python bench/SCRIPT ARGS`` (``argv``: the arguments given,
    ``None`` for ``sys.argv``); the value of each option in ``hide`` is written as the option's name in capitals
    (``--work WORK``), as a scratch folder is not a setting of the run."""
    given = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(given[:-1]):
        if arg in hide:
            given[i + 1] = arg.lstrip("-").upper()
    return " ".join(shlex.quote(a) for a in ["python", f"bench/{script}", *given])


def run_facts(script: str, argv: Sequence[str] | None, hide: Sequence[str] = ()) -> dict[str, Any]:
    """The facts every report starts with: ``date`` (UTC, when the run started), ``command``
    (:func:`command_line`), ``cpu`` (:func:`cpu_name`), the versions of ``python``, ``torch`` and
    ``transformers``, and ``libraries``: those of :data:`LIBRARIES`."""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(script, argv, hide),
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "torch": installed_version("torch"),
        "transformers": installed_version("transformers"),
        "libraries": {name: installed_version(name) for name in LIBRARIES},
    }


def check_out(parser: argparse.ArgumentParser, out: Path | None, names: Sequence[str]) -> None:
    """Stop with the parser's error (exit 2) when ``out`` cannot be a folder for the files ``names``, before
    anything is measured; ``None`` (no ``--out``) passes."""
    if out is not None:
        problem = out_problem("--out", out, folder=True, wanted=f"a folder for {' and '.join(names)}")
        if problem:
            parser.error(problem)


def names(parser: argparse.ArgumentParser, option: str, text: str, known: Sequence[str]) -> list[str]:
    """The comma-separated names in ``text`` (the value of ``option``), each once; stop with the parser's error
    (exit 2) when there is none or one is not in ``known``."""
    given = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not given or any(n not in known for n in given):
        parser.error(f"{option} takes names from {', '.join(known)}, got {text!r}")
    return given


def write(out: Path, files: dict[str, str | Any]) -> list[Path]:
    """Write ``files`` (a name → Markdown text, or the data of a ``.json`` file) into the folder ``out``, all at
    once (:func:`helpers.grounding.checks.write_files`), and return their paths."""
    texts = {out / name: (json.dumps(data, indent=1, ensure_ascii=False) + "\n" if name.endswith(".json") else data)
             for name, data in files.items()}
    return write_files(texts)
