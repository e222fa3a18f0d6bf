"""helpers.grounding.prompts: what a prompt may hold, and the messages for a box that has no phrase to go to."""

from __future__ import annotations

import pytest

from helpers.course.playground import Playground
from helpers.grounding.model import ground
from helpers.grounding.prompts import (
    CAPTION_PROMPT,
    DETAIL_PROMPT,
    GENERATION_PROMPT,
    check_prompt,
    comprehension_prompt,
    qa_prompt,
    user_box_entry,
    with_box,
)
from helpers.grounding.tokens import object_tokens
from helpers.world.scenes import sample_scenes

BOX = (0.1, 0.2, 0.5, 0.6)


REFUSED = [
    ("<image></image><grounding> An image of", "<image>"),
    ("<grounding> An image of</image>", "</image>"),
    ("<grounding><phrase> It</phrase><patch_index_0044><patch_index_0863> is", "<patch_index_0044>"),
    ("<grounding> An image of<patch_index_9999>", "<patch_index_9999>"),
    (with_box(GENERATION_PROMPT, BOX), "<object>"),  # a training text, with the box as location tokens
    ("<grounding> two circles</delimiter_of_multi_objects/> here", "</delimiter_of_multi_objects/>"),
]


def test_a_prompt_with_the_image_or_location_tokens_is_refused() -> None:
    """They used to pass, and the parser of the answer then reported the prompt's own tokens as faults of the
    model's output. The course's own prompts and plain text still pass."""
    for prompt in (CAPTION_PROMPT, DETAIL_PROMPT, GENERATION_PROMPT, comprehension_prompt("the red circle"),
                   qa_prompt("character"), "a plain text", "if x < y and y > z"):
        assert check_prompt(prompt) == prompt
    for prompt, token in REFUSED:
        with pytest.raises(ValueError) as refused:
            check_prompt(prompt)
        message = str(refused.value)
        assert message.startswith(f"prompt must not contain {token!r}: a prompt holds text, <grounding> and "
                                  "<phrase>…</phrase>;")
        assert "user box (bboxes= of ground(), box=" in message and message.endswith(f"got {prompt!r}")


def test_ground_and_the_playground_refuse_them_too(tiny_model) -> None:
    model, processor = tiny_model
    image = sample_scenes(1, seed=1)[0].image
    prompt = "<image> An image of"
    with pytest.raises(ValueError, match="prompt 0 must not contain '<image>'"):
        ground(model, processor, image, prompt)
    playground = Playground(model, processor, images={"scene": image}, max_new_tokens=4)
    with pytest.raises(ValueError, match="prompt must not contain '<image>'"):
        playground.run(prompt=prompt)
    playground.prompt.value = prompt
    playground.on_click()
    assert "⚠ prompt must not contain &#x27;&lt;image&gt;&#x27;" in playground.caption.value


def test_a_box_with_an_empty_phrase_is_told_the_phrase_needs_text() -> None:
    """The message said the prompt "needs a <phrase>…</phrase>", which it has: an empty one."""
    empty = "<grounding><phrase></phrase> is"
    for attach in (user_box_entry, with_box):
        with pytest.raises(ValueError) as refused:
            attach(empty, BOX)
        assert str(refused.value) == ("a box attaches to a <phrase>…</phrase> with text in it, and the prompt's "
                                      "phrase is empty: write a word between <phrase> and </phrase>, e.g. "
                                      f"'<grounding><phrase> It</phrase> is'; got {empty!r}")
    with pytest.raises(ValueError, match=r"a box needs a <phrase>…</phrase> in the prompt to attach to"):
        user_box_entry(CAPTION_PROMPT, BOX)


def test_with_box_writes_the_box_after_the_first_phrase_only() -> None:
    """The user box belongs to the first phrase (as the processor writes it); a later phrase gets no box."""
    prompt = "<grounding><phrase> It</phrase> is next to<phrase> a square</phrase>"
    text = with_box(prompt, BOX)
    assert text.count("<object>") == 1
    assert text == "<grounding><phrase> It</phrase>" + object_tokens([BOX]) + " is next to<phrase> a square</phrase>"


@pytest.mark.parametrize("phrase", ["", " ", "\n\t"])
def test_a_comprehension_prompt_needs_a_phrase_with_a_word(phrase) -> None:
    """``comprehension_prompt("")`` made ``<grounding><phrase> </phrase>``, which asks about nothing; the callers
    that refused it did so each on their own (refcoco, the find_boxes solution)."""
    with pytest.raises(ValueError, match=r"^phrase must be a non-empty str such as 'the red circle', got "):
        comprehension_prompt(phrase)
    assert comprehension_prompt("the red circle") == "<grounding><phrase> the red circle</phrase>"


@pytest.mark.parametrize("make, name, example", [(comprehension_prompt, "phrase", "the red circle"),
                                                 (qa_prompt, "noun", "object")])
def test_the_phrase_of_a_prompt_is_a_str_of_words_without_tags(make, name, example) -> None:
    """Both prompt helpers built a prompt from anything: ``qa_prompt(None)`` asked about "this None",
    ``comprehension_prompt(5)`` about "5", and a phrase holding ``<phrase>`` nested the tags. A tag of the prompt
    itself or of the image and boxes is refused as :func:`check_prompt` refuses it in a prompt."""
    for bad in (None, 5, b"dog", ["dog"]):
        with pytest.raises(TypeError, match=rf"^{name} must be a str such as '{example}', got {type(bad).__name__}: "):
            make(bad)
    for blank in ("", "  "):
        with pytest.raises(ValueError, match=rf"^{name} must be a non-empty str such as '{example}', got "):
            make(blank)
    tagged_phrases = [("<phrase>x</phrase>", "<phrase>"), ("a </phrase> b", "</phrase>"),
                      ("<grounding> dog", "<grounding>"), ("<image>", "<image>"), ("dog</image>", "</image>"),
                      ("a <patch_index_0044> b", "<patch_index_0044>"), ("<object>", "<object>"),
                      ("two</delimiter_of_multi_objects/>", "</delimiter_of_multi_objects/>")]
    for tagged, tag in tagged_phrases:
        with pytest.raises(ValueError) as refused:
            make(tagged)
        assert str(refused.value) == (f"{name} must be plain words such as '{example}', without Kosmos-2's tags: the "
                                      "prompt puts <grounding> and <phrase>…</phrase> around it itself; got "
                                      f"{tag!r} in {tagged!r}")
    # plain words pass as before, "<" and ">" as text included
    assert comprehension_prompt("x < y") == "<grounding><phrase> x < y</phrase>"
    assert qa_prompt() == qa_prompt("object") == "<grounding> Question: What is<phrase> this object</phrase>? Answer:"
    assert qa_prompt("character") == "<grounding> Question: What is<phrase> this character</phrase>? Answer:"
