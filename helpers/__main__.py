"""Command line of the course: ``python -m helpers <command>`` (installed as ``kosmos2-course`` too).

Commands:
    run      the main job behind ``make run``: writes its results to ``--out`` (default ``outputs``)
    ground   ground images (or folders of images) with a prompt (all further arguments go to ``helpers.cli_ground``)

Each command imports its module only when it is chosen, so ``--help`` is fast and loads no torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import helpers

PROG = "python -m helpers"


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for the top-level command line."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Kosmos-2 grounding course: run the main job or ground an image."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {helpers.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="run the main job (what `make run` does)")
    run.add_argument("--out", default="outputs", help="folder for the results (default: outputs)")
    commands.add_parser(
        "ground",
        help="ground images or folders of images with a prompt; `%s ground --help` lists its options" % PROG,
        add_help=False,
    )
    return parser


def _exit_code(value: object) -> int:
    """Turn a command's return value into an exit code: ``None`` means success, ints pass through."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a command must return an int exit code or None, got {type(value).__name__}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "ground":
        # Everything after "ground" belongs to that command's own parser, --help included.
        from helpers import cli_ground

        return _exit_code(cli_ground.main(args[1:]))

    parser = build_parser()
    namespace = parser.parse_args(args)
    if namespace.command == "run":
        from helpers import mainjob

        return _exit_code(mainjob.main(Path(namespace.out)))
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
