"""The model card lists every recorded training run as a command that repeats it, with its steps per second."""

from __future__ import annotations

import json
import shlex

import pytest

from helpers.course.paths import bundled_model_dir
from helpers.world.modelcard import _NOT_RECIPE, joint_steps, rounding_4bit, run_commands
from helpers.world.training import build_parser, recorded_runs

SHIPPED = json.loads((bundled_model_dir() / "training.json").read_text())


def _two_runs() -> dict:
    """The shipped record with one more run on top, as a resumed run records it."""
    extra = {"config": {**recorded_runs(SHIPPED)[-1]["config"], "lr": 2e-4, "batch_size": 32, "group_weight": 1.0,
                        "group_on_objects": True, "count_weight": 1.0, "pair_share": 0.35, "bf16": True,
                        "vision_steps": 400, "minutes": 12.0, "fp4_share": 0.5,
                        "task_weights": {"caption": 0.3, "detail": 0.05, "comprehension": 0.3, "qa": 0.15,
                                         "generation": 0.2}},
             "seconds": 800.0,
             "history": [{"stage": "joint", "step": 0, "text_loss": 0.1, "seconds": 0.5},
                         {"stage": "joint", "step": 1399, "text_loss": 0.1, "seconds": 700.0}]}
    return {**extra, "stages": recorded_runs(SHIPPED) + [extra]}


@pytest.mark.parametrize("record", [SHIPPED, _two_runs()], ids=["shipped", "one more run"])
def test_each_command_parses_back_to_the_recorded_recipe(record) -> None:
    commands = run_commands(record, "data/kosmos2-tiny-world")
    runs = recorded_runs(record)
    assert len(commands) == len(runs)
    for k, (command, run) in enumerate(zip(commands, runs), 1):
        words = shlex.split(command)
        assert words[:4] == ["python", "-m", "helpers", "train"]
        args = vars(build_parser().parse_args(words[4:]))
        for key, value in run["config"].items():
            if key not in _NOT_RECIPE and key in args:
                assert args[key] == value, (k, key)
        assert str(args["out"]) == ("data/kosmos2-tiny-world" if k == len(runs) else f"run{k}")
        assert (str(args["resume"]) if args["resume"] else None) == (f"run{k - 1}" if k > 1 else None)
        assert args["evaluate"] is (k == len(runs))


def test_joint_steps_come_from_the_last_history_point() -> None:
    assert joint_steps(_two_runs()) == 1400
    assert joint_steps({"history": [{"stage": "vision", "step": 9}]}) == 0


def test_the_card_gives_each_run_its_steps_per_second_and_extra_losses(tmp_path) -> None:
    from helpers.world.modelcard import _card_text
    from helpers.grounding.model import load

    model, _ = load(str(bundled_model_dir()), device="cpu", verbose=False)
    result = json.loads((bundled_model_dir() / "evaluation.json").read_text())
    text = _card_text(model, result, _two_runs())
    assert "then 1400 joint steps, 2.00 joint steps per second" in text
    assert "group 1.0, count word 1.0, tasks drawn caption 0.3, detail 0.05" in text
    assert "(group heads on object patches only)" in text
    assert "with its weights rounded as bitsandbytes' 4-bit types round them: FP4, the article's, in 0.5 of" in text
    assert "--fp4-share 0.5" in run_commands(_two_runs(), "data/kosmos2-tiny-world")[-1]
    assert run_commands(_two_runs(), "data/kosmos2-tiny-world")[-1] in text


@pytest.mark.parametrize("shares, words", [
    ({}, ""),
    ({"fp4_share": 0.5}, "as bitsandbytes' 4-bit types round them: FP4, the article's, in 0.5 of the passes"),
    ({"nf4_share": 0.4}, "as bitsandbytes' 4-bit types round them: NF4 in 0.4 of the passes"),
    ({"fp4_share": 0.3, "nf4_share": 0.3}, "round them: FP4, the article's, in 0.3 of the passes, NF4 in 0.3 of the"),
])
def test_the_run_line_names_each_4bit_rounding_and_its_share(shares, words) -> None:
    text = rounding_4bit({"fp4_share": 0.0, "nf4_share": 0.0, **shares})
    assert (words in text) if words else text == ""
    record = _two_runs()
    last = {**record["stages"][-1], "config": {**record["config"], "fp4_share": 0.0, **shares}}
    command = run_commands({**last, "stages": record["stages"][:-1] + [last]}, "x")[-1]
    for flag, key in (("--fp4-share", "fp4_share"), ("--nf4-share", "nf4_share")):
        assert (f"{flag} {shares.get(key)}" in command) == (key in shares)


def test_the_card_says_where_training_scenes_came_from_when_workers_drew_them() -> None:
    """With --workers, training scenes come from one stream per worker process, not from random.Random(training
    seed) alone; the card says so only for records with such a run (the shipped card is unchanged)."""
    from helpers.world.modelcard import _card_text
    from helpers.grounding.model import load

    model, _ = load(str(bundled_model_dir()), device="cpu", verbose=False)
    result = json.loads((bundled_model_dir() / "evaluation.json").read_text())
    record = _two_runs()
    assert _card_text(model, result, SHIPPED) == (bundled_model_dir() / "README.md").read_text()
    assert "--workers N" not in _card_text(model, result, record)
    record["stages"][-1]["config"]["workers"] = 2
    text = _card_text(model, result, record)
    assert "In the runs with `--workers N` (their commands below say so), N processes drew the training scenes" in text
    commands = run_commands(record, "data/kosmos2-tiny-world")
    assert "--workers 2" in commands[-1] and commands[-1] in text and "--workers" not in commands[0]
