"""``python -m helpers ground``: ground images from the command line (for instructors preparing a class).

Example::

    python -m helpers ground photos/ extra.png --prompt "<grounding> An image of" --out grounded

writes ``grounded/results.jsonl`` (one JSON line per image, see :mod:`helpers.course.batch`) and one annotated PNG
per image beside it, then prints one line per image. Folders stand for the image files in them.

Exit codes: 0 when every image was grounded; 2 for bad input (missing or unreadable images, a bad box or
option), with a one-line message on stderr; 1 when the model could not be loaded. Every image is opened
before the model loads, and ``results.jsonl`` is replaced only when all images are done, so a run that
fails leaves the results of an earlier one as they were.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from helpers.course.batch import RESULTS_NAME, annotated_names, check_images, ground_folder, image_files
from helpers.grounding.boxes import is_inverted, looks_like_pixels, to_normalized
from helpers.grounding.checks import fail, out_problem, parse, positive_int_option
from helpers.grounding.images import ImageLoadError, stored_size
from helpers.grounding.model import ModelLoadError, load
from helpers.grounding.prompts import CAPTION_PROMPT, check_prompt, user_box_entry

PROG = "python -m helpers ground"
DEFAULT_PROMPT = CAPTION_PROMPT


def prompt_option(box_hint: str = ""):
    """Option type for ``--prompt``: a prompt by :func:`~helpers.grounding.prompts.check_prompt`'s rule (not
    blank, no image or location tokens), checked before a model loads; ``box_hint`` follows a refusal (how this
    command takes a box)."""
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"must not be empty; e.g. {CAPTION_PROMPT!r}")
        try:
            return check_prompt(text, "the prompt")
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{err}{box_hint}") from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ground`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Ground images with a Kosmos-2 model: write OUT/results.jsonl and annotated PNGs.",
        epilog="Without --model: $KOSMOS2_MODEL, else microsoft/kosmos-2-patch14-224 when cached or reachable, "
               "else the bundled offline model.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("--prompt", type=prompt_option(" (here: --box X0 Y0 X1 Y1)"), default=DEFAULT_PROMPT,
                        help=f"the prompt for every image (default: {DEFAULT_PROMPT!r})")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for results.jsonl and the annotated PNGs")
    parser.add_argument("--model", default=None, metavar="M", help="a model folder or hub id")
    parser.add_argument("--batch-size", type=positive_int_option, default=None, metavar="N",
                        help="images per generate call")
    parser.add_argument("--max-new-tokens", type=positive_int_option, default=128, metavar="N",
                        help="most tokens per answer (default 128)")
    parser.add_argument("--box", type=float, nargs=4, default=None, metavar=("X0", "Y0", "X1", "Y1"),
                        help="a user box for the prompt's first <phrase>, as fractions of the image's width and "
                             "height from 0 to 1, not pixels (e.g. --box 0.1 0.2 0.5 0.6 with "
                             "--prompt '<grounding><phrase> It</phrase> is')")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


def _numbers(values: Sequence[float]) -> str:
    return " ".join(f"{v:.4g}" for v in values)


def box_message(box: Sequence[float], error: ValueError, files: Sequence[Path]) -> str:
    """The ``--box`` error for a command-line user: for what looks like a pixel box
    (:func:`~helpers.grounding.boxes.looks_like_pixels`), how to give it as fractions, with the values to type
    when one image is given (for the image file's own size, also when loading would shrink it)."""
    if not looks_like_pixels(box):
        return f"--box: {error}"
    message = (f"--box takes x0 y0 x1 y1 as fractions of the image's width and height (each from 0 to 1), "
               f"not pixels; got {_numbers(box)}. Divide the x values by the image's width and the y values by "
               "its height")
    if len(files) == 1:
        try:
            size = stored_size(files[0], turned=True)  # the header alone: the size load_image turns it to
        except ImageLoadError:
            return message
        where = f"{files[0]} ({size[0]} x {size[1]} pixels)"
        if is_inverted(box):
            return message + ", and give the corners top left first: as pixels this box is inverted"
        try:
            return message + f": for {where} type --box {_numbers(to_normalized(box, size))}"
        except ValueError:
            return message + f"; as pixels it would reach outside {where}"
    return message + " (one --box is used for every image)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args

    try:  # check the images before spending time on loading a model
        files = image_files(args.images)
    except ImageLoadError as err:
        return fail(str(err), prog=PROG)
    if args.box is not None:
        try:
            user_box_entry(args.prompt, args.box)
        except ValueError as err:
            return fail(box_message(args.box, err, files), prog=PROG)
    out = Path(args.out)
    problem = out_problem("--out", args.out, folder=True, wanted="a folder for results.jsonl and the PNGs")
    if problem:
        return fail(problem, prog=PROG)
    try:
        check_images(files)
        annotated_names(files, out)  # an --out that would take over the images themselves
    except (ImageLoadError, ValueError) as err:
        return fail(str(err), prog=PROG)

    try:
        model, processor = load(args.model, verbose=not args.quiet)
    except (ModelLoadError, ValueError) as err:
        return fail(str(err), code=1, prog=PROG)
    try:
        records = ground_folder(model, processor, files, args.prompt, args.out, batch_size=args.batch_size,
                                max_new_tokens=args.max_new_tokens, box=args.box)
    except (ImageLoadError, ValueError) as err:
        return fail(str(err), prog=PROG)
    except OSError as err:  # a write that failed after the check (a full disk): --out, not a temporary file
        return fail(f"--out {args.out!r}: writing the results failed ({err.strerror or err})", prog=PROG)
    if not args.quiet:
        for rec in records:
            phrases = ", ".join(e["phrase"] for e in rec["entities"]) or "no grounded phrase"
            print(f"{rec['file']}: {rec['caption']!r} [{phrases}]")
        print(f"wrote {len(records)} result(s) to {Path(args.out) / RESULTS_NAME} and annotated PNGs beside it")
    return 0

