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

import numpy as np
from PIL import Image

from helpers.course.batch import read_results
from helpers.course.playground import looks_in_world
from helpers.grounding.boxes import Box
from helpers.grounding.checks import is_number
from helpers.grounding.evaluation import BENCHMARK_MAX_NEW_TOKENS, normalize_phrase, phrase_boxes
from helpers.grounding.model import ground
from helpers.grounding.prompts import comprehension_prompt

__all__ = ["add_noise", "count_phrases", "find_boxes", "first_out_of_world", "miss_reasons"]


# ------------------------------------------------------------------------------------------------ 07


def find_boxes(model, processor, image, phrase: str,
               max_new_tokens: int = BENCHMARK_MAX_NEW_TOKENS) -> list[Box]:
    """Every box the model gives for ``phrase`` in ``image`` (comprehension); ``[]`` when it gives none.

    The prompt is ``<grounding><phrase> {phrase}</phrase>``; the answer's ``<object>`` may hold several
    boxes (joined by ``</delimiter_of_multi_objects/>``) when the phrase names several things; the default
    ``max_new_tokens``, 64 as in notebook 09's benchmarks, leaves room for 20 (three tokens a box). Boxes the
    answer gives for another phrase do not count (``phrase_boxes``, as notebook 09 scores them). The phrase is
    compared as the tokenizer spells it, as the answer is: a tokenizer without "é" reads "the café" as
    "the caf", and the answer names that.

    Raises:
        TypeError: ``phrase`` is not a str.
        ValueError: ``phrase`` is empty or the tokenizer keeps none of its text, or the answer is not well
            formed (``Grounding.problems``, e.g. cut off after ``max_new_tokens`` in the middle of a box): its
            boxes cannot be read, and ``[]`` would claim the model gave none.
    """
    if isinstance(phrase, str):
        phrase = phrase.strip()
    prompt = comprehension_prompt(phrase)  # refuses a phrase that is not a str or has no word
    tokenizer = processor.tokenizer
    spelled = tokenizer.decode(tokenizer(" " + phrase, add_special_tokens=False).input_ids,
                               skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
    if not spelled:
        raise ValueError(f"the tokenizer keeps nothing of the phrase {phrase!r} (no token of its vocabulary "
                         "spells it), so the model cannot read it: use words the model knows")
    (answer,) = ground(model, processor, [image], prompt, max_new_tokens=max_new_tokens)
    if answer.problems:
        raise ValueError(f"the answer for {phrase!r} is not well formed, so its boxes cannot be read: "
                         f"{'; '.join(answer.problems)} (cut off? give a larger max_new_tokens than "
                         f"{max_new_tokens})")
    return phrase_boxes(answer, spelled)


# ------------------------------------------------------------------------------------------------ 08


def count_phrases(results: str | os.PathLike | Iterable[dict]) -> Counter:
    """How often each grounded phrase occurs across batch results, compared in lower case and without a
    leading article (``normalize_phrase``: "The Red circle" and "red circle" are one phrase).

    ``results`` is a folder or ``results.jsonl`` file written by :func:`helpers.course.batch.ground_folder`, or
    its records. A phrase with two boxes ("two red circles") counts once.
    """
    records = read_results(results) if isinstance(results, (str, os.PathLike)) else list(results)
    counts: Counter = Counter()
    for rec in records:
        if not isinstance(rec, dict) or "entities" not in rec:
            raise ValueError(f"each record needs an 'entities' list (a line of results.jsonl), got {rec!r:.80}")
        counts.update(normalize_phrase(e["phrase"]) for e in rec["entities"])
    return counts


# ------------------------------------------------------------------------------------------------ 09


def miss_reasons(rows: Iterable[dict], threshold: float = 0.5, near: float = 0.1) -> Counter:
    """Sort comprehension results into ``"hit"``, ``"right object, not first"``, ``"loose box"``,
    ``"wrong place"`` and ``"no box"``.

    ``rows`` are :attr:`helpers.grounding.refcoco.ComprehensionResult.rows` (each with ``"predicted"``,
    ``"iou"`` and ``"best_iou"``; a row without ``"best_iou"`` is judged by its first box alone). The first
    box decides, as accuracy@1 does: IoU ≥ ``threshold`` is a hit. When it misses but another box of the
    answer hits (``best_iou`` ≥ ``threshold``), the model found the right object and put it second: "right
    object, not first". Otherwise ``near`` ≤ IoU < ``threshold`` is a loose box (the right thing, badly
    framed) and IoU < ``near`` the wrong place. "no box" means no box for the asked phrase: boxes the answer
    gives only under another phrase do not count, as in accuracy@1, so such a row is "no box" too.
    """
    if not 0.0 <= near <= threshold <= 1.0:
        raise ValueError(f"need 0 <= near <= threshold <= 1, got near={near!r}, threshold={threshold!r}")
    reasons: Counter = Counter()
    for row in rows:
        if row["predicted"] is None:
            reasons["no box"] += 1
        elif row["iou"] >= threshold:
            reasons["hit"] += 1
        elif row.get("best_iou", row["iou"]) >= threshold:
            reasons["right object, not first"] += 1
        elif row["iou"] >= near:
            reasons["loose box"] += 1
        else:
            reasons["wrong place"] += 1
    return reasons


# ------------------------------------------------------------------------------------------------ 10


def add_noise(image, sigma: float, seed: int = 0):
    """A copy of ``image`` with Gaussian noise of standard deviation ``sigma`` (0–255 scale) on every pixel.

    ``sigma`` is any real number ≥ 0, numpy's too (``np.arange(0, 60, 5)`` gives ``np.int64``).
    """
    if not is_number(sigma):
        raise ValueError("sigma must be a finite number >= 0 (the noise's standard deviation on the 0–255 "
                         f"scale), got {sigma!r}")
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    noisy = pixels + np.random.default_rng(seed).normal(0.0, float(sigma), pixels.shape)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def first_out_of_world(image, sigmas: Sequence[float], seed: int = 0) -> float | None:
    """The smallest noise level in ``sigmas`` at which :func:`helpers.course.playground.looks_in_world` says no.

    Returns ``None`` when the image still looks in-world at every level tried. The noise is random, so the
    level depends on ``seed``: try a few.
    """
    for sigma in sorted(sigmas):
        if not looks_in_world(add_noise(image, sigma, seed)):
            return sigma
    return None
