"""helpers.world.new_kinds: the demonstration's training and held-out star scenes never share a seed."""

from __future__ import annotations

import os

import pytest

from helpers.grounding import evaluation
from helpers.world import new_kinds
from helpers.world.new_kinds import MAX_TRAIN_IMAGES, SEED_STRIDE, STARS_HELD_OUT_SEED, STARS_TRAIN_SEED


def test_the_largest_training_set_stops_below_the_held_out_seeds() -> None:
    last_training_seed = STARS_TRAIN_SEED * SEED_STRIDE + MAX_TRAIN_IMAGES - 1
    assert last_training_seed == STARS_HELD_OUT_SEED * SEED_STRIDE - 1
    # one more training scene would be held-out scene 0, drawn from the same seed
    assert STARS_TRAIN_SEED * SEED_STRIDE + MAX_TRAIN_IMAGES == STARS_HELD_OUT_SEED * SEED_STRIDE


def test_held_out_seed_means_the_worlds_evaluation_seed_in_every_module() -> None:
    """new_kinds.HELD_OUT_SEED was the stars' held-out seed (8), evaluation.HELD_OUT_SEED the world's. That no other
    module defines a HELD_OUT_SEED of its own is test_one_rule.py::test_a_rule_lives_in_one_module's check."""
    assert new_kinds.HELD_OUT_SEED == evaluation.HELD_OUT_SEED
    assert evaluation.HELD_OUT_SEED not in (STARS_TRAIN_SEED, STARS_HELD_OUT_SEED)


def test_finetune_demo_refuses_more_training_images_than_the_seeds_allow(tmp_path, monkeypatch, capsys) -> None:
    """--train-images above MAX_TRAIN_IMAGES used to draw held-out scenes into the training data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(new_kinds, "write_coco", lambda *a, **k: pytest.fail("data was written"))
    monkeypatch.setattr(new_kinds, "_run", lambda *a, **k: 0)  # the checks passed: no work in this test
    assert new_kinds.main(["--out", "out", "--train-images", str(MAX_TRAIN_IMAGES + 1)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("python -m helpers finetune-demo: error: --train-images must be at most "
                                           f"{MAX_TRAIN_IMAGES}")
    assert os.listdir(tmp_path) == []
    assert new_kinds.main(["--out", "out", "--train-images", str(MAX_TRAIN_IMAGES)]) == 0
