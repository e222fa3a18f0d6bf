"""``python -m helpers ground``: ground images from the command line (for instructors preparing a class).

Example::

    python -m helpers ground photos/ extra.png --prompt "<grounding> An image of" --out grounded

writes ``grounded/results.jsonl`` (one JSON line per image, see :mod:`helpers.course.batch`) and one annotated PNG
per image beside it, then prints one line per image. Folders stand for the image files in them.

Exit codes: 0 when every image was grounded; 2 for bad input (missing or unreadable images, a bad box or
option), with a one-line message on stderr; 1 when the model could not be loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from helpers.grounding.prompts import CAPTION_PROMPT

PROG = "python -m helpers ground"
DEFAULT_PROMPT = CAPTION_PROMPT


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ground`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Ground images with a Kosmos-2 model: write OUT/results.jsonl and annotated PNGs.",
        epilog="Without --model: $KOSMOS2_MODEL, else microsoft/kosmos-2-patch14-224 when cached or reachable, "
               "else the bundled offline model.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"the prompt for every image (default: {DEFAULT_PROMPT!r})")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for results.jsonl and the annotated PNGs")
    parser.add_argument("--model", default=None, metavar="M", help="a model folder or hub id")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N", help="images per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="most tokens per answer (default 128)")
    parser.add_argument("--box", type=float, nargs=4, default=None, metavar=("X0", "Y0", "X1", "Y1"),
                        help="a normalized user box for the prompt's first <phrase> "
                             "(e.g. with --prompt '<grounding><phrase> It</phrase> is')")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


def fail(message: str, code: int = 2, prog: str = PROG) -> int:
    """Print ``prog: error: message`` on stderr and return the exit ``code`` (argparse's style)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def _fail(message: str, code: int = 2) -> int:
    return fail(message, code)


def option_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the grounding options shared by the commands (batch size, tokens, prompt), or None."""
    if args.batch_size is not None and args.batch_size < 1:
        return f"--batch-size must be at least 1, got {args.batch_size}"
    if args.max_new_tokens < 1:
        return f"--max-new-tokens must be at least 1, got {args.max_new_tokens}"
    if not args.prompt.strip():
        return "--prompt must not be empty"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as stop:  # --help (0) or a usage error (2, message already printed)
        return int(stop.code or 0)
    problem = option_problem(args)
    if problem:
        return _fail(problem)

    from helpers.course.batch import RESULTS_NAME, ground_folder, image_files
    from helpers.grounding.images import ImageLoadError

    try:  # check the images before spending time on loading a model
        files = image_files(args.images)
    except ImageLoadError as err:
        return _fail(str(err))
    if args.box is not None:
        from helpers.grounding.boxes import check_normalized

        try:
            check_normalized(args.box)
        except ValueError as err:
            return _fail(f"--box: {err}")
        if "<phrase>" not in args.prompt:
            return _fail("--box needs a <phrase>…</phrase> in --prompt, e.g. '<grounding><phrase> It</phrase> is'")

    from helpers.grounding.model import ModelLoadError, load

    try:
        model, processor = load(args.model, verbose=not args.quiet)
    except (ModelLoadError, ValueError) as err:
        return _fail(str(err), code=1)
    try:
        records = ground_folder(model, processor, files, args.prompt, args.out, batch_size=args.batch_size,
                                max_new_tokens=args.max_new_tokens, box=args.box)
    except (ImageLoadError, ValueError) as err:
        return _fail(str(err))
    if not args.quiet:
        for rec in records:
            phrases = ", ".join(e["phrase"] for e in rec["entities"]) or "no grounded phrase"
            print(f"{rec['file']}: {rec['caption']!r} [{phrases}]")
        print(f"wrote {len(records)} result(s) to {Path(args.out) / RESULTS_NAME} and annotated PNGs beside it")
    return 0

