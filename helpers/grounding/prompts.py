"""Kosmos-2's prompts: the texts that ask the model for a grounded answer.

The real ``microsoft/kosmos-2-patch14-224`` and the bundled model answer the same prompts:

* brief caption ``<grounding> An image of`` → ``<phrase> a red circle</phrase><object>…</object> and …``
* detailed caption ``<grounding> Describe this image in detail:``
* comprehension (phrase → box) ``<grounding><phrase> the red circle</phrase>`` → ``<object>…</object>``
* question about a box of the user's ``<grounding> Question: What is<phrase> this object</phrase>? Answer:``
* referring-expression generation (box → words) ``<grounding><phrase> It</phrase> is`` → `` a red circle.``

The last two carry a user box: the processor writes it as location tokens after the first ``</phrase>``.
It also writes the answers' grounded text (:func:`grounded`, :func:`join_phrases`, :func:`qa_answer`) and puts a
box into a prompt's text (:func:`with_box`), as the world's training texts and fine-tuning both do.
Importing this module loads nothing heavy (the command line's ``--help`` reads the default prompt here).
"""

from __future__ import annotations

import re
from typing import Sequence

from helpers.grounding.boxes import Box, check_with_area
from helpers.grounding.tokens import object_tokens

#: What the processor counts as one phrase of a prompt (it takes one user-box entry for each).
PHRASE_PAIR = re.compile(r"<phrase>.+?</phrase>")
#: Tokens a prompt must not contain (:func:`check_prompt`): the image's, and those of boxes.
RESERVED_TOKEN = re.compile(r"</?image>|</?object>|</delimiter_of_multi_objects/>|<patch_index_\w*>?")
#: Tokens a phrase put into a prompt must not contain (:func:`check_phrase`): those of :data:`RESERVED_TOKEN`,
#: and those the prompt puts around the phrase.
PHRASE_TAG = re.compile(rf"{RESERVED_TOKEN.pattern}|</?phrase>|</?grounding>")

#: The brief grounded caption, the article's first prompt.
CAPTION_PROMPT = "<grounding> An image of"
#: The detailed grounded caption.
DETAIL_PROMPT = "<grounding> Describe this image in detail:"
#: Referring-expression generation: given ``bboxes=[box]``, the processor puts the box's location tokens after
#: "It", and the model says what is there.
GENERATION_PROMPT = "<grounding><phrase> It</phrase> is"


def check_phrase(phrase: object, what: str = "phrase", example: str = "the red circle") -> str:
    """Return ``phrase`` when it is a str with a word in it and without Kosmos-2's tags (:data:`PHRASE_TAG`):
    text that a prompt can put between ``<phrase>`` and ``</phrase>``. ``what`` names it in the messages and
    ``example`` shows one.

    Raises:
        TypeError: ``phrase`` is not a str (``None``, a number …).
        ValueError: it is empty or blank (``""`` would ask about ``<phrase> </phrase>``), or holds a tag such as
            ``<phrase>``, ``<image>`` or ``<patch_index_0044>``.
    """
    if not isinstance(phrase, str):
        raise TypeError(f"{what} must be a str such as {example!r}, got {type(phrase).__name__}: {phrase!r:.80}")
    if not phrase.strip():
        raise ValueError(f"{what} must be a non-empty str such as {example!r}, got {phrase!r}")
    tag = PHRASE_TAG.search(phrase)
    if tag:
        raise ValueError(f"{what} must be plain words such as {example!r}, without Kosmos-2's tags: the prompt "
                         "puts <grounding> and <phrase>…</phrase> around it itself; got "
                         f"{tag.group()!r} in {phrase!r:.80}")
    return phrase


def comprehension_prompt(phrase: str) -> str:
    """The prompt that asks where ``phrase`` is: the model answers with ``<object>…</object>``.

    Raises:
        TypeError: ``phrase`` is not a str.
        ValueError: it has no word in it, or holds a tag (:func:`check_phrase`).
    """
    return f"<grounding><phrase> {check_phrase(phrase)}</phrase>"


def qa_prompt(noun: str = "object") -> str:
    """The grounded-question prompt (the user box is inserted after ``</phrase>`` by the processor).

    Raises:
        TypeError: ``noun`` is not a str.
        ValueError: it has no word in it, or holds a tag (:func:`check_phrase`).
    """
    return f"<grounding> Question: What is<phrase> this {check_phrase(noun, 'noun', 'object')}</phrase>? Answer:"


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
    """Return ``prompt`` when it is a non-empty str without the tokens the processor and the model write
    themselves; otherwise raise ``ValueError`` saying what was expected.

    A prompt holds text, ``<grounding>`` and ``<phrase>…</phrase>``. The image (``<image>…</image>``) and the
    boxes (``<object><patch_index_NNNN>…</object>``) are not typed into it: the processor adds the image, a user
    box goes in as ``bboxes`` (the processor writes its location tokens), and the parser of the answer would
    report the prompt's own tokens as faults of the model's output.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{what} must be a non-empty str, e.g. {CAPTION_PROMPT!r}, got {prompt!r}")
    written = RESERVED_TOKEN.search(prompt)
    if written:
        raise ValueError(f"{what} must not contain {written.group()!r}: a prompt holds text, <grounding> and "
                         "<phrase>…</phrase>; the processor adds the image (<image>…</image>) itself, and a box goes "
                         "in as a user box (bboxes= of ground(), box= of the playground and the batch tools), which "
                         f"the processor writes as <object><patch_index_NNNN>… tokens; got {prompt!r}")
    return prompt


def phrase_count(prompt: str) -> int:
    """How many ``<phrase>…</phrase>`` pairs ``prompt`` has: the processor takes one user-box entry per pair."""
    return len(PHRASE_PAIR.findall(prompt))


def user_box_entry(prompt: str, box: Sequence[float], image_size: Sequence[int] | None = None) -> list[Box | None]:
    """The processor's ``bboxes`` entry for one image whose ``prompt`` carries one user ``box``.

    The box goes to the prompt's first ``<phrase>…</phrase>`` (``<grounding><phrase> It</phrase> is``
    asks about the box); any later phrase gets no box. ``image_size``, the image's ``(width, height)`` when
    known, makes the message for a pixel box say what to divide by
    (:func:`helpers.grounding.boxes.check_normalized`).

    Raises:
        ValueError: the box is not a normalized box with an area, or the prompt has no phrase to attach it to.
    """
    box = check_with_area(box, image_size)
    return [box] + [None] * (_check_has_phrase(prompt) - 1)


def _check_has_phrase(prompt: str) -> int:
    """How many phrases ``prompt`` has (:func:`phrase_count`); ``ValueError`` when none: a box has nothing to
    attach to (an empty ``<phrase></phrase>`` is no phrase to the processor)."""
    phrases = phrase_count(prompt)
    if phrases == 0 and "<phrase></phrase>" in prompt:
        raise ValueError("a box attaches to a <phrase>…</phrase> with text in it, and the prompt's phrase is empty: "
                         "write a word between <phrase> and </phrase>, e.g. "
                         f"'<grounding><phrase> It</phrase> is'; got {prompt!r}")
    if phrases == 0:
        raise ValueError("a box needs a <phrase>…</phrase> in the prompt to attach to, e.g. "
                         f"'<grounding><phrase> It</phrase> is'; got {prompt!r}")
    return phrases


def grounded(phrase: str, boxes: Sequence[Sequence[float]]) -> str:
    """A phrase with its boxes in the grounding format, as a caption writes a group:
    ``<phrase> two cats</phrase><object>…</object>`` (the training texts of
    :func:`helpers.grounding.finetune.texts_for` and of :mod:`helpers.world.language`)."""
    return f"<phrase> {phrase}</phrase>" + object_tokens(boxes)


def join_phrases(parts: list[str]) -> str:
    """Grounded phrases as a caption lists them: ``A``, ``A and B``, ``A, B and C`` (each part begins with its
    ``<phrase>``, whose space follows the comma or the ``and``)."""
    if len(parts) == 1:
        return parts[0]
    return ",".join(parts[:-1]) + " and" + parts[-1]


def qa_answer(name: str) -> str:
    """The answer to a question about a boxed object named ``name``: `` It is a cat.``"""
    return f" It is {name}."
