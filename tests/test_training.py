"""helpers.world.training: text → tensors exactly as the processor tokenizes, labels only on the answer, the
dense and attention targets point at the right patches, location tokens start out spatially ordered, and
a few steps of the recipe run."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from helpers.world.scenes import KINDS, draw_scene, sample_scenes
from helpers.grounding.tokens import patch_index_to_box
from helpers.grounding.model import describe_device
from helpers.world.training import (
    IGNORE,
    LOCATION_FEATURES,
    DenseHeads,
    Encoded,
    TrainConfig,
    answer_token_ids,
    attention_targets,
    collate,
    count_word_loss,
    count_word_positions,
    dense_targets,
    draw_batch,
    encode_example,
    init_location_embeddings,
    location_features,
    new_model,
    patch_set,
    train,
)
from helpers.grounding.prompts import CAPTION_PROMPT
from helpers.world.language import Example, build_processor, caption_answer, scene_examples

SCENES = sample_scenes(12, seed=31)
GRID = 8


@pytest.fixture(scope="module")
def processor():
    return build_processor(64)


def tiny_model(processor, seed: int = 0):
    return new_model(processor, seed=seed, vision_layers=1, text_layers=1, vision_dim=32, text_dim=48, heads=2)


def _answer_tokens(processor, enc: Encoded) -> list[str]:
    n_prompt = enc.labels.count(IGNORE)
    return processor.tokenizer.convert_ids_to_tokens(enc.input_ids[n_prompt:])


# --------------------------------------------------------------------------------------------- encoding


def test_encode_example_tokenizes_like_the_processor(processor) -> None:
    for scene in SCENES[:6]:
        for ex in scene_examples(scene):
            enc = encode_example(processor, scene.image, ex.prompt, ex.answer)
            prompt = processor(text=ex.prompt, images=scene.image, return_tensors="pt")
            whole = processor(text=ex.prompt + ex.answer, images=scene.image, return_tensors="pt")
            n_prompt = prompt["input_ids"].shape[1]
            assert enc.input_ids[:n_prompt] == prompt["input_ids"][0].tolist()
            # the processor's own tokenization of prompt + answer starts the same way
            assert whole["input_ids"][0, :n_prompt].tolist() == enc.input_ids[:n_prompt]
            # the answer as the model should write it ("</object>," with no space piece), then "</s>"
            assert enc.input_ids[n_prompt:] == answer_token_ids(processor.tokenizer, ex.answer) + [
                processor.tokenizer.eos_token_id]
            assert torch.equal(enc.pixel_values, prompt["pixel_values"][0])
            assert enc.image_embeds_position_mask == prompt["image_embeds_position_mask"][0].tolist() + [0] * (
                len(enc.input_ids) - n_prompt)


def test_labels_are_ignored_exactly_on_image_and_prompt(processor) -> None:
    scene = SCENES[0]
    for ex in scene_examples(scene):
        enc = encode_example(processor, scene.image, ex.prompt, ex.answer)
        n_prompt = len(processor(text=ex.prompt, images=scene.image)["input_ids"])
        assert len(enc.labels) == len(enc.input_ids) == len(enc.image_embeds_position_mask)
        assert enc.labels[:n_prompt] == [IGNORE] * n_prompt
        assert enc.labels[n_prompt:] == enc.input_ids[n_prompt:]
        assert IGNORE not in enc.labels[n_prompt:]
        assert enc.labels[-1] == processor.tokenizer.eos_token_id
        # the 64 image positions sit between <image> and </image>, all inside the ignored part
        tokens = processor.tokenizer.convert_ids_to_tokens(enc.input_ids)
        image_positions = [i for i, m in enumerate(enc.image_embeds_position_mask) if m]
        assert image_positions == list(range(tokens.index("<image>") + 1, tokens.index("</image>")))
        assert len(image_positions) == 64 and max(image_positions) < n_prompt


def test_collate_right_pads_with_ignored_labels(processor) -> None:
    scene = SCENES[1]
    examples = scene_examples(scene)
    short = next(e for e in examples if e.task == "comprehension")
    long = next(e for e in examples if e.task == "detail")
    a = encode_example(processor, scene.image, short.prompt, short.answer)
    b = encode_example(processor, scene.image, long.prompt, long.answer)
    a.look = [None] * (len(a.input_ids) - 2) + [[0, 9], None]
    pad = processor.tokenizer.pad_token_id
    batch = collate([a, b], pad, GRID)
    n = max(len(a.input_ids), len(b.input_ids))
    assert len(a.input_ids) != len(b.input_ids)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, n)
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    for row, enc in enumerate((a, b)):
        k = len(enc.input_ids)
        assert batch["input_ids"][row, :k].tolist() == enc.input_ids
        assert batch["input_ids"][row, k:].tolist() == [pad] * (n - k)
        assert batch["labels"][row, k:].tolist() == [IGNORE] * (n - k)
        assert batch["attention_mask"][row].tolist() == [1] * k + [0] * (n - k)
        assert batch["image_embeds_position_mask"][row].tolist() == enc.image_embeds_position_mask + [0] * (n - k)
    look = batch["look"]
    assert look.dtype == torch.bool and look.shape == (2, n, GRID * GRID)
    assert look[0, len(a.input_ids) - 2].nonzero().flatten().tolist() == [0, 9]
    assert look.sum().item() == 2, "only the given cells are set"


# --------------------------------------------------------------------------------------------- targets


def _cells(x0: int, y0: int, x1: int, y1: int) -> list[int]:
    """Patches of columns x0..x1 and rows y0..y1 (inclusive) on the 8 × 8 grid."""
    return [r * GRID + c for r in range(y0, y1 + 1) for c in range(x0, x1 + 1)]


def test_patch_set_takes_the_patches_whose_centre_is_inside() -> None:
    assert patch_set((0.0, 0.0, 0.5, 0.5), GRID) == _cells(0, 0, 3, 3)
    assert patch_set((0.3, 0.55, 0.72, 1.0), GRID) == _cells(2, 4, 5, 7)
    # a box between centres falls back to the patch of its own centre
    assert patch_set((0.13, 0.13, 0.18, 0.18), GRID) == [1 * GRID + 1]


def test_dense_targets_mark_kind_and_box_edges_per_patch() -> None:
    scene = draw_scene([("blue", "square", (0.0, 0.0, 0.5, 0.5)), (None, "fire", (0.55, 0.6, 0.95, 0.98))])
    what, where = dense_targets(scene, GRID)
    assert what.shape == (GRID * GRID,) and where.shape == (GRID * GRID, 4)
    square = _cells(0, 0, 3, 3)
    fire = patch_set((0.55, 0.6, 0.95, 0.98), GRID)
    assert what[square].tolist() == [KINDS.index(("blue", "square")) + 1] * len(square)
    assert what[fire].tolist() == [KINDS.index((None, "fire")) + 1] * len(fire)
    background = sorted(set(range(GRID * GRID)) - set(square) - set(fire))
    assert what[background].tolist() == [0] * len(background)
    assert where[square].tolist() == [[0, 0, 16, 16]] * len(square)
    assert where[fire].tolist() == [[17, 19, 30, 31]] * len(fire)
    assert (where[background] == IGNORE).all()


def test_dense_targets_let_the_smaller_object_win_an_overlap() -> None:
    scene = draw_scene([("red", "square", (0.0, 0.0, 1.0, 1.0)), ("green", "circle", (0.25, 0.25, 0.5, 0.5))])
    what, _ = dense_targets(scene, GRID)
    small = patch_set((0.25, 0.25, 0.5, 0.5), GRID)
    assert what[small].tolist() == [KINDS.index(("green", "circle")) + 1] * len(small)
    assert (what == KINDS.index(("red", "square")) + 1).sum().item() == GRID * GRID - len(small)


def test_attention_targets_of_a_caption_follow_groups_and_boxes(processor) -> None:
    scene = draw_scene([("red", "circle", (0.05, 0.1, 0.3, 0.4)), ("red", "circle", (0.6, 0.1, 0.9, 0.4)),
                        (None, "snowman", (0.35, 0.5, 0.6, 0.95))])
    ex = Example("caption", CAPTION_PROMPT, caption_answer(scene), tuple(scene.objects))
    enc = encode_example(processor, scene.image, ex.prompt, ex.answer)
    tokens = _answer_tokens(processor, enc)
    targets = attention_targets(tokens, ex, scene, GRID)
    assert len(targets) == len(tokens)
    circles, snowman = scene.groups[0], scene.groups[1]
    both_circles = sorted(set(patch_set(circles[0].box, GRID)) | set(patch_set(circles[1].box, GRID)))
    locations = [(i, t) for i, t in enumerate(tokens) if t.startswith("<patch_index_")]
    assert len(locations) == 6
    # location tokens: box k of a phrase looks at object k, both tokens of a box alike
    want = [circles[0], circles[0], circles[1], circles[1], snowman[0], snowman[0]]
    for (i, token), obj in zip(locations, want):
        assert targets[i] == patch_set(obj.box, GRID), token
    # the words of a phrase look at the whole group; words outside phrases have no target
    for i, token in enumerate(tokens):
        if token in ("▁two", "▁red", "▁circles"):
            assert targets[i] == both_circles
        if token in ("▁a", "▁snowman"):
            assert targets[i] == patch_set(snowman[0].box, GRID)
        if token in ("▁and", ".", "</s>"):
            assert targets[i] is None


def test_attention_targets_of_comprehension_and_questions(processor) -> None:
    for scene in SCENES[:6]:
        for ex in scene_examples(scene):
            if ex.task not in ("comprehension", "qa", "generation"):
                continue
            enc = encode_example(processor, scene.image, ex.prompt, ex.answer)
            tokens = _answer_tokens(processor, enc)
            targets = attention_targets(tokens, ex, scene, GRID)
            if ex.task == "comprehension":
                locs = [i for i, t in enumerate(tokens) if t.startswith("<patch_index_")]
                assert [targets[i] for i in locs] == [patch_set(o.box, GRID) for o in ex.target for _ in (0, 1)]
                assert tokens[-1] == "</s>" and targets[-1] is None
            else:
                cells = patch_set(ex.target[0].box, GRID)
                assert targets[:-2] == [cells] * (len(tokens) - 2)
                assert tokens[-2:] == [".", "</s>"] and targets[-2:] == [None, None]


def test_draw_batch_shifts_targets_to_the_position_that_predicts_the_token(processor, monkeypatch) -> None:
    import helpers.world.training as training

    calls = []

    def recording(tokens, example, scene, grid):
        result = attention_targets(tokens, example, scene, grid)
        calls.append((list(tokens), result))
        return result

    monkeypatch.setattr(training, "attention_targets", recording)
    batch, what, where = draw_batch(random.Random(4), processor, 8, GRID)
    assert what.shape == (8, GRID * GRID) and where.shape == (8, GRID * GRID, 4)
    assert len(calls) == len(batch)
    for enc, (tokens, targets) in zip(batch, calls):
        n_prompt = enc.labels.count(IGNORE)
        assert tokens == processor.tokenizer.convert_ids_to_tokens(enc.input_ids[n_prompt:])
        assert len(enc.look) == len(enc.input_ids)
        # the logits at position p predict token p + 1, so token i of the answer is looked for at n_prompt - 1 + i
        assert enc.look[n_prompt - 1:-1] == targets
        assert all(c is None for c in enc.look[:n_prompt - 1]) and enc.look[-1] is None
    assert any(t is not None for _, targets in calls for t in targets)


# --------------------------------------------------------------------------------------------- location tokens


def _similarity(features: torch.Tensor) -> torch.Tensor:
    f = F.normalize(features, dim=-1)
    return f @ f.T


def _chebyshev(n: int = 32) -> torch.Tensor:
    idx = torch.arange(n * n)
    col, row = idx % n, idx // n
    return torch.maximum((col[:, None] - col[None]).abs(), (row[:, None] - row[None]).abs())


def test_location_features_shape_and_layout() -> None:
    feats = location_features(32, 24)
    assert feats.shape == (1024, 24)
    # first half: the column, second half: the row
    assert torch.equal(feats[5, :12], feats[3 * 32 + 5, :12])
    assert torch.equal(feats[3 * 32, 12:], feats[3 * 32 + 31, 12:])
    assert len({tuple(r) for r in feats.tolist()}) == 1024, "two bins got the same features"


def test_location_features_single_out_each_bin_and_favour_neighbours() -> None:
    """What the recipe relies on: every bin is most alike to itself, its direct neighbours are on average
    more alike than bins at any larger distance, and bins 8 or more apart are, on average, clearly less alike."""
    sim, dist = _similarity(location_features(32, 24)), _chebyshev()
    others = sim.clone()
    others.fill_diagonal_(-2.0)
    assert torch.all(sim.diagonal() > others.max(dim=1).values + 1e-3), "a bin is as alike to another as to itself"
    means = {d: sim[dist == d].mean().item() for d in range(1, 32)}
    assert all(means[1] > means[d] for d in range(2, 32)), means
    assert sim[dist >= 8].mean().item() < 0.5 * means[1], means


def test_location_features_fall_steadily_with_distance_along_a_row_and_a_column() -> None:
    """No repeating wave: from every bin, the likeness to the bins of its row (and column) falls with each
    step away, so a bin 4 or 8 bins away never looks like a neighbour."""
    sim = _similarity(location_features(32, 24)).reshape(32, 32, 32, 32)  # (row, col, row', col')
    for r in range(32):
        for c in range(32):
            row = sim[r, c, r]  # similarity to every bin of the same row
            right, left = row[c:], row[: c + 1].flip(0)
            for side in (right, left):
                assert torch.all(side[1:] < side[:-1] - 1e-4), (r, c, side)
            col = sim[r, c, :, c]
            for side in (col[r:], col[: r + 1].flip(0)):
                assert torch.all(side[1:] < side[:-1] - 1e-4), (r, c, side)
    # the ends of an axis are the least alike pair on it
    assert sim[16, 0, 16, 31] < sim[16, 0, 16, 8]


def test_new_model_starts_with_the_location_features(processor) -> None:
    model = tiny_model(processor)
    first = processor.tokenizer.convert_tokens_to_ids("<patch_index_0000>")
    emb = model.get_input_embeddings().weight.detach()
    assert torch.allclose(emb[first:first + 1024, :24], 0.08 * location_features(32, 24))
    # the output layer shares these weights, so predicting a bin starts out spatially ordered too
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    # a fresh model from the same seed is identical; another seed is not
    again, other = tiny_model(processor), tiny_model(processor, seed=1)
    assert torch.equal(again.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert not torch.equal(other.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_init_location_embeddings_leaves_other_tokens_alone(processor) -> None:
    model = tiny_model(processor)
    before = model.get_input_embeddings().weight.detach().clone()
    init_location_embeddings(model, processor, scale=0.5)
    after = model.get_input_embeddings().weight.detach()
    first = processor.tokenizer.convert_tokens_to_ids("<patch_index_0000>")
    assert torch.equal(after[:first], before[:first])
    assert torch.equal(after[first + 1024:], before[first + 1024:])
    assert torch.allclose(after[first:first + 1024, :24], 0.5 * location_features(32, 24))
    assert torch.allclose(after[first:first + 1024, 24:], 0.25 * before[first:first + 1024, 24:])


def test_location_token_box_matches_the_processor_layout() -> None:
    # row-major bins: index 528 is row 16, column 16, the bin just right of the image centre
    assert patch_index_to_box(528, 528) == (0.5, 0.5, 0.53125, 0.53125)


# --------------------------------------------------------------------------------------------- training


def test_dense_heads_loss_is_finite_and_ignores_background_edges() -> None:
    heads = DenseHeads(16)
    patches = torch.randn(2, GRID * GRID, 16)
    what = torch.zeros(2, GRID * GRID, dtype=torch.long)
    where = torch.full((2, GRID * GRID, 4), IGNORE, dtype=torch.long)
    where[0, 0] = torch.tensor([0, 0, 3, 3])
    loss = heads.loss(patches, what, where)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert heads.where.weight.grad is not None and heads.where.weight.grad.abs().sum() > 0


def test_a_three_step_run_trains_and_returns_a_usable_model(processor) -> None:
    model = tiny_model(processor)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lines: list[str] = []
    cfg = TrainConfig(vision_steps=1, steps=2, batch_size=2, warmup=1)
    trained, proc, history = train(cfg, processor=processor, model=model, log=lines.append)
    assert trained is model and proc is processor
    # a point every 25 joint steps, and the last step always: it tells how far a run got
    assert [(h["stage"], h["step"]) for h in history] == [("vision", 0), ("joint", 0), ("joint", 1)]
    for entry in history:
        losses = [v for k, v in entry.items() if k.endswith("_loss")]
        assert losses and all(math.isfinite(v) and v > 0 for v in losses)
    assert any("text loss" in line for line in lines)
    after = trained.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("vision_model") for k in changed)
    assert any(k.startswith("text_model") for k in changed)
    assert not trained.training and trained.config._attn_implementation == "sdpa"
    # it generates (nonsense, after three steps)
    inputs = processor(text=CAPTION_PROMPT, images=SCENES[0].image, return_tensors="pt")
    out = trained.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 3


def test_train_refuses_a_grid_that_does_not_match_the_image_tokens(processor) -> None:
    with pytest.raises(ValueError, match="latent_query_num must be 16"):
        train(TrainConfig(patch_size=16, vision_steps=1, steps=1, batch_size=1), processor=processor,
              log=lambda _: None)


def test_the_command_line_writes_model_checkpoint_and_training_record(tmp_path) -> None:
    from transformers import AutoModelForImageTextToText

    from helpers.world.training import main

    out, ckpt = tmp_path / "model", tmp_path / "ckpt"
    main(["--out", str(out), "--vision-steps", "1", "--steps", "2", "--batch-size", "1", "--no-evaluate",
          "--checkpoint", str(ckpt), "--checkpoint-minutes", "0", "--fp4-share", "0.5", "--nf4-share", "0.25"])
    record = json.loads((out / "training.json").read_text())
    assert record["config"]["checkpoint"] == str(ckpt) and record["config"]["steps"] == 2
    assert record["config"]["fp4_share"] == 0.5 and record["config"]["nf4_share"] == 0.25
    assert [h["stage"] for h in record["history"]] == ["vision", "joint", "joint"]
    assert record["seconds"] > 0 and record["hardware"] == describe_device("cpu")
    assert record["location_features"] == LOCATION_FEATURES
    for folder in (out, ckpt):
        assert (folder / "model.safetensors").is_file() and (folder / "processor_config.json").is_file()
        assert (folder / "training_heads.safetensors").is_file()
    # a checkpoint carries its own record, so a run killed between checkpoints resumes with its history
    assert json.loads((ckpt / "training.json").read_text())["config"]["checkpoint"] == str(ckpt)
    assert isinstance(AutoModelForImageTextToText.from_pretrained(out).config.latent_query_num, int)


def test_worker_processes_draw_reproducible_batches_of_their_own(processor) -> None:
    from functools import partial

    from helpers.world.training import batches, joint_batch

    cfg = TrainConfig(batch_size=3, workers=2, group_weight=0.3, pair_share=0.5)
    def first_two():
        stream = batches(partial(joint_batch, processor=processor, cfg=cfg, grid=GRID), random.Random(0), cfg, 2)
        out = [next(stream), next(stream)]
        stream.close()
        return out
    one, two = first_two(), first_two()
    in_process = joint_batch(random.Random(0), processor, cfg, GRID)
    assert set(one[0]) == set(in_process) >= {"input_ids", "labels", "look", "what", "where", "count", "place"}
    assert one[0]["pixel_values"].shape == in_process["pixel_values"].shape
    assert one[0]["count"].shape == (3, GRID * GRID)
    for a, b in zip(one, two):  # the same seed gives the same batches, worker by worker
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(one[0]["pixel_values"], one[1]["pixel_values"])  # each worker has its own stream


def test_train_refuses_a_negative_number_of_workers(processor) -> None:
    with pytest.raises(ValueError, match="workers must be 0 or more"):
        train(TrainConfig(workers=-1, vision_steps=1, steps=1, batch_size=1), processor=processor,
              log=lambda _: None)


def test_a_bf16_run_computes_in_bfloat16_and_keeps_float32_weights(processor) -> None:
    model = tiny_model(processor)
    seen: list[torch.dtype] = []
    hook = model.text_model.model.layers[0].self_attn.register_forward_hook(lambda m, a, out: seen.append(out[0].dtype))
    trained, _, history = train(TrainConfig(vision_steps=1, steps=2, batch_size=2, warmup=1, bf16=True),
                                processor=processor, model=model, log=lambda _: None)
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
    assert all(math.isfinite(v) for h in history for k, v in h.items() if k.endswith("_loss"))


# --------------------------------------------------------------------------------------------- count words


def test_count_words_are_the_first_word_of_every_grounded_phrase(processor) -> None:
    scene = next(s for s in SCENES if any(len(g) > 1 for g in s.groups) and len(s.groups) > 1)
    enc = encode_example(processor, scene.image, CAPTION_PROMPT, caption_answer(scene))
    tokens = _answer_tokens(processor, enc)
    words = [tokens[i] for i in count_word_positions(tokens)]
    expected = ["▁two" if len(g) > 1 else "▁" + g[0].phrase.split()[0] for g in scene.groups]
    assert words == expected
    assert count_word_positions(["▁It", "▁is", "▁a", "▁red", "▁circle", "."]) == []


def test_draw_batch_marks_count_words_at_their_label_positions(processor) -> None:
    batch, _, _ = draw_batch(random.Random(5), processor, 16, GRID)
    marked = 0
    for enc in batch:
        for pos in enc.count_words:
            assert enc.labels[pos] != IGNORE
            assert processor.tokenizer.convert_ids_to_tokens(enc.input_ids[pos - 1]) == "<phrase>"
        marked += len(enc.count_words)
    assert marked > 0
    b = collate(batch, processor.tokenizer.pad_token_id, GRID)
    assert b["count_words"].sum().item() == marked


def test_count_word_loss_is_the_cross_entropy_of_exactly_the_marked_labels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE, 3, 4, 1, 2], [IGNORE, IGNORE, 6, 0, 5]])
    where = torch.zeros(2, 5, dtype=torch.bool)
    where[0, 2] = where[1, 4] = True
    expected = (F.cross_entropy(logits[0, 1][None], labels[0, 2][None])
                + F.cross_entropy(logits[1, 3][None], labels[1, 4][None])) / 2
    assert torch.allclose(count_word_loss(logits, labels, where), expected)
    assert count_word_loss(logits, labels, torch.zeros_like(where)).item() == 0.0


CAPTIONS_ONLY = {"caption": 1.0, "detail": 0.0, "comprehension": 0.0, "qa": 0.0, "generation": 0.0}


def _one_joint_batch(monkeypatch, processor, cfg: TrainConfig) -> dict:
    """Make every joint step of ``train`` see the same batch (drawn once): losses logged step after step then
    show what the steps before them learned."""
    import helpers.world.training as training
    from helpers.world.training import joint_batch

    batch = joint_batch(random.Random(0), processor, cfg, GRID)
    monkeypatch.setattr(training, "joint_batch", lambda *args, **kwargs: batch)
    return batch


def test_a_run_with_count_weight_logs_and_learns_the_count_loss(processor, monkeypatch) -> None:
    """On one batch of captions, the count loss falls faster with count_weight 1 than with a weight of 0.001
    (which still logs it): the term's gradient reaches the model. The text loss covers the count words too,
    so the count loss falls a little in both runs."""
    def count_losses(weight: float) -> list[float]:
        cfg = TrainConfig(vision_steps=0, steps=4, batch_size=4, warmup=1, count_weight=weight, log_every=1,
                          task_weights=CAPTIONS_ONLY)
        batch = _one_joint_batch(monkeypatch, processor, cfg)
        assert batch["count_words"].sum() > 0
        _, _, history = train(cfg, processor=processor, model=tiny_model(processor), log=lambda _: None)
        losses = [h["count_loss"] for h in history if h["stage"] == "joint"]
        assert len(losses) == 4 and all(math.isfinite(v) and v > 0 for v in losses)
        return losses

    weighted, faint = count_losses(1.0), count_losses(0.001)
    assert weighted[0] == faint[0]  # the same model on the same batch
    assert weighted[-1] < weighted[0] - 0.5
    assert weighted[-1] < faint[-1] - 0.1, (weighted, faint)


# --------------------------------------------------------------------------------------------- task mix


def test_task_weights_override_the_named_tasks_and_keep_the_others() -> None:
    from helpers.world.training import TASK_WEIGHTS, parse_task_weights

    mix = parse_task_weights("comprehension=0.3, detail=0")
    assert mix == {**TASK_WEIGHTS, "comprehension": 0.3, "detail": 0.0}
    for bad, message in [("reading=0.2", "TASK one of caption"), ("caption", "TASK=WEIGHT"),
                         ("qa=-1", "'qa' must be a number >= 0"), ("qa=lots", "'qa' must be a number"),
                         (",".join(f"{t}=0" for t in TASK_WEIGHTS), "at least one task")]:
        with pytest.raises(ValueError, match=message):
            parse_task_weights(bad)


def test_draw_batch_draws_only_the_tasks_of_the_mix(processor) -> None:
    only = {"caption": 0.0, "detail": 0.0, "comprehension": 1.0, "qa": 0.0, "generation": 0.0}
    batch, _, _ = draw_batch(random.Random(6), processor, 12, GRID, task_weights=only)
    for enc in batch:
        prompt = processor.tokenizer.decode(enc.input_ids[:enc.labels.count(IGNORE)])
        answer = _answer_tokens(processor, enc)
        assert answer[0] == "<object>" and "Question" not in prompt, prompt


def test_the_command_line_refuses_a_bad_task_mix_with_its_reason(capsys) -> None:
    from helpers.world.training import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--out", "x", "--task-weights", "reading=1"])
    assert "TASK one of caption" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- 4-bit-aware training


def test_linears_4bit_are_the_weights_load_in_4bit_converts(processor) -> None:
    from helpers.world.training import linears_4bit

    model = tiny_model(processor)
    weights = linears_4bit(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(weights) == len(linears) - 1  # all but lm_head
    assert all(w is not model.text_model.lm_head.weight for w in weights)


def _bnb_rounded(value: torch.Tensor, quant_type: str) -> torch.Tensor:
    """``value`` through bitsandbytes' own 4-bit round trip (blocks of 64, as ``load_in_4bit=True``): the oracle."""
    import bitsandbytes.functional as bnb

    packed, state = bnb.quantize_4bit(value.contiguous(), blocksize=64, quant_type=quant_type)
    return bnb.dequantize_4bit(packed, state).reshape(value.shape)


@pytest.mark.parametrize("quant_type", ["fp4", "nf4"])
def test_rounded_4bit_rounds_as_bitsandbytes_inside_and_restores_the_float_weights(processor, quant_type) -> None:
    from helpers.world.training import linears_4bit, rounded_4bit

    model = tiny_model(processor)
    weights = linears_4bit(model)
    before = [w.detach().clone() for w in weights]
    with rounded_4bit(weights, {quant_type: 1.0}, torch.Generator().manual_seed(0)):
        for w, value in zip(weights, before):
            assert torch.equal(w, _bnb_rounded(value, quant_type))
        assert not all(torch.equal(w, value) for w, value in zip(weights, before))
    assert all(torch.equal(w, value) for w, value in zip(weights, before))
    with rounded_4bit(weights, {"fp4": 0.0, "nf4": 0.0}, torch.Generator().manual_seed(0)):  # nothing is touched
        assert all(torch.equal(w, value) for w, value in zip(weights, before))


def test_rounded_4bit_rounds_about_each_share_and_gives_the_gradient_of_the_rounded_weights() -> None:
    from helpers.world.training import rounded_4bit

    layers = [torch.nn.Linear(64, 64) for _ in range(400)]
    weights = [layer.weight for layer in layers]
    before = [w.detach().clone() for w in weights]
    x = torch.randn(3, 64)
    with rounded_4bit(weights, {"fp4": 0.25, "nf4": 0.25}, torch.Generator().manual_seed(1)):
        seen = [w.detach().clone() for w in weights]
        kinds = [next((t for t in ("fp4", "nf4") if torch.equal(w, _bnb_rounded(value, t))),
                      "float" if torch.equal(w, value) else "other") for w, value in zip(seen, before)]
        sum((layer(x) ** 2).sum() for layer in layers).backward()
    assert "other" not in kinds
    assert all(60 < kinds.count(kind) < 140 for kind in ("fp4", "nf4"))  # a quarter of 400 each
    for layer, value, at in zip(layers, before, seen):  # the float weight is back, its gradient taken where it was
        assert torch.equal(layer.weight, value)
        expected = 2 * (x @ at.T + layer.bias).detach().T @ x
        torch.testing.assert_close(layer.weight.grad, expected)


def test_rounded_4bit_puts_the_weights_back_when_the_pass_fails(processor) -> None:
    from helpers.world.training import linears_4bit, rounded_4bit

    model = tiny_model(processor)
    weights = linears_4bit(model)
    before = [w.detach().clone() for w in weights]
    with pytest.raises(RuntimeError, match="inside"):
        with rounded_4bit(weights, {"fp4": 0.5, "nf4": 0.5}, torch.Generator().manual_seed(0)):
            raise RuntimeError("a failure inside the pass")
    assert all(torch.equal(w, value) for w, value in zip(weights, before))


def test_a_run_with_4bit_shares_trains_and_keeps_float_weights(processor, monkeypatch) -> None:
    """On one batch, a run whose passes round the weights to FP4 / NF4 lowers its text loss, ends with float
    weights, and ends elsewhere than the same run without rounding (the rounded passes gave the gradients)."""
    def run(fp4: float, nf4: float):
        cfg = TrainConfig(vision_steps=0, steps=3, batch_size=2, warmup=1, fp4_share=fp4, nf4_share=nf4, log_every=1)
        _one_joint_batch(monkeypatch, processor, cfg)
        model = tiny_model(processor)
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        trained, _, history = train(cfg, processor=processor, model=model, log=lambda _: None)
        return before, trained, history

    before, trained, history = run(0.5, 0.5)
    assert all(math.isfinite(v) for h in history for k, v in h.items() if k.endswith("_loss"))
    text = [h["text_loss"] for h in history if h["stage"] == "joint"]
    assert len(text) == 3 and text[-1] < text[0] - 0.3, text
    fc1 = trained.text_model.model.layers[0].ffn.fc1.weight
    assert not torch.equal(fc1, before["text_model.model.layers.0.ffn.fc1.weight"])
    # float weights, not the 16 levels per block of FP4 or NF4
    assert fc1.unique().numel() > 64
    _, plain, _ = run(0.0, 0.0)
    assert not torch.equal(fc1, plain.text_model.model.layers[0].ffn.fc1.weight)


@pytest.mark.parametrize("fp4, nf4", [(-0.1, 0.0), (1.5, 0.0), (0.0, -0.2), (0.6, 0.5)])
def test_train_refuses_4bit_shares_below_0_or_adding_up_past_1(processor, fp4, nf4) -> None:
    with pytest.raises(ValueError, match="must be 0 or more and add up to at most 1, got"):
        train(TrainConfig(fp4_share=fp4, nf4_share=nf4, vision_steps=1, steps=1, batch_size=1), processor=processor,
              log=lambda _: None)


@pytest.mark.parametrize("shares", [{"fp4_share": 0.5}, {"nf4_share": 0.5}])
def test_train_with_a_4bit_share_says_what_to_install_without_bitsandbytes(processor, monkeypatch, shares) -> None:
    import helpers.grounding.quantization as quant

    monkeypatch.setattr(quant, "installed_version", lambda name: None)  # as if bitsandbytes were not installed
    with pytest.raises(quant.QuantizationError, match="needs bitsandbytes >= .* which is not installed"):
        train(TrainConfig(**shares, vision_steps=1, steps=1, batch_size=1), processor=processor,
              log=lambda _: None)
