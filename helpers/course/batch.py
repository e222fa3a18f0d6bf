"""Ground a folder of images in batches and keep the results: JSON Lines plus annotated PNGs.

:func:`ground_folder` is what ``python -m helpers ground`` runs. For every image it writes one line to
``OUT/results.jsonl`` (the layout of :func:`helpers.course.outputs.grounding_record`) and the image with
its boxes drawn to ``OUT/<name>.png``. Small images are enlarged before drawing (:func:`annotation_canvas`),
so that the labels, whose text must stay readable, do not cover the objects of a small picture.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from helpers.course.outputs import grounding_record, read_jsonl, write_jsonl
from helpers.grounding.boxes import check_image_size
from helpers.grounding.checks import check_positive_int, out_problem, replaced_inputs
from helpers.grounding.images import ImageLoadError, load_image, load_image_and_size
from helpers.grounding.model import default_batch_size, ground
from helpers.grounding.plotting import draw_entities
from helpers.grounding.progress import interactive
from helpers.grounding.prompts import check_prompt, user_box_entry

#: File endings that count as images when a folder is given.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
RESULTS_NAME = "results.jsonl"
#: Annotated pictures are drawn on a copy whose shorter side has at least this many pixels.
ANNOTATION_MIN_SIDE = 384


def annotation_canvas(image):
    """``image`` enlarged (same aspect ratio) so its shorter side is :data:`ANNOTATION_MIN_SIDE` px, or as is.

    Labels need a font of about 11 px or more to be read; on a picture 90 px high such a label covers an
    eighth of the height and hides the small objects next to the box. Drawn on the enlarged copy, the same
    label covers a few percent. Boxes are normalized, so they land on the same places.
    """
    short = min(image.size)
    if short >= ANNOTATION_MIN_SIDE:
        return image
    scale = ANNOTATION_MIN_SIDE / short
    size = (max(ANNOTATION_MIN_SIDE, round(image.width * scale)), max(ANNOTATION_MIN_SIDE, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand the given paths into image files: files stay as they are, folders give their images.

    A folder contributes its files whose names end in one of :data:`IMAGE_SUFFIXES` (not recursively),
    sorted by name. The order of the arguments is kept. What else a folder with images holds (files with
    another ending, sub-folders) is skipped, and said so: one line on stderr per such folder, with the count
    and the first few names, e.g. ``skipped 2 of 4 item(s) in 'photos' …: b.jfif, notes.txt``.

    Raises:
        TypeError: ``paths`` is not a path or a list of paths (a PIL image, say: :func:`ground_folder` takes
            files and folders; ``ground()`` takes images).
        ImageLoadError: a path does not exist, or a folder holds no image files. All missing paths are
            named in one message.
    """
    wanted = "paths must be image files and folders of images (str or os.PathLike; ground() takes PIL images)"
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if isinstance(paths, bytes) or not isinstance(paths, Iterable):
        raise TypeError(f"{wanted}, got {type(paths).__name__}: {paths!r:.80}")
    paths = list(paths)
    for i, p in enumerate(paths):
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"{wanted}, got {type(p).__name__} at position {i}: {p!r:.80}")
    out: list[Path] = []
    missing: list[str] = []
    empty: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            entries = sorted(path.iterdir())
            found = [f for f in entries if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                empty.append(str(path))
            elif len(found) < len(entries):
                _say_skipped(path, [f for f in entries if f not in found], len(entries))
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            missing.append(str(path))
    if missing:
        raise ImageLoadError(f"{len(missing)} image path(s) do not exist: " + ", ".join(missing))
    if empty:
        raise ImageLoadError(
            f"folder(s) without image files ({', '.join(IMAGE_SUFFIXES)}): " + ", ".join(empty)
        )
    return out


def _say_skipped(folder: Path, skipped: list[Path], total: int, shown: int = 5) -> None:
    """One line on stderr: what :func:`image_files` left out of ``folder`` (nothing is dropped without a word)."""
    names = [f.name + ("/" if f.is_dir() else "") for f in skipped]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    print(f"skipped {len(names)} of {total} item(s) in {str(folder)!r} that are not image files by their ending "
          f"({', '.join(IMAGE_SUFFIXES)}; sub-folders are not searched): {', '.join(names[:shown])}{more}",
          file=sys.stderr)


def check_images(paths: Sequence[str | os.PathLike]) -> list[tuple[int, int]]:
    """Open every image file in ``paths`` (as :func:`ground_folder` will) and return their ``(width, height)``.

    The sizes are the files' own (turned by their EXIF orientation, as the images are), also for images that
    loading shrinks (:func:`helpers.grounding.images.load_image_and_size`).

    What ``python -m helpers ground`` runs before it loads a model, so that an unreadable file is reported
    at once rather than after the model has loaded and the images before it were grounded.

    Raises:
        ImageLoadError: a file cannot be read as an image; the message gives the first file's reason and names
            every other unreadable file.
    """
    sizes: list[tuple[int, int]] = []
    bad: list[tuple[str, str]] = []
    for path in paths:
        try:
            image, size = load_image_and_size(Path(path))
            image.close()
            sizes.append(size)
        except ImageLoadError as err:
            bad.append((str(path), str(err)))
    if bad:
        others = f" (also unreadable: {', '.join(name for name, _ in bad[1:])})" if len(bad) > 1 else ""
        raise ImageLoadError(f"{len(bad)} of {len(sizes) + len(bad)} image(s) cannot be read: {bad[0][1]}{others}")
    return sizes


def annotated_names(paths: Sequence[Path], out_dir: str | os.PathLike) -> list[str]:
    """The annotated PNG's name in ``out_dir`` for each image: its stem, with ``_2``, ``_3`` … when stems repeat.

    Raises:
        ValueError: one of them would replace one of the images (``out_dir`` is the images' own folder).
    """
    names = _distinct_names(paths)
    clash = [path.name for path in replaced_inputs([Path(out_dir) / name for name in names], paths)]
    if clash:
        raise ValueError(f"{str(out_dir)!r} holds the input image(s) {', '.join(clash[:3])}, which their annotated "
                         "copies would replace: choose another folder for the results")
    return names


def _distinct_names(paths: Sequence[Path]) -> list[str]:
    used: set[str] = set()
    names = []
    for p in paths:
        stem = p.stem or "image"
        name, k = f"{stem}.png", 1
        while name.lower() in used or name == RESULTS_NAME:
            k += 1
            name = f"{stem}_{k}.png"
        used.add(name.lower())
        names.append(name)
    return names


def ground_folder(
    model,
    processor,
    paths: Iterable[str | os.PathLike],
    prompt: str,
    out_dir: str | os.PathLike,
    *,
    batch_size: int | None = None,
    max_new_tokens: int = 128,
    box: Sequence[float] | None = None,
    progress: bool | None = None,
) -> list[dict]:
    """Ground every image with ``prompt``; write ``out_dir/results.jsonl`` and annotated PNGs; return the records.

    Args:
        paths: image files and/or folders of images (see :func:`image_files`; what else a folder holds is
            skipped, and one line on stderr says which).
        prompt: the prompt for every image, e.g. ``"<grounding> An image of"``.
        out_dir: a folder, created if needed; ``results.jsonl`` in it is replaced when the run has finished.
        batch_size: images per ``generate`` call (default: :func:`helpers.grounding.model.default_batch_size`).
            ``ground()`` batches only prompts of the same length (no padding), so in float32 on a
            CPU the results do not depend on it (in half precision on a GPU, rounding may differ).
        max_new_tokens: the most tokens generated per image.
        box: one normalized user box ``(x0, y0, x1, y1)`` for every image; it goes after the prompt's
            first ``</phrase>`` (e.g. with ``helpers.grounding.prompts.GENERATION_PROMPT``).
        progress: a progress bar over the images; default :func:`helpers.grounding.progress.interactive`.

    Each record's ``"file"`` is the path as given (joined with the folder for folder arguments) and
    ``"annotated"`` the PNG's name inside ``out_dir``: the picture as the model saw it, enlarged when small (see
    :func:`annotation_canvas`) and shrunk to at most 4096 pixels a side when large, as
    :func:`helpers.grounding.images.load_image` loads it. The record's ``width``, ``height`` and ``boxes_px`` are
    those of the image file itself (turned by its EXIF orientation), whatever its size. The results are
    written when every image is done (:func:`helpers.course.outputs.write_jsonl`), so a run that fails or is
    stopped leaves an earlier ``results.jsonl`` as it was (the annotated PNGs are written image by image).

    Raises:
        ImageLoadError: a path is missing or not an image (checked before any model call for missing
            paths).
        TypeError: ``paths`` holds something other than paths (a PIL image), or ``batch_size`` or
            ``max_new_tokens`` is not a whole number.
        ValueError: an empty ``prompt`` or one holding image or location tokens, a bad ``box``, a box with a prompt
            that has no ``<phrase>``, a count below 1, an ``out_dir`` that is a file or where nothing can be
            written (:func:`helpers.grounding.checks.out_problem`), or one where an annotated PNG would replace one
            of the input images. All of these are checked before ``out_dir`` is created.
    """

    check_prompt(prompt)
    max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
    files = image_files(paths)
    if not files:
        raise ImageLoadError("no images given")
    bboxes_one = None if box is None else user_box_entry(prompt, box)
    batch_size = default_batch_size(model) if batch_size is None else check_positive_int("batch_size", batch_size)
    problem = out_problem("out_dir", out_dir, folder=True, wanted="a folder for results.jsonl and the annotated PNGs")
    if problem:
        raise ValueError(problem)
    out = Path(out_dir)
    names = annotated_names(files, out)
    out.mkdir(parents=True, exist_ok=True)
    show = interactive() if progress is None else progress
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc="grounding", unit="image")
    records: list[dict] = []
    try:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            loaded = [load_image_and_size(p) for p in chunk]
            images = [image for image, _ in loaded]
            bboxes = [bboxes_one for _ in chunk] if bboxes_one is not None else None
            results = ground(model, processor, images, prompt, bboxes=bboxes, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, progress=False)
            for path, (image, size), name, g in zip(chunk, loaded, names[start:start + batch_size], results):
                draw_entities(annotation_canvas(image), g, user_box=box).save(out / name)
                records.append(grounding_record(str(path), prompt, g, size, annotated=name))
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    write_jsonl(out / RESULTS_NAME, records)  # only now is an earlier results.jsonl replaced
    return records


def read_results(out_dir: str | os.PathLike) -> list[dict]:
    """The records in ``out_dir/results.jsonl`` (or in the ``.jsonl`` file given directly).

    Raises:
        FileNotFoundError: there is no such results file.
        ValueError: the file is not text, a line is not JSON (the message gives its number), or a record is not a
            grounding record (a JSON object with an ``"entities"`` list, as :func:`ground_folder` writes).
    """
    path = Path(out_dir)
    if path.is_dir():
        path = path / RESULTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {str(path)!r}: "
                                "run ground_folder() or `python -m helpers ground` first")
    what = "a results file (JSON Lines: one grounding record per line, as ground_folder() writes)"
    try:
        records = read_jsonl(path)
    except UnicodeDecodeError:
        raise ValueError(f"{str(path)!r} is not {what}: it is not UTF-8 text") from None
    for i, rec in enumerate(records):
        if not (isinstance(rec, dict) and isinstance(rec.get("entities"), list)):
            raise ValueError(f"{str(path)!r} is not {what}: record {i + 1} is not a JSON object with an 'entities' "
                             f"list, got {json.dumps(rec)[:80]}")
    return records


def contact_sheet(images: Sequence, columns: int = 3, cell: tuple[int, int] = (200, 150),
                  background: tuple[int, int, int] = (255, 255, 255)):
    """One picture with ``images`` (PIL images or image files) side by side, each shrunk to fit ``cell``.

    Images keep their aspect ratio and are centred in their cell; rows fill from left to right.

    Raises:
        TypeError: ``images`` is not a list (one image or one file name, say), or ``columns`` is not a whole number.
        ValueError: no images, ``columns`` < 1, or a cell that is not two ints of at least 8 pixels (each
            picture keeps a margin of 2 pixels).
    """
    if isinstance(images, (str, bytes, os.PathLike, Image.Image)) or not isinstance(images, Iterable):
        raise TypeError(f"images must be a list of PIL images or image files; for one, write [image]; got "
                        f"{type(images).__name__}: {images!r:.80}")
    images = list(images)
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    check_positive_int("columns", columns)
    cw, ch = check_image_size(cell, "cell")
    if min(cw, ch) < 8:
        raise ValueError(f"cell must be at least 8 x 8 pixels (each picture keeps a margin of 2), got {cell!r}")
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * cw, rows * ch), background)
    for k, item in enumerate(images):
        picture = load_image(item).copy()
        picture.thumbnail((cw - 4, ch - 4))
        x = (k % columns) * cw + (cw - picture.width) // 2
        y = (k // columns) * ch + (ch - picture.height) // 2
        sheet.paste(picture, (x, y))
    return sheet
