"""Worked solutions to the "write a small function" exercises of notebooks 07–10.

The solution cell of each notebook's last exercise (collapsed in the notebook) prints the function's
source from here and runs it, so the solutions are executed with the notebooks and never rot. Read the
exercise first; these are one way to do it.

==========  ============================================  ======================================
Notebook    Exercise                                      Function
==========  ============================================  ======================================
07          every box the model gives for a phrase        :func:`find_boxes`
08          how often each phrase occurs in a batch       :func:`count_phrases`
09          why the misses missed                         :func:`miss_reasons`
10          how much noise the in-world check tolerates   :func:`add_noise`, :func:`first_out_of_world`
==========  ============================================  ======================================
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Iterable, Sequence

from helpers.grounding.boxes import Box

__all__ = ["add_noise", "count_phrases", "find_boxes", "first_out_of_world", "miss_reasons"]


# ------------------------------------------------------------------------------------------------ 07


def find_boxes(model, processor, image, phrase: str) -> list[Box]:
    """Every box the model gives for ``phrase`` in ``image`` (comprehension); ``[]`` when it gives none.

    The prompt is ``<grounding><phrase> {phrase}</phrase>``; the answer's ``<object>`` may hold several
    boxes (joined by ``</delimiter_of_multi_objects/>``) when the phrase names several things. Boxes the
    answer gives for another phrase do not count (``phrase_boxes``, as notebook 09 scores them).

    Raises:
        ValueError: ``phrase`` is empty.
    """
    from helpers.grounding.evaluation import phrase_boxes
    from helpers.grounding.model import ground
    from helpers.grounding.prompts import comprehension_prompt

    if not isinstance(phrase, str) or not phrase.strip():
        raise ValueError(f"phrase must be a non-empty str such as 'the red circle', got {phrase!r}")
    (answer,) = ground(model, processor, [image], comprehension_prompt(phrase.strip()), max_new_tokens=24)
    return phrase_boxes(answer, phrase)


# ------------------------------------------------------------------------------------------------ 08


def count_phrases(results: str | os.PathLike | Iterable[dict]) -> Counter:
    """How often each grounded phrase occurs across batch results, compared without a leading article.

    ``results`` is a folder or ``results.jsonl`` file written by :func:`helpers.course.batch.ground_folder`, or
    its records. A phrase with two boxes ("two red circles") counts once.
    """
    from helpers.course.batch import read_results
    from helpers.grounding.evaluation import normalize_phrase

    records = read_results(results) if isinstance(results, (str, os.PathLike)) else list(results)
    counts: Counter = Counter()
    for rec in records:
        if not isinstance(rec, dict) or "entities" not in rec:
            raise ValueError(f"each record needs an 'entities' list (a line of results.jsonl), got {rec!r:.80}")
        counts.update(normalize_phrase(e["phrase"]) for e in rec["entities"])
    return counts


# ------------------------------------------------------------------------------------------------ 09


def miss_reasons(rows: Iterable[dict], threshold: float = 0.5, near: float = 0.1) -> Counter:
    """Sort comprehension results into ``"hit"``, ``"loose box"``, ``"wrong place"`` and ``"no box"``.

    ``rows`` are :attr:`helpers.grounding.refcoco.ComprehensionResult.rows` (each with ``"predicted"`` and ``"iou"``).
    A box with IoU ≥ ``threshold`` is a hit; ``near`` ≤ IoU < ``threshold`` is a loose box (the right
    thing, badly framed); IoU < ``near`` is the wrong place.
    """
    if not 0.0 <= near <= threshold <= 1.0:
        raise ValueError(f"need 0 <= near <= threshold <= 1, got near={near!r}, threshold={threshold!r}")
    reasons: Counter = Counter()
    for row in rows:
        if row["predicted"] is None:
            reasons["no box"] += 1
        elif row["iou"] >= threshold:
            reasons["hit"] += 1
        elif row["iou"] >= near:
            reasons["loose box"] += 1
        else:
            reasons["wrong place"] += 1
    return reasons


# ------------------------------------------------------------------------------------------------ 10


def add_noise(image, sigma: float, seed: int = 0):
    """A copy of ``image`` with Gaussian noise of standard deviation ``sigma`` (0–255 scale) on every pixel."""
    import numpy as np
    from PIL import Image

    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma < float("inf"):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    noisy = pixels + np.random.default_rng(seed).normal(0.0, sigma, pixels.shape)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def first_out_of_world(image, sigmas: Sequence[float], seed: int = 0) -> float | None:
    """The smallest noise level in ``sigmas`` at which :func:`helpers.course.playground.looks_in_world` says no.

    Returns ``None`` when the image still looks in-world at every level tried.
    """
    from helpers.course.playground import looks_in_world

    for sigma in sorted(sigmas):
        if not looks_in_world(add_noise(image, sigma, seed)):
            return sigma
    return None
