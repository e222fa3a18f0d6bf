"""The language of the synthetic world: grounded training texts, its tokenizer, processor and model config.

Every text follows the Kosmos-2 grounding format (GRIT style) and answers one of Kosmos-2's own prompts
(:mod:`helpers.grounding.prompts`): brief and detailed captions, comprehension, questions about a user box
and referring-expression generation. Grounded phrases, their list in a caption and a question's answer are written
as fine-tuning writes them for any data (:mod:`helpers.grounding.prompts`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from helpers.grounding.checks import check_positive_int
from helpers.grounding.prompts import (CAPTION_PROMPT, DETAIL_PROMPT, GENERATION_PROMPT, comprehension_prompt, grounded,
                                       join_phrases, qa_answer, qa_prompt, with_box)
from helpers.grounding.tokens import object_tokens
from helpers.world.scenes import COLOURS, SHAPES, SPECIAL_KINDS, Scene, SceneObject, definite_phrase, indefinite_phrase

_COUNT_WORDS = {1: "one object", 2: "two objects", 3: "three objects", 4: "four objects"}


@dataclass(frozen=True)
class Example:
    """One training or evaluation example: a prompt (given) and its answer (to be generated)."""

    task: str
    prompt: str
    answer: str
    target: tuple[SceneObject, ...] = ()  # the object(s) the example is about, for evaluation


def _grounded(group: list[SceneObject]) -> str:
    return grounded(group[0].phrase, [o.box for o in group])


def _where(box: Sequence[float]) -> str:
    """The position word of a box: by its centre's x, left of 0.38, right of 0.62, else the middle."""
    cx = (box[0] + box[2]) / 2
    if cx < 0.38:
        return " on the left"
    if cx > 0.62:
        return " on the right"
    return " in the middle"


def caption_answer(scene: Scene) -> str:
    return join_phrases([_grounded(g) for g in scene.groups]) + "."


def detail_answer(scene: Scene) -> str:
    """The detailed caption: how many objects, then each group's phrase with its boxes and a position word.

    A group is placed by its leftmost object (:func:`_where` of its first box; groups keep their boxes left
    to right), so a pair reads "two blue triangles on the left" even when its second object stands in the
    middle or on the right: a simplification of the template the bundled model learned, not a description
    of every object's place.
    """
    n = len(scene.objects)
    parts = [_grounded(g) + _where(g[0].box) for g in scene.groups]
    return f" The image shows {_COUNT_WORDS[n]}:" + join_phrases(parts) + "."


def answer_name(obj: SceneObject) -> str:
    """How a question's answer names one object: ``a red circle``, ``a snowman``, ``Kumo``."""
    return indefinite_phrase(obj.colour, obj.shape, 1)


def _jitter(box: Sequence[float], rng: random.Random, amount: float = 0.02) -> tuple[float, ...]:
    x0, y0, x1, y1 = (v + rng.uniform(-amount, amount) for v in box)
    x0, y0 = max(0.0, x0), max(0.0, y0)
    x1, y1 = min(1.0, max(x1, x0 + 0.04)), min(1.0, max(y1, y0 + 0.04))
    return (x0, y0, x1, y1)


def scene_examples(scene: Scene, rng: random.Random | None = None, jitter: float = 0.02) -> list[Example]:
    """Every example a scene gives: both captions, and per group/object comprehension, QA and generation."""
    rng = rng or random.Random(scene.seed)
    out = [
        Example("caption", CAPTION_PROMPT, caption_answer(scene), tuple(scene.objects)),
        Example("detail", DETAIL_PROMPT, detail_answer(scene), tuple(scene.objects)),
    ]
    for group in scene.groups:
        first = group[0]
        phrase = definite_phrase(first.colour, first.shape, 1 if rng.random() < 0.5 else len(group))
        out.append(
            Example("comprehension", comprehension_prompt(phrase), object_tokens([o.box for o in group]), tuple(group))
        )
        for obj in group:
            noun = "character" if obj.shape in SPECIAL_KINDS and rng.random() < 0.7 else "object"
            box = _jitter(obj.box, rng, jitter) if jitter else obj.box
            out.append(Example("qa", with_box(qa_prompt(noun), box), qa_answer(answer_name(obj)), (obj,)))
            box = _jitter(obj.box, rng, jitter) if jitter else obj.box
            out.append(Example("generation", with_box(GENERATION_PROMPT, box), f" {answer_name(obj)}.", (obj,)))
    return out


# ----------------------------------------------------------------------------------------- vocabulary

_WORDS = (
    "An image of a an the and this It is Question What Answer Describe in detail The shows on left right middle "
    "one two three four object objects character Kumo Kumos snowman snowmen fire fires warming himself by next to "
    "with picture photo there are at top bottom small big"
).split()
_PUNCT = [".", ",", ":", "?", "!", "'", "-"]


def world_words() -> list[str]:
    """Every whole word of the world's language (shape names in singular and plural)."""
    words = list(dict.fromkeys(_WORDS + list(COLOURS) + list(SHAPES) + [s + "s" for s in SHAPES]))
    return words


def build_tokenizer():
    """An XLM-RoBERTa (SentencePiece-unigram) tokenizer for the world, built in code.

    Whole words of the world are single pieces. Other English text of ASCII letters, digits, spaces and the
    punctuation ``. , : ? ! ' -`` stays representable (unknown words fall apart into letters). Any other
    character becomes ``<unk>``: ``; ( ) " [ ] & /``, accented and non-Latin letters, emoji.
    ``"What is this; a (red) circle?"`` has three ``<unk>``.
    """
    from transformers import XLMRobertaTokenizer

    vocab: list[tuple[str, float]] = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    # 64 reserved pieces: Kosmos-2 puts its image placeholders at ids unk+1 … unk+64
    vocab += [(f"<reserved_{i:02d}>", -100.0) for i in range(64)]
    vocab += [("▁" + w, -2.0) for w in world_words()]
    vocab += [(p, -3.0) for p in _PUNCT]
    vocab += [("▁", -6.0)]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    vocab += [(c, -12.0) for c in chars] + [("▁" + c, -12.5) for c in chars]
    return XLMRobertaTokenizer(vocab=vocab)


def build_image_processor(image_size: int):
    """Resize to a square (no centre crop), like the real checkpoint's preprocessing, with CLIP's statistics.

    Raises:
        TypeError, ValueError: ``image_size`` is not a positive int.
    """
    from transformers.models.clip import CLIPImageProcessorPil

    check_positive_int("image_size", image_size)
    return CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        crop_size={"height": image_size, "width": image_size},
        resample=3,
    )


def build_processor(image_size: int = 64):
    """The world's ``Kosmos2Processor`` (adds Kosmos-2's tag and 1 024 location tokens to the tokenizer)."""
    from transformers import Kosmos2Processor

    return Kosmos2Processor(build_image_processor(image_size), build_tokenizer())


def build_config(processor, *, image_size: int = 64, patch_size: int = 8, vision_dim: int = 128,
                 vision_layers: int = 4, text_dim: int = 192, text_layers: int = 4, heads: int = 4):
    """A small Kosmos-2 configuration sized for the world's processor: a vocabulary of one more than its largest
    token id.

    Raises:
        TypeError: ``processor`` has no tokenizer, or a size is not an int.
        ValueError: a size is not positive, ``image_size`` is not a multiple of ``patch_size``, or a width
            (``vision_dim``, ``text_dim``) is not a multiple of ``heads``.
    """
    from transformers import Kosmos2Config

    tok = getattr(processor, "tokenizer", None)
    if tok is None:
        raise TypeError(f"processor must be a Kosmos2Processor (from build_processor), got {type(processor).__name__}")
    sizes = dict(image_size=image_size, patch_size=patch_size, vision_dim=vision_dim, vision_layers=vision_layers,
                 text_dim=text_dim, text_layers=text_layers, heads=heads)
    for name, value in sizes.items():
        check_positive_int(name, value)
    if image_size % patch_size:
        raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
    for name in ("vision_dim", "text_dim"):
        if sizes[name] % heads:
            raise ValueError(f"{name} ({sizes[name]}) must be a multiple of heads ({heads})")
    # One row per token id, up to the largest. Not len(tok): the world's tokenizer holds the piece "▁a" twice (a
    # world word, id 71, and a letter, id 199), so its vocabulary has a hole at 71 and transformers versions count it
    # differently (len() is 1297 on 5.24, 1296 on 5.15, one row short of <patch_index_1023>).
    text = dict(
        vocab_size=max(tok.get_vocab().values()) + 1, embed_dim=text_dim, layers=text_layers, ffn_dim=4 * text_dim,
        attention_heads=heads, max_position_embeddings=512, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    vision = dict(
        hidden_size=vision_dim, intermediate_size=4 * vision_dim, num_hidden_layers=vision_layers,
        num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
    )
    return Kosmos2Config(text_config=text, vision_config=vision, latent_query_num=64)
