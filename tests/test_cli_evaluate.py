"""``python -m helpers evaluate world|refcoco|flickr30k`` on the hand-written benchmark files of the loader tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.course import cli_evaluate
from test_flickr30k import flickr  # noqa: F401  (fixture: Flickr30k Entities files and images)
from test_refcoco_files import refer  # noqa: F401  (fixture: refs(unc).p, instances.json and images)


@pytest.fixture(autouse=True)
def offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KOSMOS2_PROGRESS", "0")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_refcoco_from_the_refer_files(tiny_model_dir, refer, capsys) -> None:  # noqa: F811
    out = refer / "res" / "refcoco.jsonl"
    code = cli_evaluate.main([
        "refcoco", str(refer / "refcoco" / "refs(unc).p"), "--instances", str(refer / "refcoco" / "instances.json"),
        "--images", str(refer / "train2014"), "--model", str(tiny_model_dir), "--out", str(out),
        "--max-new-tokens", "6", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    written = rows(out)
    assert [r["expression"] for r in written] == ["left red circle", "red ball on the left", "snowman", "blue square",
                                                  "the other square"]
    assert {"truth", "boxes", "predicted", "iou", "best_iou", "hit", "hit_any", "caption", "split",
            "ann_id"} <= set(written[0])
    lines = printed.splitlines()
    assert lines[0] == "| split | accuracy@1 | upper bound (any box of the expression) |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| testA", "| testB", "| val", "| train", "| all"]
    assert lines[-1].startswith(f"| all | {100 * sum(r['hit'] for r in written) / 5:.1f} % (")
    assert not list(out.parent.glob("*.partial"))


def test_flickr30k_with_a_limit(tiny_model_dir, flickr, capsys) -> None:  # noqa: F811
    out = flickr / "flickr.jsonl"
    code = cli_evaluate.main([
        "flickr30k", str(flickr / "flickr30k_entities"), "--split", "val", "--images", str(flickr / "flickr30k-images"),
        "--model", str(tiny_model_dir), "--out", str(out), "--max-new-tokens", "4", "--limit", "3",
        "--no-repeat-ngram-size", "0", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert [r["phrase"] for r in rows(out)] == ["Two young guys", "shaggy hair", "Two young , White males"]
    assert printed.splitlines()[0] == "| phrases | R@1 (accuracy@1) | upper bound (any box of the phrase) |"
    assert "| all |" in printed and "| people |" in printed


@pytest.mark.parametrize("args, message", [
    (["refcoco", "{refer}/refcoco/refs(unc).p", "--images", "x"],
     r"refs\(unc\).p is a refer toolkit refs file.*\(--instances on the command line\)"),
    (["refcoco", "{refer}/refcoco/refs(unc).p", "--instances", "{refer}/refcoco/instances.json", "--split", "testD",
      "--images", "x"], "unknown split 'testD'"),
    (["refcoco", "{refer}/refcoco/refs(unc).p", "--instances", "{refer}/refcoco/instances.json", "--images",
      "{refer}/nowhere", "--model", "{model}"], r"the image folder .*nowhere' does not exist"),
    (["refcoco", "{refer}/gone.json", "--images", "x"], "gone.json' does not exist"),
    (["flickr30k", "{refer}", "--images", "x"], "should hold the folders Sentences/ and Annotations/"),
])
def test_bad_input_exits_2_with_one_line(refer, tiny_model_dir, capsys, args, message) -> None:  # noqa: F811
    args = [a.format(refer=refer, model=tiny_model_dir) for a in args]
    assert cli_evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m helpers evaluate: error: ")
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (refer / "outputs").exists()


def test_a_missing_image_is_found_before_the_model_loads(refer, capsys, monkeypatch) -> None:  # noqa: F811
    """A benchmark runs for hours: every image the annotations name is looked for first."""
    from helpers.grounding import model as model_module

    monkeypatch.setattr(model_module, "load", lambda *a, **k: pytest.fail("load() was called"))
    (refer / "train2014" / "COCO_train2014_000000000042.jpg").unlink()
    out = refer / "res.jsonl"
    assert cli_evaluate.main(["refcoco", str(refer / "refcoco" / "refs(unc).p"), "--instances",
                              str(refer / "refcoco" / "instances.json"), "--images", str(refer / "train2014"),
                              "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(r"1 image\(s\) the annotations name are not in .*train2014', e.g. "
                     r"COCO_train2014_000000000042.jpg: is it the right folder", err), err
    assert not out.exists()


def test_a_record_whose_box_starts_beyond_its_image_exits_2_with_one_line(tmp_path, capsys, monkeypatch) -> None:
    """Within a pixel of the edge but nothing of it inside: one line naming the record, no traceback, no model."""
    from helpers.grounding import model as model_module

    monkeypatch.setattr(model_module, "load", lambda *a, **k: pytest.fail("load() was called"))
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps([
        {"file_name": "a.png", "bbox": [10, 10, 20, 20], "width": 100, "height": 80, "sentences": ["the dot"]},
        {"file_name": "a.png", "bbox": [100.5, 10, 0.4, 10], "width": 100, "height": 80, "sentences": ["the edge"]},
    ]))
    assert cli_evaluate.main(["refcoco", str(refs), "--images", str(tmp_path), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.match(r"python -m helpers evaluate: error: .*refs.json: record 1: 'bbox' \[100.5, 10, 0.4, 10\] .* lies "
                    r"outside the image of 100 x 80 pixels", err), err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("args, message", [
    (["world", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["world", "--batch-size", "1.5"], "argument --batch-size: must be a whole number, got '1.5'"),
    (["world", "--num-beams", "0"], "argument --num-beams: must be at least 1, got 0"),
    (["world", "--scenes", "-2"], "argument --scenes: must be at least 1, got -2"),
    (["world", "--no-repeat-ngram-size", "-1"], "argument --no-repeat-ngram-size: must be at least 0, got -1"),
    (["refcoco", "r.p", "--images", "x", "--limit", "0"], "argument --limit: must be at least 1, got 0"),
    (["flickr30k", "f", "--images", "x", "--max-new-tokens", "x"],
     "argument --max-new-tokens: must be a whole number, got 'x'"),
])
def test_counts_are_checked_by_the_option_types_every_command_uses(capsys, monkeypatch, args, message) -> None:
    """The count options are parsed by checks.positive_int_option and count_option, as every other command's are,
    so a bad count reads as it does for ground (evaluate used to check them after parsing, in words of its own),
    before any model loads."""
    from helpers.course import cli as cli_ground
    from helpers.grounding import model as model_module

    monkeypatch.setattr(model_module, "load", lambda *a, **k: pytest.fail("load() was called"))
    assert cli_evaluate.main(args) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line == f"python -m helpers evaluate {args[0]}: error: {message}"
    if args[1] == "--batch-size":
        assert cli_ground.main(["x.png", "--out", "o", "--batch-size", args[2]]) == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"python -m helpers ground: error: {message}"


@pytest.mark.parametrize("benchmark", [["world"], ["refcoco", "refs.p", "--images", "x"],
                                       ["flickr30k", "f", "--images", "x"]])
def test_an_unknown_quantization_is_a_usage_error(benchmark, capsys, monkeypatch) -> None:
    """argparse refuses a name outside QUANTIZATIONS (exit 2, the names listed), before any model is loaded."""
    from helpers.grounding import model as model_module
    from helpers.grounding.quantization import QUANTIZATIONS

    monkeypatch.setattr(model_module, "load", lambda *a, **k: pytest.fail("load() was called"))
    assert cli_evaluate.main(benchmark + ["--quantization", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "argument --quantization: invalid choice: 'bogus'" in err
    assert all(repr(q) in err for q in QUANTIZATIONS) and "None" not in err
    action = next(a for a in cli_evaluate.build_parser()._subparsers._group_actions[0].choices["world"]._actions
                  if a.dest == "quantization")
    assert action.choices is QUANTIZATIONS  # the package's one list, not a copy


def test_the_single_command_runs_world(tiny_model_dir, tmp_path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", KOSMOS2_PROGRESS="0", KOSMOS2_MODEL="")
    proc = subprocess.run([sys.executable, "-m", "helpers", "evaluate", "world", "--scenes", "1", "--model",
                           str(tiny_model_dir), "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "| comprehension: accuracy@1 (first box of the phrase) |" in proc.stdout
    written = rows(tmp_path / "outputs" / "evaluate" / "world.jsonl")
    assert {r["task"] for r in written} == {"caption", "comprehension", "qa", "generation"}


def test_make_run_after_evaluate_keeps_its_results(tmp_path, monkeypatch) -> None:
    """The default results go to outputs/evaluate/, which the main job leaves alone in the course's outputs/
    (they used to stop a first `make run`: outputs/ not empty and not written by a run)."""
    from helpers.course import mainjob

    monkeypatch.setattr(mainjob, "repo_root", lambda: tmp_path)
    results = tmp_path / "outputs" / "evaluate" / "world.jsonl"
    results.parent.mkdir(parents=True)
    results.write_text("{}\n")
    mainjob.prepare_output(tmp_path / "outputs")
    assert results.read_text() == "{}\n" and (tmp_path / "outputs" / mainjob.MARKER_NAME).is_file()


@pytest.mark.parametrize("out, message", [
    ("{tmp}", r"--out .* is a folder; give the results file's name, e.g. --out .*results.jsonl"),
    ("{tmp}/a.txt/r.jsonl", r"--out .*r.jsonl': .*a.txt' is a file, so nothing can be written under it"),
])
def test_an_out_that_cannot_take_the_results_is_refused_before_any_work(tmp_path, capsys, monkeypatch, out,
                                                                        message) -> None:
    from helpers.grounding import model as model_module

    monkeypatch.setattr(model_module, "load", lambda *a, **k: pytest.fail("load() was called"))
    (tmp_path / "a.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli_evaluate.main(["world", "--out", out.format(tmp=tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_flickr30k_reads_the_test_split_unless_told_otherwise(monkeypatch, flickr) -> None:  # noqa: F811
    """The paper's figure is the test split's; scoring every image of Sentences/ (train, val and test) takes
    --split all."""
    import helpers.grounding.flickr30k as flickr30k

    asked = []

    def fake_load(root, split=None):
        asked.append(split)
        raise flickr30k.Flickr30kFormatError("stop here")  # reported as bad input: nothing is loaded or scored

    monkeypatch.setattr(flickr30k, "load_flickr30k_entities", fake_load)
    for extra in ([], ["--split", "all"], ["--split", "val"]):
        assert cli_evaluate.main(["flickr30k", str(flickr / "flickr30k_entities"), "--images", "x", *extra]) == 2
    assert asked == ["test", None, "val"]


def test_benchmark_answers_have_room_for_twenty_boxes() -> None:
    from helpers.grounding import refcoco
    from helpers.grounding.evaluation import BENCHMARK_MAX_NEW_TOKENS
    from helpers.grounding.flickr30k import evaluate_phrase_grounding
    from helpers.grounding.tokens import object_tokens

    twenty = object_tokens([(0.1, 0.1, 0.2, 0.2)] * 20)  # <object>, 20 boxes and their delimiters, </object>
    assert len(twenty.replace("><", ">\n<").split("\n")) + 1 <= BENCHMARK_MAX_NEW_TOKENS  # and </s>
    import inspect
    for function in (refcoco.evaluate_comprehension, evaluate_phrase_grounding):
        assert inspect.signature(function).parameters["max_new_tokens"].default == BENCHMARK_MAX_NEW_TOKENS
    assert cli_evaluate.build_parser().parse_args(["refcoco", "r.p", "--images", "x"]).max_new_tokens == 64


@pytest.mark.parametrize("args, out", [
    (["refcoco", "{root}/refcoco/refs(unc).p", "--instances", "{root}/refcoco/instances.json", "--images",
      "{root}/train2014"], "{root}/refcoco/refs(unc).p"),
    (["refcoco", "{root}/refcoco/refs(unc).p", "--instances", "{root}/refcoco/instances.json", "--images",
      "{root}/train2014"], "{root}/refcoco/instances.json"),
    (["refcoco", "{root}/refcoco/refs(unc).p", "--instances", "{root}/refcoco/instances.json", "--images",
      "{root}/train2014"], "{root}/train2014/COCO_train2014_000000000077.jpg"),
    (["flickr30k", "{root}/flickr30k_entities", "--images", "{root}/flickr30k-images"],
     "{root}/flickr30k_entities/Sentences/10002456.txt"),
    (["flickr30k", "{root}/flickr30k_entities", "--images", "{root}/flickr30k-images"],
     "{root}/flickr30k_entities/Annotations/10002456.xml"),
    (["flickr30k", "{root}/flickr30k_entities", "--images", "{root}/flickr30k-images"],
     "{root}/flickr30k_entities/test.txt"),
    (["flickr30k", "{root}/flickr30k_entities", "--images", "{root}/flickr30k-images"],
     "{root}/flickr30k-images/10002456.jpg"),
])
def test_an_out_that_would_replace_an_input_is_refused_before_the_model_loads(refer, flickr, capsys, monkeypatch,  # noqa: F811
                                                                              args, out) -> None:
    """--out one of the run's own files (the annotations, --instances, an image, a Flickr30k file) was replaced by
    the results, with exit 0; ground already refused to replace its images."""
    from helpers.grounding import model as model_module

    monkeypatch.setattr(model_module, "load", lambda *a, **k: pytest.fail("load() was called"))
    out = Path(out.format(root=refer))
    before = out.read_bytes()
    assert cli_evaluate.main([*(a.format(root=refer) for a in args), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err == (f"python -m helpers evaluate: error: --out {str(out)!r} is one of this command's own inputs, "
                   "which the results would replace: choose another file for the results\n")
    assert out.read_bytes() == before
