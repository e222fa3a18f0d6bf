"""Checks of arguments that many functions share, each written once (boxes and image sizes: ``boxes``), the
option types of the command lines built on them, how every command reports bad input (:func:`fail`,
:func:`parse`), the check of an output path, the reading of a JSON file with a clear error (:func:`read_json`)
and the writing of files all at once (:func:`write_files`)."""

from __future__ import annotations

import argparse
import json
import math
import numbers
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence


def is_positive_int(value: object) -> bool:
    """True for a whole number of at least 1 (numpy ints too); ``bool`` is not a number here."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def check_positive_int(name: str, value: object, *, none_ok: bool = False, unit: str = "") -> int | None:
    """Return ``value`` as an int when it is a positive int (or ``None`` when ``none_ok``).

    Raises:
        TypeError: not a whole number (a float, a string, ``True``), e.g.
            ``max_new_tokens must be a positive int, got float: 2.5``.
        ValueError: a whole number below 1, e.g. ``num_bins must be a positive int (bins per side), got 0``.
    """
    if value is None and none_ok:
        return None
    wanted = f"{name} must be a positive int{f' ({unit})' if unit else ''}{' or None' if none_ok else ''}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{wanted}, got {type(value).__name__}: {value!r:.80}")
    if value < 1:
        raise ValueError(f"{wanted}, got {value!r}")
    return int(value)



def check_count(name: str, value: object) -> int:
    """Return ``value`` as an int when it is a whole number of at least 0 (a count that may be 0: warm-up steps,
    ``no_repeat_ngram_size`` with 0 for off …), by :func:`check_positive_int`'s rule otherwise.

    Raises:
        TypeError: not a whole number, e.g. ``steps must be 0 or more (a whole number), got float: 1.5``.
        ValueError: below 0.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value == 0:
        return 0
    try:
        return check_positive_int(name, value)  # type: ignore[return-value]
    except TypeError:
        raise TypeError(f"{name} must be 0 or more (a whole number), got {type(value).__name__}: "
                        f"{value!r:.80}") from None
    except ValueError:
        raise ValueError(f"{name} must be 0 or more (a whole number), got {value!r}") from None


def check_seed(name: str, value: object) -> int:
    """Return ``value`` as an int when it is a whole number (numpy ints too; ``bool`` is not one): a seed, which
    ``random.Random`` and ``torch.manual_seed`` take as a Python int.

    Raises:
        TypeError: anything else, e.g. ``seed must be a whole number (an int), got NoneType: None``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number (an int), got {type(value).__name__}: {value!r:.80}")
    return int(value)


def check_bool(name: str, value: object, none_means: str = "") -> None:
    """``TypeError`` unless ``value`` is ``True`` or ``False`` (or ``None`` where ``none_means`` says what it means):
    a string such as ``"no"`` would otherwise count as true."""
    if not (isinstance(value, bool) or value is None and none_means):
        raise TypeError(f"{name} must be True or False{f' (or None: {none_means})' if none_means else ''}, got "
                        f"{type(value).__name__}: {value!r:.80}")


def out_problem(name: str, out: str | os.PathLike, *, folder: bool, wanted: str,
                inputs: Iterable[str | os.PathLike] = (), beside: bool = False) -> str | None:
    """Why nothing could be written at ``out`` (named ``name`` in the message, e.g. ``--out``), or ``None``: checked
    before any work, so that a long run never ends in a failed write.

    ``folder``: ``out`` is to be a folder, so it must not be a file (else: a file, so it must not be a folder).
    Either way no existing parent of ``out`` may be a file, and the first folder of the path that exists must take
    a new file (one is created there and removed at once; the missing folders are not created); with ``beside``
    (the output is written beside ``out`` and renamed into place) that is the folder holding ``out``. ``wanted``
    says what to give instead, e.g. ``a folder for the model``: ``--out 'x' is a file; give a folder for the model``.
    An empty ``out`` is refused (``Path('')`` would be the current folder). ``inputs``: the files the command
    reads; ``out`` must not be one of them, as writing it would replace that input.
    """
    if not str(out).strip():
        return f"{name} is empty; give {wanted}"
    out = Path(out)
    if out.exists() and out.is_dir() != folder:
        return f"{name} {str(out)!r} is a {'file' if folder else 'folder'}; give {wanted}"
    if out.is_file() and replaced_inputs([out], inputs):
        return (f"{name} {str(out)!r} is one of this command's own inputs, which the results would replace: "
                "choose another file for the results")
    here = out if out.is_dir() and not beside else next((up for up in out.parents if up.exists()), Path("."))
    if not here.is_dir():
        return f"{name} {str(out)!r}: {str(here)!r} is a file, so nothing can be written under it"
    try:
        _write_probe(here)
    except OSError as err:
        return f"{name} {str(out)!r}: nothing can be written in {str(here)!r} ({err.strerror or err})"
    return None


def replaced_inputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The paths of ``outputs`` that are one of the ``inputs`` (compared resolved: links and ``..`` followed), which
    writing them would replace."""
    read = {Path(p).resolve() for p in inputs}
    return [Path(p) for p in outputs if Path(p).resolve() in read]


def _write_probe(folder: Path) -> None:
    """Create a file in ``folder`` and remove it (raises the ``OSError`` of a folder that takes no new file)."""
    handle, path = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    os.close(handle)
    os.unlink(path)


# ------------------------------------------------------------------------------ command-line option types


def positive_int_option(text: str) -> int:
    """argparse type for counts (``--batch-size``, ``--steps`` …): a whole number of at least 1."""
    value = _whole(text)
    if not is_positive_int(value):
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def count_option(text: str) -> int:
    """argparse type for counts that may be 0 (``--vision-steps``, ``--world-images`` …)."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def check_positive_number(name: str, value: object, *, none_ok: bool = False) -> None:
    """Raise a ``ValueError`` unless ``value`` is a finite Python ``int`` or ``float`` above 0 (or ``None`` when
    ``none_ok``), e.g. ``timeout must be a number above 0, got -1``. Plain Python numbers only: the settings
    checked this way (a learning rate, minutes, a time-out) are written to JSON or handed to other libraries."""
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not is_number(value, above=True):
        raise ValueError(f"{name} must be {number_rule(above=True)}{' or None' if none_ok else ''}, got {value!r}")


def number_rule(above: bool = False, share: bool = False) -> str:
    """The words of :func:`is_number`'s rule, for messages."""
    return "a share from 0 to 1" if share else "a number above 0" if above else "a number of at least 0"


def is_number(value: object, above: bool = False, share: bool = False) -> bool:
    """A finite real number (not ``bool``) >= 0 (``above``: > 0; ``share``: at most 1 too)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            and (value > 0 if above else value >= 0) and (value <= 1 if share else True))


def number_option(above: bool = False, share: bool = False):
    """An argparse type for a number by :func:`is_number`'s rule (``--lr``, ``--pair-share``, a loss weight …)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not is_number(value, above, share):
            raise argparse.ArgumentTypeError(f"must be {number_rule(above, share)}, got {text!r}")
        return value
    return parse


#: argparse type for ``--minutes``, ``--lr`` …: a finite number above 0.
positive_number_option = number_option(above=True)


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default after its help, as ``(default: …)``; left out where there is none
    to show (``None``, an empty list) and for switches (``--vision``, ``--no-evaluate``): the help says what
    happens then. The course's commands (``finetune``, ``finetune-demo``, ``train``, ``modelcard``) use it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if action.nargs == 0 or default is None or (isinstance(default, (tuple, list)) and not default):
            return action.help
        return super()._get_help_string(action)


# ------------------------------------------------------------------------------------ command lines


def fail(message: str, code: int = 2, *, prog: str) -> int:
    """Print ``prog: error: message`` on stderr and return the exit ``code`` (argparse's style), e.g.
    ``fail(problem, prog="python -m helpers ground")``: how every command answers bad input (code 2) or a model
    that cannot be loaded (code 1)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """``parser``'s reading of ``argv`` (default ``sys.argv[1:]``), or the exit code when argparse stopped
    (0 after ``--help``, 2 after a usage error whose message it has printed), so that a command's ``main``
    returns its code instead of raising ``SystemExit``."""
    try:
        return parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2


def read_json(path: str | os.PathLike, what: str, expected: str, error: type[Exception] = ValueError):
    """The JSON in the file ``path``, or ``error`` (a ``ValueError`` by default) for a file that is missing, not
    UTF-8 text (the byte), empty or not JSON; the message names it as ``what`` and its path and ends with
    ``expected …``, e.g. ``annotation file 'a.json' is empty; expected COCO detection JSON with 'images', …``."""
    path = Path(path)
    name = f"{what} {str(path)!r}"
    if not path.is_file():
        raise error(f"{name} does not exist (or is not a file); expected {expected}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:  # a picture, a pickle or another binary file
        raise error(f"{name} is not UTF-8 JSON text (byte {err.start} is not UTF-8); expected {expected}") from None
    if not text.strip():
        raise error(f"{name} is empty; expected {expected}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{name} is not valid JSON: {err}; expected {expected}") from None


def write_files(files: dict[str | os.PathLike, str]) -> list[Path]:
    """Write each text of ``files`` (a path → its UTF-8 text) and return the paths, all or none: every text goes to
    a temporary file beside its path (``.NAME.<pid>.tmp``), and only when all are written do they replace their
    paths, so a write that fails (a full disk, Ctrl-C) leaves the earlier files as they were and no temporary file.
    Missing folders are created."""
    paths = [Path(p) for p in files]
    partials = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in paths]  # same folder: os.replace is atomic
    try:
        for path, partial, text in zip(paths, partials, files.values()):
            path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(text, encoding="utf-8")
        for path, partial in zip(paths, partials):
            os.replace(partial, path)
    except BaseException:
        for partial in partials:
            partial.unlink(missing_ok=True)
        raise
    return paths
