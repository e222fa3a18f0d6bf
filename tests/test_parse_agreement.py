"""parse_generation agrees with the transformers Kosmos-2 processor on well-formed grounded text.

The generated strings look like real decoded outputs: an optional ``<image>…</image>`` prefix, ``<grounding>``,
text around phrases (with the leading space the model writes, `` a snowman``), phrases with one or several
boxes, in-range location tokens, boxes that are not inverted. Phrase-less objects are left out on purpose:
there the two differ by design (see ``parse_generation``'s docstring and ``test_tokens.py``).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers.models.kosmos2.processing_kosmos2 import clean_text_and_extract_entities_with_bboxes

from helpers.grounding.tokens import DELIMITER, parse_generation, strip_image_prefix

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZéüßアニメ雪"
_PUNCT = ".,;:!?'\"()-–“”’>/"
_words = st.text(alphabet=_LETTERS, min_size=1, max_size=8)


@st.composite
def _text(draw: st.DrawFn) -> str:
    """Text between phrases: words, spaces, punctuation, sometimes a newline or a tab; never '<'."""
    parts = draw(st.lists(st.one_of(_words.map(lambda w: " " + w), _words, st.sampled_from(list(_PUNCT)),
                                    st.sampled_from([" ", "  ", "\n", "\t", " \n "])), max_size=6))
    return "".join(parts)


@st.composite
def _phrase(draw: st.DrawFn) -> str:
    """Phrase text as the model writes it (`` a snowman``), sometimes without the space or with more."""
    words = draw(st.lists(_words, min_size=1, max_size=4))
    inner = " ".join(words)
    if draw(st.booleans()):
        inner += draw(st.sampled_from(["'s", "-like", ",", "!"]))
    lead = draw(st.sampled_from([" ", " ", " ", "", "  ", "\n"]))
    trail = draw(st.sampled_from(["", "", "", " ", "\t"]))
    return lead + inner + trail


@st.composite
def _box_tokens(draw: st.DrawFn) -> str:
    """Two in-range location tokens whose box is not inverted (same row or column allowed)."""
    col0 = draw(st.integers(0, 31))
    col1 = draw(st.integers(col0, 31))
    row0 = draw(st.integers(0, 31))
    row1 = draw(st.integers(row0, 31))
    return f"<patch_index_{row0 * 32 + col0:04d}><patch_index_{row1 * 32 + col1:04d}>"


@st.composite
def _group(draw: st.DrawFn) -> str:
    boxes = draw(st.lists(_box_tokens(), min_size=1, max_size=3))
    return f"<phrase>{draw(_phrase())}</phrase><object>{DELIMITER.join(boxes)}</object>"


@st.composite
def grounded_generations(draw: st.DrawFn) -> str:
    """A well-formed decoded Kosmos-2 generation."""
    out = ""
    if draw(st.booleans()):
        junk = draw(st.text(alphabet=_LETTERS + _PUNCT + " <>", max_size=40)).replace("</image>", "")
        out += "<image>" + junk + "</image>"
    if draw(st.booleans()):
        out += "<s>"
    if draw(st.booleans()):
        out += "<grounding>"
    out += draw(_text())
    for _ in range(draw(st.integers(1, 4))):
        out += draw(_group()) + draw(_text())
    if draw(st.booleans()):
        out += "</s>"
    return out


def _module_function(text: str):
    return clean_text_and_extract_entities_with_bboxes(strip_image_prefix(text))


@settings(max_examples=1000, deadline=None)
@given(grounded_generations())
def test_same_caption_and_entities_as_the_processor_function(text: str) -> None:
    caption, entities = _module_function(text)
    g = parse_generation(text)
    assert g.problems == []
    assert g.caption == caption
    assert g.entity_tuples() == entities
    assert len(g.entities) >= 1
    assert g.raw == text


@pytest.fixture(scope="module")
def processor():
    from helpers.world.language import build_processor

    return build_processor(64)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=grounded_generations())
def test_same_result_as_post_process_generation(processor, text: str) -> None:
    caption, entities = processor.post_process_generation(text)
    g = parse_generation(text)
    assert (g.caption, g.entity_tuples()) == (caption, entities)
    assert g.problems == []


def test_the_module_function_is_what_post_process_generation_uses(processor) -> None:
    text = ("<image>. the, to</image><grounding> An image of<phrase> two snowmen</phrase><object>"
            "<patch_index_0044><patch_index_0863></delimiter_of_multi_objects/><patch_index_0101><patch_index_0400>"
            "</object> by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>.</s>")
    expected = processor.post_process_generation(text)
    assert _module_function(text) == expected
    g = parse_generation(text)
    assert (g.caption, g.entity_tuples()) == expected
    assert g.entities[0].phrase == "two snowmen" and len(g.entities[0].boxes) == 2
