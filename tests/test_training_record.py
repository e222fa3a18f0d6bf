"""A training record (training.json) read back: read_training, recorded_runs and joint_curve."""

from __future__ import annotations

import json

import pytest

from helpers import joint_curve, read_training, recorded_runs


def _run(points: list[tuple[str, int, float]]) -> dict:
    history = [{"stage": stage, "step": step, "text_loss": loss} for stage, step, loss in points]
    return {"config": {}, "history": history}


def test_joint_curve_counts_the_steps_of_resumed_runs_on_and_skips_other_stages() -> None:
    first = _run([("vision", 10, 9.0), ("joint", 25, 3.0), ("joint", 50, 2.0)])
    second = _run([("heads", 5, 8.0), ("joint", 25, 1.5)])
    second["history"].append({"stage": "joint", "step": 50, "dense_loss": 0.7})  # no text loss at this point
    resumed = {**second, "stages": [first, second]}
    assert recorded_runs(resumed) == [first, second] and recorded_runs(first) == [first]
    assert joint_curve(resumed, "text_loss") == [(25, 3.0), (50, 2.0), (75, 1.5)]
    assert joint_curve(resumed, "dense_loss") == [(100, 0.7)]
    assert joint_curve({"history": []}, "text_loss") == [] and joint_curve({}, "text_loss") == []
    with pytest.raises(TypeError, match="record must be a training record"):
        joint_curve([first], "text_loss")


def test_read_training_gives_an_empty_record_or_names_a_broken_file(tmp_path) -> None:
    assert read_training(tmp_path) == {}
    (tmp_path / "training.json").write_text(json.dumps(_run([("joint", 25, 3.0)])), encoding="utf-8")
    assert joint_curve(read_training(tmp_path), "text_loss") == [(25, 3.0)]
    (tmp_path / "training.json").write_text("{", encoding="utf-8")
    broken = r"training record '.*training\.json' is not valid JSON: .*; expected the record of the run"
    with pytest.raises(ValueError, match=broken):
        read_training(tmp_path)
