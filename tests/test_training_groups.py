"""helpers.world.training, the recipe's additions for counting and grouping: group targets per patch, the
training-only mix of harder scenes, the group heads, saved heads that a resumed run continues with, a run
that stops cleanly on SIGTERM, and the record of every stage of a resumed run."""

from __future__ import annotations

import json
import os
import random
import signal

import pytest
import torch

from helpers.world.scenes import draw_scene, sample_scene
from helpers.world.training import (
    GROUP_COUNTS,
    GROUP_PLACES,
    HEADS_FILE,
    DenseHeads,
    _StopFlag,
    dense_targets,
    group_targets,
    load_heads,
    save_heads,
    training_scene,
)

GRID = 8


def test_group_targets_give_each_patch_its_group_size_and_caption_place() -> None:
    # two red circles on the left and right, a blue square in the middle (groups are ordered left to right)
    scene = draw_scene([("red", "circle", (0.0, 0.0, 0.3, 0.3)), ("red", "circle", (0.7, 0.0, 1.0, 0.3)),
                        ("blue", "square", (0.4, 0.6, 0.6, 0.9))], size=(64, 64))
    count, place = group_targets(scene, GRID)
    assert count.shape == place.shape == (GRID * GRID,)
    what, _ = dense_targets(scene, GRID)
    # exactly the patches an object covers get a group
    assert torch.equal(count > 0, what > 0) and torch.equal(place > 0, what > 0)
    top_left, top_right, middle = 0 * GRID + 0, 0 * GRID + 7, 6 * GRID + 3
    assert count[top_left] == count[top_right] == 2 and count[middle] == 1
    assert [g[0].name for g in scene.groups] == ["red circle", "blue square"]
    assert place[top_left] == place[top_right] == 1 and place[middle] == 2
    assert int(count.max()) < GROUP_COUNTS and int(place.max()) < GROUP_PLACES


def test_training_scene_mixes_in_more_pairs_and_three_kinds_without_changing_the_world() -> None:
    def shares(pair, three, n=300):
        rng = random.Random(7)
        scenes = [training_scene(rng, pair, three) for _ in range(n)]
        return (sum(any(len(g) > 1 for g in s.groups) for s in scenes) / n,
                sum(len(s.groups) >= 3 for s in scenes) / n, scenes)

    plain_pairs, plain_three, plain = shares(0.0, 0.0)
    pairs, _, _ = shares(0.6, 0.0)
    _, three, _ = shares(0.0, 0.6)
    assert pairs > plain_pairs + 0.3 and three > plain_three + 0.25
    # every scene is a scene of the world: redrawn from its own seed, it is the same scene
    for scene in plain[:5]:
        again = sample_scene(scene.seed)
        assert again.objects == scene.objects and again.image.tobytes() == scene.image.tobytes()
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="pair_share must be a probability"):
            training_scene(random.Random(0), bad, 0.0)
        with pytest.raises(ValueError, match="three_share must be a probability"):
            training_scene(random.Random(0), 0.0, bad)


def test_group_heads_learn_and_leave_the_other_heads_alone() -> None:
    torch.manual_seed(0)
    heads = DenseHeads(16)
    patches = torch.randn(2, GRID * GRID, 16)
    # targets a linear head can learn: each patch's group size and place follow from its features
    count = (patches @ torch.randn(16, GROUP_COUNTS)).argmax(-1)
    place = (patches @ torch.randn(16, GROUP_PLACES)).argmax(-1)
    loss = heads.group_loss(patches, count, place)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert heads.count.weight.grad.abs().sum() > 0 and heads.place.weight.grad.abs().sum() > 0
    assert heads.what.weight.grad is None and heads.where.weight.grad is None
    # optimizer steps on the group loss alone fit the targets and leave the what / where heads as they were
    others = {k: v.detach().clone() for k, v in heads.state_dict().items() if k.startswith(("what.", "where."))}
    opt = torch.optim.AdamW(heads.parameters(), lr=0.05)
    first = loss.item()
    for _ in range(30):
        opt.zero_grad()
        heads.group_loss(patches, count, place).backward()
        opt.step()
    assert heads.group_loss(patches, count, place).item() < 0.3 * first
    assert all(torch.equal(heads.state_dict()[k], v) for k, v in others.items())


def test_group_loss_on_objects_only_ignores_background_patches() -> None:
    torch.manual_seed(0)
    heads = DenseHeads(16)
    patches = torch.randn(1, GRID * GRID, 16)
    count = torch.zeros(1, GRID * GRID, dtype=torch.long)
    place = torch.zeros(1, GRID * GRID, dtype=torch.long)
    count[0, :5], place[0, :5] = 2, 1  # five patches of an object; the rest background
    expected = (torch.nn.functional.cross_entropy(heads.count(patches[0, :5]), count[0, :5])
                + torch.nn.functional.cross_entropy(heads.place(patches[0, :5]), place[0, :5]))
    assert torch.allclose(heads.group_loss(patches, count, place, objects_only=True), expected)
    # background patches change the plain loss, not the objects-only one
    other = patches.clone()
    other[0, 5:] += 3.0
    assert torch.allclose(heads.group_loss(other, count, place, objects_only=True), expected)
    assert not torch.allclose(heads.group_loss(other, count, place), heads.group_loss(patches, count, place))


def test_heads_are_saved_and_loaded_and_older_files_leave_new_heads_fresh(tmp_path) -> None:
    torch.manual_seed(0)
    heads, token_heads = DenseHeads(16), DenseHeads(24)
    save_heads(tmp_path, heads, token_heads)
    assert (tmp_path / HEADS_FILE).is_file()
    other, other_tokens = DenseHeads(16), DenseHeads(24)
    assert load_heads(tmp_path, other, other_tokens) == []
    for a, b in ((heads, other), (token_heads, other_tokens)):
        for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(v, w), k
    # a file written before the group heads existed: what it has is loaded, the group heads stay fresh
    from safetensors.torch import load_file, save_file

    old = {k: v for k, v in load_file(str(tmp_path / HEADS_FILE)).items() if ".count." not in k and ".place." not in k}
    save_file(old, str(tmp_path / HEADS_FILE))
    fresh = DenseHeads(16), DenseHeads(24)
    missing = load_heads(tmp_path, *fresh)
    assert sorted(missing) == ["patches.count.bias", "patches.count.weight", "patches.place.bias",
                               "patches.place.weight", "tokens.count.bias", "tokens.count.weight",
                               "tokens.place.bias", "tokens.place.weight"]
    assert torch.equal(fresh[0].what.weight, heads.what.weight)
    # no file: everything is fresh; heads of another width: a clear error from torch
    assert len(load_heads(tmp_path / "nowhere", DenseHeads(16), DenseHeads(24))) == 16
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_heads(tmp_path, DenseHeads(8), DenseHeads(24))


def test_sigterm_asks_the_run_to_stop_and_the_old_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    flag = _StopFlag()
    assert flag.raised is None
    os.kill(os.getpid(), signal.SIGTERM)
    assert flag.raised == "SIGTERM"
    flag.restore()
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_resumed_run_records_every_stage_and_continues_with_the_saved_heads(tmp_path) -> None:
    from helpers.world.training import main

    first, second = tmp_path / "first", tmp_path / "second"
    main(["--out", str(first), "--vision-steps", "1", "--steps", "2", "--batch-size", "1", "--no-evaluate"])
    assert (first / HEADS_FILE).is_file()
    main(["--out", str(second), "--resume", str(first), "--vision-steps", "1", "--steps", "2", "--batch-size", "2",
          "--group-weight", "0.3", "--pair-share", "0.5", "--three-share", "0.5", "--no-evaluate"])
    one, two = (json.loads((d / "training.json").read_text()) for d in (first, second))
    assert "stages" not in one
    assert [st["config"]["batch_size"] for st in two["stages"]] == [1, 2]
    assert two["config"]["group_weight"] == 0.3 and two["config"]["pair_share"] == 0.5
    assert two["seconds"] == pytest.approx(one["seconds"] + two["stages"][1]["seconds"], abs=0.2)
    joint = [h for h in two["history"] if h["stage"] == "joint"]
    assert joint and all("group_loss" in h and h["group_loss"] > 0 for h in joint)
    assert (second / HEADS_FILE).is_file()
    # the resumed run did not initialise the location tokens: it names the features its first run started from
    assert one["location_features"] == two["location_features"] == two["stages"][0]["location_features"] is not None


def test_the_heads_stage_trains_only_the_heads(tmp_path) -> None:
    from helpers.world.training import TrainConfig, new_model, train
    from helpers.world.language import build_processor

    processor = build_processor(64)
    model = new_model(processor, vision_layers=1, text_layers=1, vision_dim=32, text_dim=48, heads=2)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    start = DenseHeads(32), DenseHeads(48)
    save_heads(tmp_path, *start)
    kept: list = []
    lines: list[str] = []
    _, _, history = train(TrainConfig(heads_steps=2, vision_steps=0, steps=0, batch_size=2, group_weight=0.3),
                          processor=processor, model=model, log=lines.append, heads_from=tmp_path, keep_heads=kept)
    assert [h["stage"] for h in history] == ["heads", "heads"] and any("heads step" in x for x in lines)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the model changed"
    heads, token_heads = kept[0]
    for name in ("what", "where", "count", "place"):
        assert not torch.equal(getattr(heads, name).weight, getattr(start[0], name).weight), name
        assert not torch.equal(getattr(token_heads, name).weight, getattr(start[1], name).weight), name


def test_sigterm_in_an_early_stage_skips_the_rest_and_returns_the_model() -> None:
    from helpers.world.language import build_processor
    from helpers.world.training import TrainConfig, new_model, train

    processor = build_processor(64)
    model = new_model(processor, vision_layers=1, text_layers=1, vision_dim=32, text_dim=48, heads=2)
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("heads step"):
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would, during the first stage

    before = signal.getsignal(signal.SIGTERM)
    cfg = TrainConfig(heads_steps=5, vision_steps=5, steps=5, batch_size=1, warmup=1)
    trained, _, history = train(cfg, processor=processor, model=model, log=log)
    assert trained is model and [h["stage"] for h in history] == ["heads"]
    assert lines[-1] == "stopped by signal SIGTERM at joint step 0"
    assert signal.getsignal(signal.SIGTERM) == before and not trained.training
