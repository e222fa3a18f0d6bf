"""parse_generation on arbitrary strings over the grounding alphabet.

Tags, location tokens (in range, out of range, malformed, cut off), words, spaces and punctuation in any
order: parse_generation never raises, never returns an invalid box or a span that does not point at its
phrase, always gives the processor's caption, and gives exactly the processor's entities wherever the
processor's own result is well formed. 2 x 5 000 strings.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.kosmos2.processing_kosmos2 import clean_text_and_extract_entities_with_bboxes

from helpers.grounding.tokens import DELIMITER, parse_generation, strip_image_prefix

_TAGS = ["<phrase>", "</phrase>", "<object>", "</object>", DELIMITER, "<grounding>", "<image>", "</image>",
         "<s>", "</s>", "<pad>", "</line>"]
_MALFORMED = ["<patch_index_12a>", "<patch_index_>", "<patch_index_-1>", "<patch_index_0044", "patch_index_0044>",
              "<patch_index_ 44>", "<patch_index_0044 >", "<patch_index_\u0660\u0660\u0664\u0664>", "<patch_index_7>",
              "<patch_index_00044>"]
_BITS = ["<", ">", "<>", "<phr", "</obj", "<foo>", "< ", "<\n", "\n", "\t", "  "]
_WORDS = [" a", " snowman", " fire", "fire", " the", " x", "é", " 雪だるま", " by", " and"]
_PUNCT = [".", ",", "?", "!", "'", ":", "-"]

_PHRASES = [" a", " a snowman", " the fire", "fire", " 雪だるま", " a, b", "  two  ", " it's", " x\n y", "", " "]


def _token(i: int) -> str:
    return f"<patch_index_{i:04d}>"


def _sound_pair(n: int) -> str:
    """Two in-range tokens (from one 20-bit number) with the corners put in order: never inverted."""
    a, b = n >> 10, n & 1023
    (c0, c1), (r0, r1) = sorted((a % 32, b % 32)), sorted((a // 32, b // 32))
    return _token(r0 * 32 + c0) + _token(r1 * 32 + c1)


def _any_pair(n: int) -> str:
    """Two in-range tokens as they come: often an inverted box."""
    return _token(n >> 10) + _token(n & 1023)


_in_range = st.integers(0, 1023).map(_token)
_out_of_range = st.integers(1024, 99999).map(_token)
_ARABIC_INDIC = str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669")


def _respell(pair: str, other_digits: bool) -> str:
    """The same indices as the processor also reads them: in other decimal digits, or without zero padding."""
    if other_digits:
        return pair.translate(_ARABIC_INDIC)
    return re.sub(r"_(\d+)>", lambda m: f"_{int(m.group(1))}>", pair)


_sound = st.one_of(
    st.integers(0, 2**20 - 1).map(_sound_pair),
    st.integers(0, 2**20 - 1).map(_sound_pair),
    st.integers(0, 2**20 - 1).map(_sound_pair),
    st.tuples(st.integers(0, 2**20 - 1), st.booleans()).map(lambda t: _respell(_sound_pair(t[0]), t[1])),
)
_box = st.one_of(
    _sound, _sound, st.integers(0, 2**20 - 1).map(_any_pair), st.tuples(_in_range, _out_of_range).map("".join)
)


def _objects(box: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``<object>…</object>`` with one or two boxes."""
    inner = st.one_of(box, box, st.tuples(box, box).map(DELIMITER.join))
    return inner.map(lambda text: f"<object>{text}</object>")


def _groups(phrases: list[str], box: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(phrases), _objects(box)).map(lambda p: f"<phrase>{p[0]}</phrase>{p[1]}")


_static = st.sampled_from(_TAGS + _MALFORMED + _BITS + _WORDS + _PUNCT)
_text = st.sampled_from(_WORDS + _PUNCT + [" ", "\n"])
_sound_group = _groups([p for p in _PHRASES if p.strip()], _sound)
_any_group = _groups(_PHRASES, _box)
# sound groups among junk (stray and malformed tags, cut-off tokens, text): where the processor is mostly right
_mostly_sound = st.one_of(_static, _text, _text, _in_range, _out_of_range, _sound_group, _sound_group)
# anything: blank phrases, phrase-less objects, inverted boxes, out-of-range indices
_anything = st.one_of(_static, _text, _text, _in_range, _out_of_range, _any_group, _any_group, _objects(_box))
generations = st.one_of(st.lists(_mostly_sound, max_size=20), st.lists(_anything, max_size=20)).map("".join)


def _processor(text: str):
    return clean_text_and_extract_entities_with_bboxes(strip_image_prefix(text))


def _well_formed(entities) -> bool:
    """The processor's entities are sound: real phrases (not the made-up names it gives a phrase-less
    object, not an empty name) and boxes inside [0, 1] that are not inverted."""
    for name, _span, boxes in entities:
        if not name or name.startswith("<patch_index_"):
            return False
        for x0, y0, x1, y1 in boxes:
            if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                return False
    return True


@settings(max_examples=5000, deadline=None)
@given(generations)
def test_never_raises_and_keeps_only_sound_entities(text: str) -> None:
    g = parse_generation(text)
    assert g.raw == text
    assert g.caption == re.sub("<.*?>", "", strip_image_prefix(text)).strip()
    assert all(isinstance(p, str) and p for p in g.problems)
    for e in g.entities:
        start, end = e.span
        assert g.caption[start:end] == e.phrase
        assert e.phrase and e.phrase == e.phrase.strip()
        assert e.boxes
        for x0, y0, x1, y1 in e.boxes:
            assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0


@settings(max_examples=5000, deadline=None)
@given(generations)
def test_agrees_with_the_processor_where_its_result_is_well_formed(text: str) -> None:
    caption, entities = _processor(text)
    g = parse_generation(text)
    assert g.caption == caption
    if _well_formed(entities):
        assert g.entity_tuples() == entities
    else:
        # what the processor got wrong is reported, never passed on
        assert g.problems
        assert len(g.entities) <= len(entities)
