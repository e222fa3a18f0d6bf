"""Kosmos-2 location tokens and grounded text.

Kosmos-2 cuts the image into a 32 x 32 grid of bins. A box is written as two location tokens,
``<patch_index_NNNN>`` for the bin of its top-left corner and ``<patch_index_MMMM>`` for the bin of its
bottom-right corner, where ``index = row * 32 + column``.

A grounded generation mixes text and tags (here on two lines)::

    <image>…</image><grounding> An image of<phrase> a snowman</phrase>
    <object><patch_index_0044><patch_index_0863></object>

:func:`parse_generation` turns such text into a :class:`Grounding`: the plain caption, the
:class:`Entity` objects (phrase, span in the caption, boxes) and a list of problems found on the way.
"""

from __future__ import annotations

import bisect
import json
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from helpers.grounding.boxes import Box, check_normalized, check_with_area, is_one_box
from helpers.grounding.checks import check_positive_int

#: Location bins per side of the image: Kosmos-2 names a box corner by one of 32 × 32 = 1024 patch tokens.
NUM_BINS = 32

IMAGE_OPEN = "<image>"
IMAGE_CLOSE = "</image>"
PHRASE_OPEN = "<phrase>"
PHRASE_CLOSE = "</phrase>"
OBJECT_OPEN = "<object>"
OBJECT_CLOSE = "</object>"
DELIMITER = "</delimiter_of_multi_objects/>"
GROUNDING = "<grounding>"
_PATCH_PREFIX = "<patch_index_"
#: Tags that carry no content and are removed from the caption without comment.
_SILENT_TAGS = frozenset({GROUNDING, "<s>", "</s>", "<pad>"})
_DIGITS = re.compile(r"\d*")  # Unicode decimal digits, exactly what the processor's ``\d`` accepts


def _check_num_bins(num_bins: int) -> None:
    check_positive_int("num_bins", num_bins, unit="bins per side")


def patch_index_to_box(first: int, last: int, num_bins: int = NUM_BINS) -> tuple[float, float, float, float]:
    """The normalized box ``(x0, y0, x1, y1)`` that two location-token indices stand for.

    Same rule as the transformers Kosmos-2 processor: corners sit at bin centres, except when both
    tokens share a row or a column, where the box covers the bins' full extent.
    """
    _check_num_bins(num_bins)
    n_tokens = num_bins * num_bins
    for name, value in (("first", first), ("last", last)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 0 <= value < n_tokens:
            raise ValueError(f"{name} must be an int in [0, {n_tokens - 1}] (a location token index), got {value!r}")
    first, last = int(first), int(last)  # numpy ints too (an argmax, an array of indices)
    cell = 1.0 / num_bins
    ul_x, ul_y = first % num_bins, first // num_bins
    lr_x, lr_y = last % num_bins, last // num_bins
    if first == last or ul_x == lr_x or ul_y == lr_y:
        return (ul_x * cell, ul_y * cell, lr_x * cell + cell, lr_y * cell + cell)
    return (ul_x * cell + cell / 2, ul_y * cell + cell / 2, lr_x * cell + cell / 2, lr_y * cell + cell / 2)


def box_to_patch_index(box: Sequence[float], num_bins: int = NUM_BINS) -> tuple[int, int]:
    """The two location-token indices for a normalized box ``(x0, y0, x1, y1)``.

    Same rule as the transformers Kosmos-2 processor: the top-left corner goes to the bin it falls in,
    the bottom-right corner to the last bin it reaches.

    Raises:
        ValueError: the box is not a valid normalized box (see :func:`helpers.grounding.boxes.check_normalized`), or
            it has no area (``x1 <= x0`` or ``y1 <= y0``), which the processor refuses too.

    One deliberate difference: when ``x1`` (or ``y1``) is so close to 0 that ``x1 * num_bins - 1`` rounds
    to ``-1.0`` in floating point (below about ``1e-17``), the processor computes column ``-1``, which is
    not a bin; here the corner goes to bin 0.
    """
    _check_num_bins(num_bins)
    x0, y0, x1, y1 = check_with_area(box)
    ul_x = min(math.floor(x0 * num_bins), num_bins - 1)
    ul_y = min(math.floor(y0 * num_bins), num_bins - 1)
    lr_x = max(math.ceil(x1 * num_bins - 1), 0)
    lr_y = max(math.ceil(y1 * num_bins - 1), 0)
    return ul_y * num_bins + ul_x, lr_y * num_bins + lr_x


def location_tokens(box: Sequence[float], num_bins: int = NUM_BINS) -> str:
    """``"<patch_index_NNNN><patch_index_MMMM>"`` for a normalized box."""
    a, b = box_to_patch_index(box, num_bins)
    return f"{_PATCH_PREFIX}{a:04d}>{_PATCH_PREFIX}{b:04d}>"


def object_tokens(boxes: Sequence[Sequence[float]], num_bins: int = NUM_BINS) -> str:
    """``<object>…</object>`` for one or several boxes (joined by the multi-object delimiter).

    Raises:
        TypeError: ``boxes`` is not a list (or tuple) of boxes.
        ValueError: no boxes, a single box not wrapped in a list, or a box that is not a valid normalized box.
    """
    if isinstance(boxes, (str, bytes)) or not hasattr(boxes, "__len__") or not hasattr(boxes, "__getitem__"):
        raise TypeError(f"object_tokens needs a list of normalized boxes, got {type(boxes).__name__}: {boxes!r:.80}")
    if len(boxes) == 0:
        raise ValueError("object_tokens needs at least one box")
    if is_one_box(boxes):
        raise ValueError(f"object_tokens needs a list of boxes, got a single box {tuple(boxes)}: "
                         "write object_tokens([box])")
    inner = DELIMITER.join(location_tokens(b, num_bins) for b in boxes)
    return f"{OBJECT_OPEN}{inner}{OBJECT_CLOSE}"


# ------------------------------------------------------------------------------------ grounded text


def _check_str(text: object, what: str = "text (the decoded model output)") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}: {text!r:.80}")
    return text


def strip_image_prefix(text: str) -> str:
    """The part of ``text`` after the last ``</image>`` (all of ``text`` when there is none).

    This is how the processor's ``post_process_generation`` drops the ``<image>…</image>`` prefix that
    stands for the image embeddings.

    Raises:
        TypeError: ``text`` is not a str.
    """
    return _check_str(text).rpartition(IMAGE_CLOSE)[2]


def _box_from_value(value: object, what: str) -> Box:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{what} must be a list of 4 numbers (x0, y0, x1, y1), got {value!r}")
    return check_normalized(value)


@dataclass
class Entity:
    """One grounded phrase: its text, where it sits in the caption, and its normalized boxes.

    ``span`` is ``(start, end)`` with ``caption[start:end] == phrase``; ``boxes`` holds one normalized box
    ``(x0, y0, x1, y1)`` per object the phrase refers to (several when the model joined them with
    ``</delimiter_of_multi_objects/>``). The constructor checks every field and stores tuples of floats.
    """

    phrase: str
    span: tuple[int, int]
    boxes: list[Box]

    def __post_init__(self) -> None:
        if not isinstance(self.phrase, str):
            raise TypeError(f"Entity.phrase must be a str, got {type(self.phrase).__name__}: {self.phrase!r:.80}")
        span = self.span
        if (
            isinstance(span, (str, bytes))
            or not isinstance(span, Sequence)
            or len(span) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)
        ):
            raise ValueError(f"Entity.span must be two ints (start, end), got {span!r}")
        start, end = span
        if not 0 <= start <= end:
            raise ValueError(f"Entity.span must satisfy 0 <= start <= end, got {tuple(span)}")
        if end - start != len(self.phrase):
            raise ValueError(
                f"Entity.span {tuple(span)} covers {end - start} characters but the phrase {self.phrase!r} has "
                f"{len(self.phrase)}"
            )
        self.span = (start, end)
        if isinstance(self.boxes, (str, bytes)) or not isinstance(self.boxes, Sequence):
            raise ValueError(f"Entity.boxes must be a list of boxes, got {self.boxes!r:.80}")
        self.boxes = [_box_from_value(b, f"box {i} of entity {self.phrase!r}") for i, b in enumerate(self.boxes)]

    def as_tuple(self) -> tuple[str, tuple[int, int], list[Box]]:
        """``(phrase, (start, end), [box, …])``: the form of the processor's entity tuples."""
        return (self.phrase, self.span, list(self.boxes))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: ``{"phrase": str, "span": [start, end], "boxes": [[x0, y0, x1, y1], …]}``."""
        return {"phrase": self.phrase, "span": list(self.span), "boxes": [list(b) for b in self.boxes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entity:
        """The inverse of :meth:`to_dict` (checks the keys and values)."""
        if not isinstance(data, dict):
            raise TypeError(f"Entity.from_dict needs a dict, got {type(data).__name__}")
        expected = {"phrase", "span", "boxes"}
        if set(data) != expected:
            raise ValueError(f"an entity dict needs exactly the keys {sorted(expected)}, got {sorted(data)}")
        return cls(data["phrase"], tuple(data["span"]) if isinstance(data["span"], list) else data["span"],
                   data["boxes"])


@dataclass
class Grounding:
    """What :func:`parse_generation` makes of one generation.

    ``caption`` is the plain text; ``entities`` the grounded phrases with valid boxes; ``problems`` one
    human-readable message per defect found in the text (empty for a well-formed generation); ``raw`` the
    text that was parsed. A ``Grounding`` is always truthy, whatever it holds.
    """

    caption: str
    entities: list[Entity]
    problems: list[str] = field(default_factory=list)
    raw: str = ""

    def __post_init__(self) -> None:
        for name in ("caption", "raw"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"Grounding.{name} must be a str, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.entities, list) or not all(isinstance(e, Entity) for e in self.entities):
            raise TypeError(f"Grounding.entities must be a list of Entity, got {self.entities!r:.80}")
        if not isinstance(self.problems, list) or not all(isinstance(p, str) for p in self.problems):
            raise TypeError(f"Grounding.problems must be a list of str, got {self.problems!r:.80}")
        for e in self.entities:
            start, end = e.span
            if self.caption[start:end] != e.phrase:
                raise ValueError(
                    f"entity {e.phrase!r} has span {e.span}, but the caption holds "
                    f"{self.caption[start:end]!r} there"
                )

    def entity_tuples(self) -> list[tuple[str, tuple[int, int], list[Box]]]:
        """The entities as the processor writes them: ``[(phrase, (start, end), [box, …]), …]``."""
        return [e.as_tuple() for e in self.entities]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; ``Grounding.from_dict(g.to_dict()) == g``."""
        return {
            "caption": self.caption,
            "entities": [e.to_dict() for e in self.entities],
            "problems": list(self.problems),
            "raw": self.raw,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grounding:
        """The inverse of :meth:`to_dict` (checks the keys and values)."""
        if not isinstance(data, dict):
            raise TypeError(f"Grounding.from_dict needs a dict, got {type(data).__name__}")
        expected = {"caption", "entities", "problems", "raw"}
        if set(data) != expected:
            raise ValueError(f"a grounding dict needs exactly the keys {sorted(expected)}, got {sorted(data)}")
        if not isinstance(data["entities"], list):
            raise ValueError(f"'entities' must be a list, got {type(data['entities']).__name__}")
        return cls(
            caption=data["caption"],
            entities=[Entity.from_dict(e) for e in data["entities"]],
            problems=list(data["problems"]) if isinstance(data["problems"], list) else data["problems"],
            raw=data["raw"],
        )

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Grounding:
        """The inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(_check_str(text, "JSON text")))


# --------------------------------------------------------------------------------------------- parsing


def _excerpt(s: str, pos: int, limit: int = 40) -> str:
    """A short quote of what stands at ``pos``: a whole ``<…>`` tag when one starts there."""
    if pos >= len(s):
        return "the end of the text"
    if s[pos] == "<":
        end = s.find(">", pos, pos + limit)
        if end >= 0:
            return repr(s[pos:end + 1])
        piece = s[pos:pos + limit]
        return repr(piece) + (" (cut off)" if len(piece) < limit else "…")
    piece = s[pos:pos + 20]
    return repr(piece) + ("…" if len(s) > pos + 20 else "")


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _tag_segments(s: str) -> list[tuple[int, int]]:
    """Where the processor's cleanup (``re.sub("<.*?>", "", …)``) removes text, in linear time.

    A tag runs from a ``<`` to the first ``>`` after it, unless a newline comes first; then that ``<`` is
    plain text. (A regular expression would be quadratic on text such as a million ``<`` on one line.)
    """
    segments: list[tuple[int, int]] = []
    i = 0
    gt = -1  # first '>' at or after the current '<' (valid while gt >= that '<')
    while True:
        p = s.find("<", i)
        if p < 0:
            break
        if gt < p:
            gt = s.find(">", p)
            if gt < 0:
                break  # no '>' left: every remaining '<' is plain text
        newline = s.find("\n", p, gt)
        if newline >= 0:
            i = newline + 1  # every '<' before this newline would have to cross it
            continue
        segments.append((p, gt + 1))
        i = gt + 1
    return segments


def _index_value(digits: str) -> int | None:
    """The value of a run of decimal digits (any script, as ``int`` reads them); None when above a million.

    Never calls ``int`` on a long string (``int`` refuses more than a few thousand digits).
    """
    significant = digits.lstrip("0")
    if len(significant) <= 7:
        return int(significant) if significant else 0
    value = 0
    for ch in significant:  # zeros of other scripts may still lead
        value = value * 10 + int(ch)
        if value > 10**6:
            return None
    return value


def _token_text(digits: str) -> str:
    """``<patch_index_DIGITS>``, shortened when the digits are absurdly many."""
    shown = digits if len(digits) <= 12 else f"{digits[:6]}…{digits[-3:]}"
    return f"<patch_index_{shown}>"


def _pairs_text(pairs: list[tuple[str, str]], limit: int = 3) -> str:
    shown = "".join(_token_text(a) + _token_text(b) for a, b in pairs[:limit])
    return shown if len(pairs) <= limit else f"{shown}… ({len(pairs)} boxes)"


@dataclass
class _Group:
    """One ``<phrase>…</phrase><object>…</object>`` found in the text (positions in the caption part)."""

    object_pos: int
    phrase_start: int  # the phrase text, between <phrase> and </phrase>
    phrase_end: int
    pairs: list[tuple[str, str]]  # the digits of each box's two location tokens


class _Scanner:
    """Finds the processor's ``<phrase>…</phrase><object>…</object>`` groups and notes every defect.

    The matches found are exactly those of the processor's regular expression (scanned left to right,
    without overlap), so that well-formed text parses the same; the scanner works in linear time. Only
    groups with a non-blank phrase are kept in ``groups``; a phrase-less object is reported instead.
    """

    def __init__(self, s: str) -> None:
        self.s = s
        self.groups: list[_Group] = []
        self.problems: list[tuple[int, str]] = []
        self.claimed: set[int] = set()  # '<' positions whose defects are already reported

    def report(self, pos: int, message: str) -> None:
        self.problems.append((pos, message))

    def run(self) -> None:
        s = self.s
        i = 0
        while True:
            p = s.find("<", i)
            if p < 0:
                return
            if s.startswith(PHRASE_OPEN, p):
                i = self._phrase(p)
            elif s.startswith(OBJECT_OPEN, p):
                i = self._object(p, None)
            else:
                if p not in self.claimed:
                    self._stray(p)
                i = p + 1

    def _stray(self, p: int) -> None:
        s = self.s
        for tag, what in (
            (PHRASE_CLOSE, "'</phrase>' without a '<phrase>' before it; ignored"),
            (OBJECT_CLOSE, "'</object>' without an '<object>' before it; ignored"),
            (DELIMITER, "'</delimiter_of_multi_objects/>' outside '<object>…</object>'; ignored "
                        "(it may only stand between two boxes of one object)"),
        ):
            if s.startswith(tag, p):
                self.claimed.add(p)
                self.report(p, what)
                return
        if s.startswith(_PATCH_PREFIX, p):
            self.claimed.add(p)
            self.report(p, f"location token {_excerpt(s, p)} outside '<object>…</object>'; ignored "
                           "(location tokens belong in pairs inside '<object>…</object>')")

    def _patch_token(self, pos: int) -> tuple[str, int] | None:
        """Parse ``<patch_index_DIGITS>`` at ``pos``: (digits, end) or None."""
        s = self.s
        if not s.startswith(_PATCH_PREFIX, pos):
            return None
        start = pos + len(_PATCH_PREFIX)
        end = _DIGITS.match(s, start).end()
        if end == start or not s.startswith(">", end):
            return None
        return s[start:end], end + 1

    def _body(self, b: int) -> tuple[list[tuple[str, str]], int, int | None, str]:
        """Parse an object's boxes from ``b`` (just after ``<object>``).

        Returns ``(pairs, pos, None, "")`` on success with ``pos`` after ``</object>``, else
        ``(pairs_read, fail_pos, fail_pos, what_was_expected)``.
        """
        s = self.s
        pairs: list[tuple[str, str]] = []
        pos = b
        after_delimiter = False
        while True:
            box_no = len(pairs) + 1
            corners = []
            for corner in ("top-left", "bottom-right"):
                parsed = self._patch_token(pos)
                if parsed is None:
                    if after_delimiter and not corners:
                        expected = ("another box (two location tokens <patch_index_NNNN>) after "
                                    "'</delimiter_of_multi_objects/>'")
                    else:
                        expected = f"a location token <patch_index_NNNN> for the {corner} corner of box {box_no}"
                    return pairs, pos, pos, expected
                self.claimed.add(pos)
                corners.append(parsed[0])
                pos = parsed[1]
            pairs.append((corners[0], corners[1]))
            if s.startswith(DELIMITER, pos):
                self.claimed.add(pos)
                pos += len(DELIMITER)
                after_delimiter = True
                continue
            if s.startswith(OBJECT_CLOSE, pos):
                self.claimed.add(pos)
                return pairs, pos + len(OBJECT_CLOSE), None, ""
            expected = f"'</object>' (or '</delimiter_of_multi_objects/>' and another box) after box {box_no}"
            return pairs, pos, pos, expected

    def _claim_rest_of_object(self, pos: int) -> None:
        """After a malformed object was reported at ``pos``: mark the rest of it (location tokens, malformed
        or not, delimiters, and its ``</object>``) as reported, so that it gives no further messages.

        Only marks; scanning resumes at ``pos``, where the processor's regular expression resumes too.
        """
        s = self.s
        while pos < len(s):
            if s.startswith(DELIMITER, pos):
                self.claimed.add(pos)
                pos += len(DELIMITER)
            elif s.startswith(OBJECT_CLOSE, pos):
                self.claimed.add(pos)
                return
            elif s.startswith(_PATCH_PREFIX, pos):
                end = s.find(">", pos)
                nested = s.find("<", pos + 1, end if end >= 0 else len(s))
                if end < 0 or nested >= 0:
                    if end < 0 and nested < 0:
                        self.claimed.add(pos)  # a token cut off by the end of the text
                    return
                self.claimed.add(pos)
                pos = end + 1
            else:
                return

    def _phrase(self, p: int) -> int:
        s = self.s
        self.claimed.add(p)
        text_start = p + len(PHRASE_OPEN)
        q = s.find("<", text_start)
        if q < 0:
            self.report(p, f"'<phrase>' is never closed: expected phrase text and '</phrase>', but the text ends "
                           f"(after {_short(s[text_start:])}); kept as plain text")
            return len(s)
        phrase = s[text_start:q]
        if s.startswith(PHRASE_CLOSE, q):
            self.claimed.add(q)
            r = q + len(PHRASE_CLOSE)
            if not phrase.strip():
                if s.startswith(OBJECT_OPEN, r):
                    return self._object(r, phrase)
                self.report(p, f"empty phrase {_short(phrase)} between '<phrase>' and '</phrase>', without a box; "
                               "ignored")
                return r
            if s.startswith(OBJECT_OPEN, r):
                self.claimed.add(r)
                pairs, end, fail, expected = self._body(r + len(OBJECT_OPEN))
                if fail is None:
                    self.groups.append(_Group(r, text_start, q, pairs))
                    return end
                self.report(r, f"the '<object>' of phrase {_short(phrase.strip())} is malformed: expected "
                               f"{expected}, found {_excerpt(s, fail)}; the phrase is kept as plain text "
                               "without a box")
                self._claim_rest_of_object(fail)
                return fail
            self.report(p, f"phrase {_short(phrase.strip())} has no box: expected '<object>' right after "
                           f"'</phrase>', found {_excerpt(s, r)}; kept as plain text")
            return r
        if s.startswith(PHRASE_OPEN, q):
            self.report(p, f"'<phrase>' opened again before the first one was closed: expected '</phrase>' "
                           f"after {_short(phrase)}; the first '<phrase>' is ignored")
            return q
        self.report(p, f"'<phrase>' is not closed: expected '</phrase>' after {_short(phrase)}, found "
                       f"{_excerpt(s, q)}; kept as plain text")
        return q

    def _object(self, p: int, blank_phrase: str | None) -> int:
        """An ``<object>`` at ``p`` with no usable phrase before it (``blank_phrase``: an empty one)."""
        s = self.s
        self.claimed.add(p)
        pairs, end, fail, expected = self._body(p + len(OBJECT_OPEN))
        if blank_phrase is None:
            why = "'<object>' without a phrase before it"
        else:
            why = f"'<object>' after an empty phrase ({_short(blank_phrase)} between '<phrase>' and '</phrase>')"
        if fail is None:
            self.report(p, f"{why} ({_pairs_text(pairs)}): a box without a phrase is not an entity; ignored")
            return end
        self.report(p, f"{why}, and malformed: expected {expected}, found {_excerpt(s, fail)}; ignored")
        self._claim_rest_of_object(fail)
        return fail


def _strip_tags(s: str) -> tuple[str, list[tuple[int, int]], Callable[[int], int]]:
    """The processor's cleanup of ``s``: ``(processed, segments, clean_pos)``, the text with every ``<…>`` tag
    removed (not yet stripped of whitespace), the ``(start, end)`` of each tag in ``s``, and the function that maps
    a position in ``s`` to the position in ``processed``."""
    segments = _tag_segments(s)
    pieces: list[str] = []
    last = 0
    removed_before: list[int] = []  # characters removed before the end of each segment
    ends: list[int] = []
    removed = 0
    for a, b in segments:
        pieces.append(s[last:a])
        last = b
        removed += b - a
        ends.append(b)
        removed_before.append(removed)
    pieces.append(s[last:])

    def clean_pos(pos: int) -> int:
        k = bisect.bisect_right(ends, pos)
        return pos - (removed_before[k - 1] if k else 0)

    return "".join(pieces), segments, clean_pos


def _tag_problems(s: str, segments: list[tuple[int, int]], scanner: _Scanner) -> list[tuple[int, str]]:
    """``(position, message)`` for each tag of ``s`` that the caption loses and the scanner did not report: an
    ``<image>`` left open, and tags that are not part of the grounding format."""
    problems = []
    for a, b in segments:
        tag = s[a:b]
        if tag in _SILENT_TAGS or a in scanner.claimed:
            continue
        if tag in (PHRASE_OPEN, OBJECT_OPEN):  # handled (and reported if need be) by the scanner
            continue
        if tag == IMAGE_OPEN:
            problems.append((a, "'<image>' without a '</image>' after it: the image prefix looks cut off; "
                                "its text stays in the caption"))
        else:
            problems.append((a, f"removed {_short(tag)} from the caption: not part of the grounding format "
                                "(text, <phrase>…</phrase>, <object>…</object>, <patch_index_NNNN>)"))
    return problems


def _decode_boxes(group: _Group, phrase: str) -> tuple[list[Box], list[str]]:
    """The boxes of one phrase's ``<object>`` (``group``, from :class:`_Scanner`) and a message for each box
    dropped: out of range or inverted (and, when none is left, that the phrase is not an entity)."""
    n_tokens = NUM_BINS * NUM_BINS
    boxes: list[Box] = []
    problems: list[str] = []
    for first, last_digits in group.pairs:
        tokens = _token_text(first) + _token_text(last_digits)
        values = (_index_value(first), _index_value(last_digits))
        bad = [d for d, v in zip((first, last_digits), values) if v is None or v >= n_tokens]
        if bad:
            which = " and ".join(_token_text(d) for d in bad)
            verb = "is" if len(bad) == 1 else "are"
            problems.append(f"box {tokens} of {_short(phrase)} dropped: {which} {verb} out of range "
                            f"(expected an index from 0000 to {n_tokens - 1:04d})")
            continue
        box = patch_index_to_box(values[0], values[1])  # type: ignore[arg-type]
        if not (box[0] < box[2] and box[1] < box[3]):
            problems.append(f"box {tokens} of {_short(phrase)} dropped: it is inverted (the bottom-right "
                            f"corner comes before the top-left one; it decodes to {box})")
            continue
        boxes.append(box)
    if problems and not boxes:
        problems[-1] += f"; {_short(phrase)} has no valid box left and is not an entity"
    return boxes, problems


def parse_generation(text: str) -> Grounding:
    """Parse one decoded Kosmos-2 generation into a :class:`Grounding`; never raises for a str.

    ``text`` may hold the whole decoded output: everything up to and including the last ``</image>`` is
    dropped (the image-embedding prefix), as are ``<s>``, ``</s>``, ``<pad>`` and ``<grounding>``.

    **Same result as the processor.** For every well-formed generation whose location tokens are in range
    (indices 0–1023, each box with ``x0 < x1`` and ``y0 < y1``) the caption and :meth:`Grounding.entity_tuples`
    are exactly what ``Kosmos2Processor.post_process_generation(text)`` returns: the caption is the text with
    every ``<…>`` tag removed and whitespace stripped at both ends, each entity is
    ``(phrase, (start, end), [box, …])`` with the phrase stripped of surrounding whitespace and
    ``caption[start:end] == phrase``, and the boxes decode the location tokens as the processor does
    (:func:`patch_index_to_box`), several of them when the model joined boxes with
    ``</delimiter_of_multi_objects/>``.

    **Differences, on purpose.**

    * An ``<object>`` with no phrase in front of it is *not* an entity here. The processor reports it
      under a made-up name such as ``'<patch_index_44><patch_index_863>'``; this function leaves it out
      and adds a problem instead. The same goes for an object after an empty (or all-blank) phrase, which
      the processor reports with the name ``''``.
    * A box is never invalid here. A location token ``<patch_index_NNNN>`` with ``NNNN >= 1024`` is out
      of range (the processor would decode ``<patch_index_9999>`` to y = 9.77), and a box whose
      bottom-right token comes before its top-left one is inverted; such a box is dropped with a problem,
      the phrase's other boxes are kept, and a phrase left with no box is not an entity.
    * Everything else that is not well formed gets a message in ``problems``, one per defect, saying
      what was expected: an ``<object>`` that is cut off or holds a malformed token such as
      ``<patch_index_12a>``, a delimiter with no second box, a ``<phrase>`` that is never closed or is
      opened twice, a phrase with no ``<object>``, stray closing tags or location tokens, unknown tags,
      and empty text. As with the processor, a phrase whose ``<object>`` is malformed is not an entity
      (its words stay in the caption); the caption is always the processor's.

    Index digits are read as the processor reads them: ``<patch_index_44>`` and ``<patch_index_0044>``
    are both 44 (the model itself always writes four digits). Runs in time linear in the length of the
    text, so a runaway generation of a megabyte is no problem.

    Raises:
        TypeError: ``text`` is not a str. Model output decoded by a tokenizer is always a str, so anything
            else is a mistake in the calling code, not bad model output.
    """
    _check_str(text)
    s = strip_image_prefix(text)
    problems: list[tuple[int, str]] = []

    processed, segments, clean_pos = _strip_tags(s)
    scanner = _Scanner(s)
    scanner.run()
    problems.extend(scanner.problems)
    problems.extend(_tag_problems(s, segments, scanner))

    lead = len(processed) - len(processed.lstrip())
    caption = processed.strip()
    if not caption:
        problems.append((-1, "the generation is empty: no caption text" + (" after '</image>'" if s != text else "")))

    entities: list[Entity] = []
    for group in scanner.groups:
        raw_phrase = s[group.phrase_start:group.phrase_end]
        phrase = raw_phrase.strip()
        boxes, box_problems = _decode_boxes(group, phrase)
        problems.extend((group.object_pos, m) for m in box_problems)
        if not boxes:
            continue
        start = clean_pos(group.phrase_start) - lead + (len(raw_phrase) - len(raw_phrase.lstrip()))
        end = clean_pos(group.phrase_end) - lead - (len(raw_phrase) - len(raw_phrase.rstrip()))
        entities.append(Entity(phrase, (start, end), boxes))

    problems.sort(key=lambda item: item[0])
    return Grounding(caption=caption, entities=entities, problems=[m for _, m in problems], raw=text)
