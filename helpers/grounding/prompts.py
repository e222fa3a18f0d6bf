"""Kosmos-2's prompts: the texts that ask the model for a grounded answer.

The real ``microsoft/kosmos-2-patch14-224`` and the bundled model answer the same prompts:

* brief caption ``<grounding> An image of`` → ``<phrase> a red circle</phrase><object>…</object> and …``
* detailed caption ``<grounding> Describe this image in detail:``
* comprehension (phrase → box) ``<grounding><phrase> the red circle</phrase>`` → ``<object>…</object>``
* question about a box of the user's ``<grounding> Question: What is<phrase> this object</phrase>? Answer:``
* referring-expression generation (box → words) ``<grounding><phrase> It</phrase> is`` → `` a red circle.``

The last two carry a user box: the processor writes it as location tokens after the first ``</phrase>``.
Importing this module loads nothing heavy (the command line's ``--help`` reads the default prompt here).
"""

from __future__ import annotations

import re
from typing import Sequence

from helpers.grounding.boxes import Box, check_with_area
from helpers.grounding.tokens import object_tokens

#: What the processor counts as one phrase of a prompt (it takes one user-box entry for each).
PHRASE_PAIR = re.compile(r"<phrase>.+?</phrase>")

CAPTION_PROMPT = "<grounding> An image of"
DETAIL_PROMPT = "<grounding> Describe this image in detail:"
GENERATION_PROMPT = "<grounding><phrase> It</phrase> is"


def comprehension_prompt(phrase: str) -> str:
    """The prompt that asks where ``phrase`` is: the model answers with ``<object>…</object>``."""
    return f"<grounding><phrase> {phrase}</phrase>"


def qa_prompt(noun: str = "object") -> str:
    """The grounded-question prompt (the user box is inserted after ``</phrase>`` by the processor)."""
    return f"<grounding> Question: What is<phrase> this {noun}</phrase>? Answer:"


def with_box(prompt: str, box: Sequence[float]) -> str:
    """``prompt`` with ``box`` written into it as location tokens after its first ``</phrase>``, as the processor
    writes a user box (``…<phrase> this object</phrase><object><patch_index_…>…</object>? Answer:``): how a
    training text carries the box its question is about.

    Raises:
        ValueError: the prompt has no phrase to attach the box to (as :func:`user_box_entry`), or the box is not
            a normalized box with an area.
    """
    _check_has_phrase(prompt)
    return prompt.replace("</phrase>", "</phrase>" + object_tokens([box]), 1)


def check_prompt(prompt: object, what: str = "prompt") -> str:
    """Return ``prompt`` when it is a non-empty str; otherwise raise ``ValueError`` saying what was expected."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{what} must be a non-empty str, e.g. {CAPTION_PROMPT!r}, got {prompt!r}")
    return prompt


def count_phrases(prompt: str) -> int:
    """How many ``<phrase>…</phrase>`` pairs ``prompt`` has: the processor takes one user-box entry per pair."""
    return len(PHRASE_PAIR.findall(prompt))


def user_box_entry(prompt: str, box: Sequence[float]) -> list[Box | None]:
    """The processor's ``bboxes`` entry for one image whose ``prompt`` carries one user ``box``.

    The box goes to the prompt's first ``<phrase>…</phrase>`` (``<grounding><phrase> It</phrase> is``
    asks about the box); any later phrase gets no box.

    Raises:
        ValueError: the box is not a normalized box with an area, or the prompt has no phrase to attach it to.
    """
    box = check_with_area(box)
    return [box] + [None] * (_check_has_phrase(prompt) - 1)


def _check_has_phrase(prompt: str) -> int:
    """How many phrases ``prompt`` has (:func:`count_phrases`); ``ValueError`` when none: a box has nothing to
    attach to."""
    phrases = count_phrases(prompt)
    if phrases == 0:
        raise ValueError("a box needs a <phrase>…</phrase> in the prompt to attach to, e.g. "
                         f"'<grounding><phrase> It</phrase> is'; got {prompt!r}")
    return phrases
