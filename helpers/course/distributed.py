"""Ground many images on several GPUs (or CPU processes) at once, with 🤗 accelerate.

Every process holds its own copy of the model. The list of images is cut into one contiguous share per
process (:meth:`accelerate.PartialState.split_between_processes`), each process grounds its share with
:func:`helpers.grounding.model.ground`, and :func:`accelerate.utils.gather_object` brings the results back, in the
original order. On one process (a plain ``python`` run) nothing is split and the result is what
:func:`~helpers.grounding.model.ground` gives.

From the command line, one process per GPU::

    accelerate launch --num_processes 4 -m helpers distributed photos/ --out results.jsonl

and on a machine without a GPU, for trying it out, two CPU processes (``accelerate launch --cpu`` alone
starts one process unless MPI is set up, so ask for the multi-process launcher)::

    accelerate launch --multi_gpu --num_processes 2 -m helpers distributed photos/ --out results.jsonl

Without a GPU the processes talk through the gloo backend; ``torchrun --nproc_per_node 2 -m
helpers distributed …`` does the same.
The main process writes ``results.jsonl``, one line per image in the order given, in the layout of
:func:`helpers.course.outputs.grounding_record` (without annotated pictures: ``"annotated"`` is ``null``;
``width``, ``height`` and ``boxes_px`` are those of the image file, also when loading shrank a large one).

A failure on one process (an unreadable image, say) is gathered like a result, so every process raises
the same :class:`DistributedGroundingError` instead of the others waiting for it forever.

Results equal one :func:`~helpers.grounding.model.ground` call over all images: ``ground`` batches only prompts of
the same token length, so no token's position depends on which images share a batch or a process. In float32 on a
CPU the answers are exactly those of one call; in half precision on a GPU the kernels chosen for each batch size
may round differently and, rarely, swap a nearly tied token.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from PIL import Image

from helpers.course.batch import check_images, image_files
from helpers.course.cli import prompt_option
from helpers.course.outputs import grounding_record, write_jsonl
from helpers.grounding.checks import check_positive_int, fail, out_problem, parse, positive_int_option
from helpers.grounding.images import ImageLoadError, load_image, load_image_and_size
from helpers.grounding.model import ModelLoadError, check_prompts_and_boxes, ground, load, try_gpu
from helpers.grounding.prompts import CAPTION_PROMPT

T = TypeVar("T")
PROG = "accelerate launch -m helpers distributed"


class DistributedGroundingError(RuntimeError):
    """Some process failed on its share; the message names the process, the item and the original error."""


def _state(accelerator: Any = None) -> Any:
    """The ``Accelerator`` or ``PartialState`` to split work with (a new ``PartialState`` when ``None``)."""
    if accelerator is None:
        from accelerate import PartialState

        return PartialState(cpu=not _has_gpu())
    needed = ("split_between_processes", "process_index", "num_processes")
    missing = [name for name in needed if not hasattr(accelerator, name)]
    if missing:
        raise TypeError(
            "accelerator must be an accelerate.Accelerator or accelerate.PartialState (it needs "
            f"{', '.join(needed)}), got {type(accelerator).__name__} without {', '.join(missing)}"
        )
    return accelerator


def _has_gpu() -> bool:
    """True when :func:`~helpers.grounding.model.try_gpu` finds a CUDA GPU; otherwise processes work on the CPU with
    the gloo backend.

    accelerate only sets up CPU processes (``MULTI_CPU``) when asked for the CPU explicitly, so without a
    GPU ``PartialState(cpu=True)`` is what lets ``accelerate launch --multi_gpu`` runs split the work. Of the
    GPUs ``try_gpu`` finds, only CUDA takes part: accelerate has no multi-process backend for Apple's MPS (each
    process would do all the work), and other GPUs (Intel's XPU) are ones :func:`load` cannot put a model on.
    """
    return try_gpu() == "cuda"


def map_between_processes(fn: Callable[[list[int]], Sequence[T]], n: int, accelerator: Any = None) -> list[T]:
    """Run ``fn`` on this process's share of ``range(n)`` and return every process's results, in order.

    ``fn`` gets a list of indices (contiguous, possibly empty when ``n`` is smaller than the number of
    processes) and must return one result per index. Every process returns the full list of ``n``
    results; the results must be picklable (they travel with ``torch.distributed``).

    Raises:
        TypeError: ``n`` is not an int, or ``accelerator`` is not an accelerate state.
        ValueError: ``n`` is negative.
        DistributedGroundingError: ``fn`` raised or returned the wrong number of results on any process
            (raised on every process, with the first failure's message).
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int (the number of items), got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n must be at least 0, got {n}")
    state = _state(accelerator)
    with state.split_between_processes(list(range(n))) as share:
        share = list(share)
        try:
            results = list(fn(share))
            if len(results) != len(share):
                raise ValueError(f"fn returned {len(results)} results for {len(share)} items")
            local: list[tuple[int, Any, str | None]] = [(i, r, None) for i, r in zip(share, results)]
        except Exception as err:  # reported on every process below, so no process waits forever
            items = f"items {share[0]}–{share[-1]}" if share else "no items"
            local = [(share[0] if share else -1, None,
                      f"process {state.process_index} failed on its share ({items} of {n}): "
                      f"{type(err).__name__}: {err}")]
    gathered = _gather(local, state)
    errors = [message for _, _, message in gathered if message is not None]
    if errors:
        raise DistributedGroundingError(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    ordered = sorted(gathered, key=lambda item: item[0])
    if [i for i, _, _ in ordered] != list(range(n)):
        raise DistributedGroundingError(f"expected results for items 0…{n - 1}, got {[i for i, _, _ in ordered]}")
    return [result for _, result, _ in ordered]


def _gather(local: list, state: Any) -> list:
    """Every process's list, concatenated in process order (the list itself on a single process)."""
    if state.num_processes == 1:
        return list(local)
    from accelerate.utils import gather_object

    return list(gather_object(local))


def ground_distributed(
    model,
    processor,
    images: Sequence[Any],
    prompts: str | Sequence[str] = CAPTION_PROMPT,
    bboxes: Sequence | None = None,
    max_new_tokens: int = 128,
    batch_size: int | None = None,
    accelerator: Any = None,
) -> list:
    """Ground ``images`` spread over the processes of an ``accelerate launch`` run; results in input order.

    Args:
        model: the model, already on this process's device (``accelerator.device``), as
            :func:`helpers.grounding.model.load` puts it with ``device=str(accelerator.device)``.
        processor: its processor.
        images: a list of PIL images, or of anything :func:`helpers.grounding.images.load_image` reads (paths,
            URLs, bytes); those are loaded by the process that grounds them, so each process reads only
            its share. PIL images are used as they are.
        prompts, bboxes, max_new_tokens, batch_size: as for :func:`helpers.grounding.model.ground` (one prompt for
            all images or one per image; one ``bboxes`` entry per image); ``batch_size`` is per process.
        accelerator: an ``accelerate.Accelerator`` or ``PartialState``; by default a ``PartialState``
            (on the CPU processes when torch sees no GPU).

    Returns:
        One :class:`~helpers.grounding.tokens.Grounding` per image, in the order of ``images``, on every process.

    Raises:
        TypeError, ValueError: bad arguments, with ground's messages (checked on every process before any
            work; a prompt or ``bboxes`` entry is named by its index in ``prompts`` or ``bboxes``).
        DistributedGroundingError: an image could not be loaded or grounded on some process.
    """
    if isinstance(images, (str, bytes, Image.Image)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a list of images or paths, got {type(images).__name__}")
    n = len(images)
    prompt_list, _ = check_prompts_and_boxes(prompts, bboxes, n)  # ground's checks, for all images at once
    check_positive_int("max_new_tokens", max_new_tokens)
    check_positive_int("batch_size", batch_size, none_ok=True)

    def share(indices: list[int]) -> list:
        if not indices:
            return []
        mine = [images[i] if isinstance(images[i], Image.Image) else load_image(images[i]) for i in indices]
        return ground(model, processor, mine, [prompt_list[i] for i in indices],
                      bboxes=None if bboxes is None else [bboxes[i] for i in indices],
                      max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)

    return map_between_processes(share, n, accelerator)


# --------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m helpers distributed``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Ground images on every process of an `accelerate launch` run; the main process writes "
                    "one JSON line per image, in the order given.",
        epilog="Example, one process per GPU: accelerate launch --num_processes 2 -m helpers distributed photos/ --out "
               "results.jsonl (on a machine without a GPU add --multi_gpu for two CPU processes)",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="the JSON Lines file to write (replaced once every image is done)")
    parser.add_argument("--model", default=None, metavar="M", help="a model folder or hub id (default: as load())")
    parser.add_argument("--prompt", type=prompt_option(" (this command takes no user box)"), default=CAPTION_PROMPT,
                        help=f"the prompt for every image (default: {CAPTION_PROMPT!r})")
    parser.add_argument("--batch-size", type=positive_int_option, default=None, metavar="N",
                        help="images per generate call, per process")
    parser.add_argument("--max-new-tokens", type=positive_int_option, default=128, metavar="N",
                        help="most tokens per answer (default 128)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Exit codes: 0 when every image was grounded; 2 for bad input (a missing or unreadable image, a bad
    option); 1 when the model could not be loaded. Every process returns the same code.
    """
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args

    out = Path(args.out)
    # the same checks on every process, before any of them loads a model
    try:
        files = image_files(args.images)
    except ImageLoadError as err:
        return fail(str(err), prog=PROG)
    problem = out_problem("--out", args.out, folder=False, inputs=files,  # not one of the images
                          wanted=f"the results file's name, e.g. --out {out / 'results.jsonl'}")
    if problem:
        return fail(problem, prog=PROG)
    try:
        check_images(files)  # every file opens as an image, as ground's command checks too
    except ImageLoadError as err:
        return fail(str(err), prog=PROG)

    state = _state()
    try:
        model, processor = load(args.model, device=str(state.device), verbose=state.is_main_process and not args.quiet)
    except (ModelLoadError, ValueError) as err:
        return fail(str(err), code=1, prog=PROG)

    def share(indices: list[int]) -> list[dict]:
        if not indices:
            return []
        loaded = [load_image_and_size(files[i]) for i in indices]
        results = ground(model, processor, [picture for picture, _ in loaded], args.prompt,
                         max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False)
        return [grounding_record(str(files[i]), args.prompt, g, size)  # the file's size, even when loading shrank it
                for i, (_, size), g in zip(indices, loaded, results)]

    try:
        records = map_between_processes(share, len(files), state)
    except DistributedGroundingError as err:
        return fail(str(err), prog=PROG)
    if state.is_main_process:
        write_jsonl(out, records)
        if not args.quiet:
            print(f"grounded {len(records)} image(s) on {state.num_processes} process(es); wrote {out}")
    state.wait_for_everyone()
    return 0

