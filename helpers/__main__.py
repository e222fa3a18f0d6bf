"""The course's one command: ``python -m helpers <command> [options]`` (installed as ``kosmos2-course`` too).

Every command lives in its own module, which has a ``main(argv)`` that parses the command's options and
returns an exit code (or ``None`` for success): it reads its options with :func:`helpers.grounding.checks.parse`
(``--help`` returns 0 and a bad option 2, with no ``SystemExit``) and answers bad input with one line from
:func:`helpers.grounding.checks.fail`. To add a command, add one line to :data:`COMMANDS`. The
module is imported only when its command is chosen, so ``python -m helpers --help`` loads no torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

import helpers
from helpers.grounding.checks import fail

PROG = "python -m helpers"

#: command -> (the module whose ``main(argv)`` runs it, one line of help). The order is the order of ``--help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("helpers.course.mainjob",
            "run every notebook headless and collect what they ground (what `make run` does)"),
    "ground": ("helpers.course.cli", "ground images or folders of images with a prompt"),
    "evaluate": ("helpers.course.cli_evaluate",
                 "score a model on the synthetic world, RefCOCO/+/g or Flickr30k Entities"),
    "train": ("helpers.world.training",
              "train a Kosmos-2 model on the synthetic world (how the bundled model was made)"),
    "modelcard": ("helpers.world.modelcard", "evaluate a world model and write its model card"),
    "distributed": ("helpers.course.distributed", "ground images on every process of an `accelerate launch` run"),
    "finetune": ("helpers.grounding.finetune", "fine-tune Kosmos-2 on your own boxes (COCO format) with LoRA adapters"),
    "finetune-demo": ("helpers.world.new_kinds", "the fine-tuning demonstration: teach the bundled model stars"),
    "notebooks": ("helpers.course.notebooks", "re-execute notebooks in place, headless and offline"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: it only lists the commands; each command parses its own options."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The Kosmos-2 grounding course's command line.",
        epilog=f"`{PROG} COMMAND --help` shows a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"kosmos2-grounding-course {helpers.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
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
    if args and args[0] in COMMANDS:
        # Everything after the command's name belongs to that command's own parser, --help included.
        module = importlib.import_module(COMMANDS[args[0]][0])
        try:  # each command reads its options with helpers.grounding.checks.parse, which returns argparse's code
            return _exit_code(module.main(args[1:]))
        except NotADirectoryError as err:  # KOSMOS2_COURSE_DATA names a file (helpers.course.paths.data_dir)
            return fail(str(err), prog=f"{PROG} {args[0]}")
    parser = build_parser()
    parser.parse_args(args)  # --help, --version and unknown commands exit here
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
