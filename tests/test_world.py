"""helpers.world.language: every training text parses back to its scene, the tokenizer keeps the world's words
whole, and the processor survives a save/load round trip."""

from __future__ import annotations

import random

import pytest
from transformers import AutoProcessor, Kosmos2Processor

from helpers.grounding.boxes import iou
from helpers.world.scenes import SPECIAL_KINDS, draw_scene, sample_scenes
from helpers.grounding.tokens import box_to_patch_index, location_tokens, object_tokens, parse_generation
from helpers.world.training import TASK_WEIGHTS, answer_token_ids
from helpers.grounding.prompts import CAPTION_PROMPT, DETAIL_PROMPT, GENERATION_PROMPT, comprehension_prompt, qa_prompt
from helpers.world.language import build_processor, caption_answer, detail_answer, scene_examples, world_words

SCENES = sample_scenes(40, seed=21)


@pytest.fixture(scope="module")
def processor():
    return build_processor(64)


def _bins(box) -> tuple[tuple[int, int], tuple[int, int]]:
    """(column, row) of the top-left and bottom-right bins of a box."""
    a, b = box_to_patch_index(box)
    return (a % 32, a // 32), (b % 32, b // 32)


def _within_one_bin(got, want) -> bool:
    return all(abs(g - w) <= 1 for gp, wp in zip(_bins(got), _bins(want)) for g, w in zip(gp, wp))


# --------------------------------------------------------------------------------------------- examples


def test_scene_examples_cover_every_task_and_every_object() -> None:
    for scene in SCENES:
        examples = scene_examples(scene)
        tasks = [e.task for e in examples]
        assert set(tasks) == set(TASK_WEIGHTS)
        assert tasks.count("caption") == tasks.count("detail") == 1
        assert tasks.count("comprehension") == len(scene.groups)
        assert tasks.count("qa") == tasks.count("generation") == len(scene.objects)
        assert all(e.prompt.startswith("<grounding>") for e in examples)


def test_scene_examples_are_reproducible() -> None:
    scene = SCENES[3]
    assert scene_examples(scene) == scene_examples(scene)
    assert scene_examples(scene, random.Random(5)) == scene_examples(scene, random.Random(5))


def test_captions_parse_back_to_the_groups_in_exact_bins() -> None:
    for scene in SCENES:
        for prompt, answer in ((CAPTION_PROMPT, caption_answer(scene)), (DETAIL_PROMPT, detail_answer(scene))):
            g = parse_generation(prompt + answer)
            assert g.problems == []
            assert [e.phrase for e in g.entities] == [grp[0].phrase for grp in scene.groups]
            for entity, group in zip(g.entities, scene.groups):
                assert len(entity.boxes) == len(group)
                for box, obj in zip(entity.boxes, group):
                    assert location_tokens(box) == location_tokens(obj.box)
                    assert iou(box, obj.box) >= 0.5, (box, obj.box)
            assert g.caption.endswith(".")


def test_caption_text_reads_as_english() -> None:
    scene = draw_scene([("red", "circle", (0.05, 0.1, 0.25, 0.3)), (None, "kumo", (0.4, 0.4, 0.6, 0.7)),
                        ("red", "circle", (0.75, 0.1, 0.95, 0.3)), (None, "fire", (0.3, 0.05, 0.38, 0.2))])
    g = parse_generation(CAPTION_PROMPT + caption_answer(scene))
    assert g.caption == "An image of two red circles, a fire and Kumo."
    d = parse_generation(DETAIL_PROMPT + detail_answer(scene))
    assert d.caption == ("Describe this image in detail: The image shows four objects: two red circles on the left, "
                         "a fire on the left and Kumo in the middle.")


def test_comprehension_answers_hold_the_group_boxes_in_exact_bins() -> None:
    for scene in SCENES:
        for ex in (e for e in scene_examples(scene) if e.task == "comprehension"):
            g = parse_generation(ex.prompt + ex.answer)
            assert g.problems == [] and len(g.entities) == 1
            entity = g.entities[0]
            first = ex.target[0]
            assert entity.phrase in {f"the {first.name}", f"the {first.name}s", first.name}
            assert ex.prompt == comprehension_prompt(entity.phrase)
            assert [location_tokens(b) for b in entity.boxes] == [location_tokens(o.box) for o in ex.target]


def test_questions_and_generations_parse_to_a_box_within_one_bin_and_the_name() -> None:
    seen_character = False
    for scene in SCENES:
        for ex in (e for e in scene_examples(scene) if e.task in ("qa", "generation")):
            (obj,) = ex.target
            g = parse_generation(ex.prompt + ex.answer)
            assert g.problems == [] and len(g.entities) == 1
            (box,) = g.entities[0].boxes
            assert _within_one_bin(box, obj.box), (box, obj.box)
            assert iou(box, obj.box) >= 0.5
            name = "Kumo" if obj.shape == "kumo" else f"a {obj.name}"
            if ex.task == "qa":
                noun = g.entities[0].phrase.removeprefix("this ")
                assert noun in {"object", "character"} and (noun == "object" or obj.shape in SPECIAL_KINDS)
                seen_character |= noun == "character"
                assert ex.prompt == qa_prompt(noun).replace("</phrase>", "</phrase>" + object_tokens([box]))
                assert g.caption == f"Question: What is this {noun}? Answer: It is {name}."
            else:
                assert g.entities[0].phrase == "It"
                assert g.caption == f"It is {name}."
                assert ex.prompt == GENERATION_PROMPT.replace("</phrase>", "</phrase>" + object_tokens([box]))
    assert seen_character


def test_without_jitter_user_boxes_are_exact() -> None:
    for scene in SCENES[:10]:
        for ex in (e for e in scene_examples(scene, jitter=0) if e.task in ("qa", "generation")):
            (box,) = parse_generation(ex.prompt + ex.answer).entities[0].boxes
            assert location_tokens(box) == location_tokens(ex.target[0].box)


# --------------------------------------------------------------------------------------------- tokenizer


def test_every_world_word_is_a_single_piece(processor) -> None:
    tok = processor.tokenizer
    for word in world_words():
        assert tok.tokenize(" " + word) == ["▁" + word], word
        ids = tok(" " + word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tok.unk_token_id


def test_other_english_falls_apart_but_never_becomes_unk(processor) -> None:
    tok = processor.tokenizer
    ids = tok(" a zebra on Mars, 42!", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == "a zebra on Mars, 42!"


def test_punctuation_outside_the_world_becomes_unk(processor) -> None:
    """What build_tokenizer's docstring says: letters, digits and . , : ? ! ' - survive; other characters
    (; ( ) " and every non-ASCII letter) become <unk>."""
    from helpers.world.language import build_tokenizer

    assert "<unk>" in build_tokenizer.__doc__ and "silently" not in build_tokenizer.__doc__
    tok = processor.tokenizer
    ids = tok("What is this; a (red) circle?", add_special_tokens=False)["input_ids"]
    assert ids.count(tok.unk_token_id) == 3
    ids = tok(" Kumo's left-hand side: 3 fires!", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids) == "Kumo's left-hand side: 3 fires!"
    assert tok.unk_token_id in tok(" café", add_special_tokens=False)["input_ids"]


def test_kosmos2_tags_and_location_tokens_are_single_tokens(processor) -> None:
    tok = processor.tokenizer
    for tag in ("<grounding>", "<phrase>", "</phrase>", "<object>", "</object>", "</delimiter_of_multi_objects/>",
                "<patch_index_0000>", "<patch_index_0528>", "<patch_index_1023>"):
        assert tok.tokenize(tag) == [tag]
    assert processor.num_patch_index_tokens == 1024


def test_answer_token_ids_decode_back_to_the_text(processor) -> None:
    tok = processor.tokenizer
    for scene in SCENES[:15]:
        for ex in scene_examples(scene):
            ids = answer_token_ids(tok, ex.answer)
            # SentencePiece drops the space at the very start of a sequence, nothing else
            assert tok.decode(ids) == ex.answer.removeprefix(" ")
            assert tok.decode(answer_token_ids(tok, ex.prompt) + ids) == ex.prompt + ex.answer
            assert tok.unk_token_id not in ids


def test_answer_token_ids_write_a_full_stop_straight_after_the_object(processor) -> None:
    tok = processor.tokenizer
    answer = "<phrase> a red circle</phrase><object><patch_index_0000><patch_index_0033></object>."
    ids = answer_token_ids(tok, answer)
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[-2:] == ["</object>", "."]
    assert tok.decode(ids).endswith("</object>.")
    assert tokens[:4] == ["<phrase>", "▁a", "▁red", "▁circle"]


def test_answer_token_ids_rejects_unknown_tags(processor) -> None:
    with pytest.raises(ValueError, match="'<patch_index_9999>' is not a token"):
        answer_token_ids(processor.tokenizer, "<object><patch_index_9999><patch_index_0001></object>")


# --------------------------------------------------------------------------------------------- processor


def test_processor_round_trips_through_save_pretrained(processor, tmp_path) -> None:
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, Kosmos2Processor)
    assert loaded.image_processor.do_center_crop is False
    assert loaded.image_processor.size == {"height": 64, "width": 64}
    assert len(loaded.tokenizer) == len(processor.tokenizer)
    scene = SCENES[0]
    box = scene.objects[0].box
    cases = [
        dict(text=CAPTION_PROMPT),
        dict(text=comprehension_prompt("the red circle")),
        dict(text=qa_prompt("character"), bboxes=[[box]]),
        dict(text=GENERATION_PROMPT, bboxes=[[box]]),
    ]
    for kwargs in cases:
        a = processor(images=scene.image, return_tensors="pt", **kwargs)
        b = loaded(images=scene.image, return_tensors="pt", **kwargs)
        assert a["input_ids"].tolist() == b["input_ids"].tolist(), kwargs
        assert a["image_embeds_position_mask"].tolist() == b["image_embeds_position_mask"].tolist()
        assert (a["pixel_values"] == b["pixel_values"]).all()
    assert tuple(a["pixel_values"].shape) == (1, 3, 64, 64)


def test_processor_resizes_without_cropping(processor) -> None:
    wide = draw_scene([("red", "square", (0.0, 0.0, 0.1, 1.0))], size=(300, 100))
    pixels = processor(text=CAPTION_PROMPT, images=wide.image, return_tensors="pt")["pixel_values"][0]
    # a centre crop of a 3:1 image keeps only its middle third; resizing keeps the red bar in column 0
    left, middle = pixels[:, :, 0].mean(1), pixels[:, :, 32].mean(1)
    assert left[1] < middle[1] - 1.0 and left[2] < middle[2] - 1.0, (left, middle)  # red: less green and blue


def test_prompt_with_a_user_box_puts_the_box_after_the_phrase(processor) -> None:
    box = (0.1, 0.2, 0.5, 0.9)
    ids = processor(text=qa_prompt(), images=SCENES[0].image, bboxes=[[box]])["input_ids"]
    tokens = processor.tokenizer.convert_ids_to_tokens(ids)
    i = tokens.index("</phrase>")
    assert tokens[i + 1:i + 5] == ["<object>", *location_tokens(box).replace("><", ">|<").split("|"), "</object>"]
