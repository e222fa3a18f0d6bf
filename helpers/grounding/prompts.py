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

CAPTION_PROMPT = "<grounding> An image of"
DETAIL_PROMPT = "<grounding> Describe this image in detail:"
GENERATION_PROMPT = "<grounding><phrase> It</phrase> is"


def comprehension_prompt(phrase: str) -> str:
    """The prompt that asks where ``phrase`` is: the model answers with ``<object>…</object>``."""
    return f"<grounding><phrase> {phrase}</phrase>"


def qa_prompt(noun: str = "object") -> str:
    """The grounded-question prompt (the user box is inserted after ``</phrase>`` by the processor)."""
    return f"<grounding> Question: What is<phrase> this {noun}</phrase>? Answer:"
