"""What every benchmark script records of its run, how it checks the folders it is given, and how it writes its files.

``benchmark.py``, ``kernels.py``, ``memory.py``, ``bundled_accuracy.py`` and ``profile_step.py`` each print their
table and, given ``--out``, write ``NAME.json`` (the figures, with the facts of the run from :func:`run_facts`:
when, the command, the CPU, the versions) and ``NAME.md`` (the table that README and notebook 11 show); without
``--out`` they write no file. :func:`out_folder` refuses an ``--out`` that cannot take them before anything is
measured (:func:`folder_option` does the same for the other folders a script writes in), :func:`write` replaces
the files only once all of them are written, and :func:`check_settings` keeps a run from going on in a work
folder made by a run with other settings.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from helpers.grounding.checks import check_positive_number, out_problem, read_json, write_files
from helpers.grounding.model import describe_device
from helpers.grounding.quantization import installed_version

#: The quantization libraries whose versions every report records (``None``: not installed).
LIBRARIES = ("bitsandbytes", "torchao", "onnxruntime")


def cpu_name() -> str:
    """The CPU the run measured, e.g. ``CPU: AMD EPYC (2 cores, torch uses 2 threads)``
    (:func:`helpers.grounding.model.describe_device`)."""
    return "CPU: " + describe_device("cpu")


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


class MemoryPeaks:
    """The most resident memory of each kind the process has held since :meth:`reset` (or since it began to
    sample), read from ``/proc/self/status`` (Linux) every ``interval`` seconds by a thread of its own, and at
    each :meth:`reset` and :meth:`gib`.

    ``RssAnon`` is the process's *private* memory: the weights it converted or copied, the quantized ones, ONNX
    Runtime's graphs, the activations. ``RssFile`` counts the pages of files mapped into memory, such as a
    safetensors checkpoint that transformers maps rather than reads, which the system can drop and read again. Use
    it as a context manager: ``with MemoryPeaks() as peaks: ...; peaks.gib("RssAnon")``. A peak shorter than
    ``interval`` can be missed; the figures are a lower bound of the true peak.
    """

    FIELDS = ("RssAnon", "RssFile")
    STATUS = Path("/proc/self/status")

    def __init__(self, interval: float = 0.05):
        check_positive_number("interval", interval)  # seconds
        self.interval = interval
        self.peaks = dict.fromkeys(self.FIELDS, 0)  # KiB
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def available(cls) -> bool:
        """Whether this system reports them (Linux's ``/proc/self/status``)."""
        try:
            status = cls.STATUS.read_text(encoding="ascii")
        except OSError:
            return False
        return all(f"{field}:" in status for field in cls.FIELDS)

    def _now(self) -> dict[str, int]:
        found = {}
        for line in self.STATUS.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(":")
            if name in self.FIELDS:
                found[name] = int(value.split()[0])
        missing = [f for f in self.FIELDS if f not in found]
        if missing:
            raise RuntimeError(f"{self.STATUS} has no {', '.join(missing)} (memory peaks need Linux)")
        return found

    def sample(self) -> None:
        """Take one reading now."""
        with self._lock:  # read under the lock, so that a reading taken before a reset cannot land after it
            for field, kib in self._now().items():
                self.peaks[field] = max(self.peaks[field], kib)

    def reset(self) -> None:
        """Start the peaks again from what the process holds now."""
        with self._lock:
            self.peaks.update(self._now())

    def gib(self, field: str = "RssAnon") -> float:
        """The peak of ``field`` (one of :data:`FIELDS`) in GiB, a reading taken now included."""
        if field not in self.FIELDS:
            raise ValueError(f"field must be one of {', '.join(self.FIELDS)}, got {field!r}")
        self.sample()
        return self.peaks[field] / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "MemoryPeaks":
        self.reset()
        self._thread = threading.Thread(target=self._run, name="memory-peaks", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def out_folder(parser: argparse.ArgumentParser, text: str | None, names: Sequence[str]) -> Path | None:
    """The folder that ``--out`` names, ``text`` as given (``None``: no ``--out``, so no file is written), or stop
    with the parser's error (exit 2) when it cannot be a folder for the files ``names``, before anything is
    measured. The text is checked as given: as a ``Path``, ``''`` would already be ``.``, the current folder."""
    if text is None:
        return None
    return folder_option(parser, "--out", text, f"a folder for {' and '.join(names)}")


def folder_option(parser: argparse.ArgumentParser, option: str, text: str, wanted: str) -> Path:
    """The folder that ``option`` names (``text`` as given), when files can be written in it; else stop with the
    parser's error (exit 2) that says what is wrong and asks for ``wanted``: an empty text, a file, a path under
    a file, a place that takes no new file (:func:`helpers.grounding.checks.out_problem`)."""
    problem = out_problem(option, text, folder=True, wanted=wanted)
    if problem:
        parser.error(problem)
    return Path(text)


#: The file of a work folder that records the settings of the runs that made it (:func:`check_settings`).
SETTINGS = "settings.json"


def check_settings(parser: argparse.ArgumentParser, option: str, folder: Path, settings: dict[str, Any]) -> None:
    """Record ``settings`` (a setting's name → its value, JSON's kinds) in ``folder/settings.json``, the work
    folder named by ``option``, joined to those recorded there; stop with the parser's error (exit 2) instead when
    a setting recorded there has another value (the message names each one, then and now), or when the folder
    holds files but no settings (what made them cannot be told): its files would be mixed with this run's."""
    file = folder / SETTINGS
    recorded: Any = {}
    if file.is_file():
        expected = "the settings a bench run records (a JSON object); give a new folder"
        try:
            recorded = read_json(file, f"{option} settings file", expected)
        except ValueError as err:
            parser.error(str(err))
        if not isinstance(recorded, dict):
            parser.error(f"{option} settings file {str(file)!r} holds a JSON {type(recorded).__name__}; "
                         f"expected {expected}")
    elif folder.is_dir() and any(folder.iterdir()):
        parser.error(f"{option} {str(folder)!r} holds files but no {SETTINGS}, so the settings of the run that "
                     "wrote them are unknown: give a new or empty folder")
    changed = [name for name, value in settings.items() if name in recorded and recorded[name] != value]
    if changed:
        then = ", ".join(f"{name} {recorded[name]}" for name in changed)
        now = ", ".join(f"{name} {settings[name]}" for name in changed)
        parser.error(f"{option} {str(folder)!r} holds the work of a run with {then}; this run has {now}: give the "
                     f"same settings to go on with it, or a new {option} folder")
    write(folder, {SETTINGS: {**recorded, **settings}})


def process_failure(done: subprocess.CompletedProcess) -> str:
    """Why a process of its own (one path of a run) failed: its exit status (a negative one is the signal that
    killed it, such as 9 when the system ran out of memory) and the last line of its error output."""
    why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return f"the process ended with status {done.returncode}: {why[:250]}"


def exit_status(main: Callable[[], int]) -> int:
    """``main()``'s exit status; Ctrl-C ends it with one line and status 130 instead of a traceback. No file of
    ``--out`` is half-written (:func:`write`) or written early (each script writes them at the end of its run)."""
    try:
        return main()
    except KeyboardInterrupt:
        print("stopped (Ctrl-C) before the end of the run: no file of --out was written", file=sys.stderr)
        return 130


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
