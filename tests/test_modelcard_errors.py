"""helpers.world.modelcard: the card shows the caption errors by type and the figures of a second set of unseen
scenes beside the held-out ones; it renders without a training record and checks --scenes before loading."""

from __future__ import annotations

import json
import re

import pytest

from helpers.grounding.evaluation import CAPTION_ERROR_TYPES, CaptionScores, PhraseScores, Report, Score
from helpers.world.modelcard import render_card


def _result(seed: int, recall: int, missed: int) -> dict:
    caption = CaptionScores(Score(recall, 10), Score(recall - 1, 10), Score(recall, recall + 1))
    errors = {"scenes": 4, "perfect": 2, "groups": 8, **dict.fromkeys(CAPTION_ERROR_TYPES, 0), "missed": missed}
    report = Report(4, 10, caption, PhraseScores(Score(7, 10), Score(8, 10)), Score(10, 10), Score(9, 10),
                    {"caption": 1.0}, caption_errors=errors)
    return {**report.as_dict(), "seed": seed, "date": "2026-11-29", "machine": "test",
            "caption_seconds_per_image_32_tokens": {"batch_1": 0.05, "batch_8": 0.02}}


def test_the_card_shows_errors_by_type_and_the_second_seed(tmp_path) -> None:
    from helpers.world.training import new_model
    from helpers.world.language import build_processor

    processor = build_processor(64)
    model = new_model(processor, vision_layers=1, text_layers=1, vision_dim=32, text_dim=48, heads=2)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    (tmp_path / "evaluation.json").write_text(json.dumps(_result(20231114, 8, 3)))
    (tmp_path / "evaluation-seed777.json").write_text(json.dumps(_result(777, 6, 5)))
    (tmp_path / "training.json").write_text(json.dumps({"config": {"seed": 0}, "seconds": 60, "history": []}))
    render_card(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "| captioning: phrase recall | 80.0 % (8/10) | ≥ 95 % |" in card
    assert "| missed | 3 | " in card and "2 of 4 captions without any error (8 groups)" in card
    second = card[card.index("seed=777"):]
    assert "| captioning: phrase recall | 60.0 % (6/10) | ≥ 95 % |" in second
    assert "| missed | 5 | " in second
    assert card.index("| missed | 3 |") < card.index("seed=777")


def test_the_card_names_the_location_features_the_weights_started_from(tmp_path) -> None:
    from helpers.world.language import build_processor
    from helpers.world.modelcard import EARLIEST_LOCATION_FEATURES
    from helpers.world.training import LOCATION_FEATURES, new_model

    processor = build_processor(64)
    new_model(processor, vision_layers=1, text_layers=1, vision_dim=32, text_dim=48, heads=2).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    (tmp_path / "evaluation.json").write_text(json.dumps(_result(20231114, 8, 3)))
    first = {"config": {"seed": 0}, "seconds": 60, "history": []}  # recorded before runs named their features
    resumed = {"config": {"seed": 0}, "seconds": 90, "history": [], "location_features": LOCATION_FEATURES,
               "stages": [first, {"config": {"seed": 0}, "seconds": 30, "location_features": LOCATION_FEATURES}]}
    for record, expected in ((first, EARLIEST_LOCATION_FEATURES), (resumed, EARLIEST_LOCATION_FEATURES),
                             ({**first, "location_features": LOCATION_FEATURES}, LOCATION_FEATURES)):
        (tmp_path / "training.json").write_text(json.dumps(record))
        render_card(tmp_path)
        assert f"initialised with {expected};" in (tmp_path / "README.md").read_text()


def _saved_tiny_model(folder) -> None:
    from helpers.world.language import build_processor
    from helpers.world.training import new_model

    processor = build_processor(64)
    new_model(processor, vision_layers=1, text_layers=1, vision_dim=32, text_dim=48, heads=2).save_pretrained(folder)
    processor.save_pretrained(folder)


def test_render_card_without_a_training_record_says_so(tmp_path) -> None:
    """write_card treats training.json as optional; render_card used to raise FileNotFoundError."""
    from helpers.__main__ import main as helpers_main

    _saved_tiny_model(tmp_path)
    (tmp_path / "evaluation.json").write_text(json.dumps(_result(20231114, 8, 3)))
    render_card(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "no `training.json`" in card and "Run 1:" not in card and "None" not in card
    assert "| captioning: phrase recall | 80.0 % (8/10) | ≥ 95 % |" in card
    (tmp_path / "README.md").unlink()
    assert helpers_main(["modelcard", str(tmp_path), "--render-only"]) == 0
    assert (tmp_path / "README.md").is_file()


def test_the_card_names_the_schedule_of_a_run_without_a_time_budget(tmp_path) -> None:
    """Without --minutes the cosine runs over the steps; the card used to say "a None-minute budget"."""
    _saved_tiny_model(tmp_path)
    (tmp_path / "evaluation.json").write_text(json.dumps(_result(20231114, 8, 3)))
    for minutes, expected in ((None, "cosine over 500 steps)"), (12.0, "cosine over a 12.0-minute budget)")):
        config = {"seed": 0, "steps": 500, "warmup": 100, "minutes": minutes}
        (tmp_path / "training.json").write_text(json.dumps({"config": config, "seconds": 60, "history": []}))
        render_card(tmp_path)
        card = (tmp_path / "README.md").read_text()
        assert expected in card and "None-minute" not in card


@pytest.mark.parametrize("scenes, message", [("0", "argument --scenes"), ("-1", "argument --scenes"),
                                             ("x", "argument --scenes")])
def test_modelcard_checks_scenes_before_loading(tmp_path, capsys, monkeypatch, scenes, message) -> None:
    """--scenes 0 used to end in an IndexError after loading and evaluating; -1 in a traceback after loading."""
    import helpers.world.modelcard
    from helpers.__main__ import main as helpers_main

    monkeypatch.setattr(helpers.world.modelcard, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    assert helpers_main(["modelcard", str(tmp_path), "--scenes", scenes]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1].startswith("python -m helpers modelcard: error: ")
    assert message in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("scenes, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError)])
def test_write_card_checks_scenes_before_loading(tmp_path, monkeypatch, scenes, error) -> None:
    import helpers.world.modelcard
    from helpers.world.modelcard import write_card

    monkeypatch.setattr(helpers.world.modelcard, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(error, match="scenes must be a positive int"):
        write_card(tmp_path, scenes=scenes)


def test_the_card_counts_the_model_weights_not_the_training_only_heads(tmp_path) -> None:
    from helpers.world.training import HEADS_FILE

    _saved_tiny_model(tmp_path)
    (tmp_path / "evaluation.json").write_text(json.dumps(_result(20231114, 8, 3)))
    (tmp_path / HEADS_FILE).write_bytes(bytes(3_000_000))  # 3 MB that are no part of the model
    render_card(tmp_path)
    size = (tmp_path / "model.safetensors").stat().st_size / 1e6
    assert f", {size:.1f} MB of float32 safetensors" in (tmp_path / "README.md").read_text()


def test_the_rebuild_commands_measure_every_seed_the_card_shows(tmp_path) -> None:
    _saved_tiny_model(tmp_path)
    (tmp_path / "evaluation.json").write_text(json.dumps(_result(20231114, 8, 3)))
    (tmp_path / "evaluation-seed77.json").write_text(json.dumps(_result(77, 9, 1)))
    config = {"seed": 0, "steps": 500, "warmup": 100, "minutes": None}
    (tmp_path / "training.json").write_text(json.dumps({"config": config, "seconds": 60, "history": []}))
    render_card(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "python -m helpers modelcard data/kosmos2-tiny-world --seed 77\n" in card
    assert "`sample_scenes(n, seed=77)`" in card


@pytest.mark.parametrize("render_only", [True, False])
def test_modelcard_exits_1_for_weights_that_cannot_be_loaded(tmp_path, capsys, render_only) -> None:
    """Truncated weights: one line and exit 1, as ground, evaluate and finetune say a model that cannot be loaded
    (it used to exit 2, the status of a bad option); the card and evaluation are left as they were."""
    from helpers.__main__ import main as helpers_main

    _saved_tiny_model(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    evaluation = json.dumps(_result(20231114, 8, 3))
    (tmp_path / "evaluation.json").write_text(evaluation)
    (tmp_path / "README.md").write_text("the old card")
    argv = ["modelcard", str(tmp_path), "--scenes", "1"] + (["--render-only"] if render_only else [])
    capsys.readouterr()  # saving the model's progress bar
    assert helpers_main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"python -m helpers modelcard: error: could not load {str(tmp_path)!r}")
    assert (tmp_path / "README.md").read_text() == "the old card"
    assert (tmp_path / "evaluation.json").read_text() == evaluation


def test_modelcard_render_only_names_an_evaluation_that_is_not_json(tmp_path, capsys, monkeypatch) -> None:
    import helpers.world.modelcard
    from helpers.__main__ import main as helpers_main

    _saved_tiny_model(tmp_path)
    (tmp_path / "evaluation.json").write_text('{"caption": ')
    monkeypatch.setattr(helpers.world.modelcard, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    capsys.readouterr()  # saving the model's progress bar
    assert helpers_main(["modelcard", str(tmp_path), "--render-only"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"python -m helpers modelcard: error: the card's file {str(tmp_path / 'evaluation.json')!r} "
                          "is not valid JSON: "), err
    assert "; expected JSON as `python -m helpers modelcard" in err and "without --render-only" in err, err
    assert not (tmp_path / "README.md").exists()


def test_modelcard_help_describes_the_model_folder_and_shows_the_defaults(monkeypatch, capsys) -> None:
    from helpers.__main__ import main as helpers_main
    from helpers.grounding.evaluation import HELD_OUT_SEED

    monkeypatch.setenv("COLUMNS", "300")
    assert helpers_main(["modelcard", "--help"]) == 0
    out = capsys.readouterr().out
    model_dir = out[out.index("positional arguments:"):out.index("options:")]
    assert "model_dir" in model_dir and "folder of a saved world model" in model_dir
    assert "held-out scenes to evaluate on (default: 220)" in out and f"(default: {HELD_OUT_SEED})" in out


@pytest.mark.parametrize("files, render_only, message", [
    ({"evaluation.json": {}}, True, r"evaluation.json' as `python -m helpers modelcard .*` writes it, "
                                    r"but its entries 'scenes', "
                                    r"'objects', 'seed', .* are missing or malformed: run the command without"),
    ({"evaluation.json": []}, True, r"evaluation.json' .*, but it holds a JSON list, not an object"),
    ({"evaluation.json": "GOOD", "training.json": "{"}, True,
     r"training.json' is not valid JSON: .*; expected JSON as `python -m helpers train` writes it: restore it"),
    ({"evaluation.json": "GOOD", "training.json": " \n"}, True,
     r"training.json' is empty; expected JSON as `python -m helpers train` writes it: restore it"),
    ({"evaluation.json": "GOOD", "training.json": {"stages": 5}}, True, r"training.json' .*, but its runs"),
    ({"evaluation.json": "GOOD", "evaluation-seed77.json": {"seed": 77}}, True,
     r"evaluation-seed77.json' .*, but its entries 'scenes', 'objects', 'date', .* are missing or malformed: remove"),
    # measuring: a broken file it reads afterwards would have cost the whole evaluation first
    ({"training.json": "{"}, False, r"training.json' is not valid JSON"),
    ({"evaluation.json": {"seed": "x"}}, False, None),  # replaced by the run: not read, not refused
])
def test_modelcard_refuses_json_files_of_the_wrong_shape_before_loading(tmp_path, capsys, monkeypatch, files,
                                                                         render_only, message) -> None:
    """`{}`, `[]` and a corrupt training.json ended in a KeyError, a TypeError or a JSONDecodeError traceback."""
    import helpers.world.modelcard
    from helpers.__main__ import main as helpers_main

    class Loaded(Exception):
        pass

    def load(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(helpers.world.modelcard, "load", load)
    for name, content in files.items():
        content = _result(20231114, 8, 3) if content == "GOOD" else content
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    argv = ["modelcard", str(tmp_path), "--scenes", "1"] + (["--render-only"] if render_only else [])
    if message is None:
        with pytest.raises(Loaded):
            helpers_main(argv)
        return
    assert helpers_main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(("python -m helpers modelcard: error: the card needs ",
                           "python -m helpers modelcard: error: the card's file ")) and re.search(message, err), err
    assert not (tmp_path / "README.md").exists()


@pytest.mark.parametrize("render", [False, True])
def test_the_card_functions_refuse_a_broken_json_file_before_loading(tmp_path, monkeypatch, render) -> None:
    """From Python, write_card used to evaluate for minutes and then fail on a broken training.json with a bare
    JSONDecodeError; render_card failed the same way after loading the model."""
    import helpers.world.modelcard
    from helpers.world.modelcard import write_card

    monkeypatch.setattr(helpers.world.modelcard, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    (tmp_path / "evaluation.json").write_text(json.dumps(_result(20231114, 8, 3)))
    (tmp_path / "training.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"training\.json' is not valid JSON: .*restore it, or remove it"):
        render_card(tmp_path) if render else write_card(tmp_path, scenes=1)
    (tmp_path / "training.json").unlink()
    (tmp_path / "evaluation.json").unlink()
    if render:
        with pytest.raises(ValueError, match=r"evaluation\.json' does not exist: write the card with write_card"):
            render_card(tmp_path)
