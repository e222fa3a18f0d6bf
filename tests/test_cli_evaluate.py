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
    assert {"truth", "boxes", "predicted", "iou", "best_iou", "hit", "hit_any", "caption", "split", "ann_id"} <= set(written[0])
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
    (["refcoco", "{refer}/refcoco/refs(unc).p", "--images", "x"], r"refs\(unc\).p is a refer toolkit refs file"),
    (["refcoco", "{refer}/refcoco/refs(unc).p", "--instances", "{refer}/refcoco/instances.json", "--split", "testD",
      "--images", "x"], "unknown split 'testD'"),
    (["refcoco", "{refer}/refcoco/refs(unc).p", "--instances", "{refer}/refcoco/instances.json", "--images",
      "{refer}/nowhere", "--model", "{model}"], r"nowhere/COCO_train2014_000000000042.jpg"),
    (["refcoco", "{refer}/gone.json", "--images", "x"], "gone.json' does not exist"),
    (["world", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["world", "--no-repeat-ngram-size", "-1"], "--no-repeat-ngram-size must be at least 0, got -1"),
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


def test_the_single_command_runs_world(tiny_model_dir, tmp_path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", KOSMOS2_PROGRESS="0", KOSMOS2_MODEL="")
    proc = subprocess.run([sys.executable, "-m", "helpers", "evaluate", "world", "--scenes", "1", "--model",
                           str(tiny_model_dir), "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "| comprehension: accuracy@1 (first box of the phrase) |" in proc.stdout
    written = rows(tmp_path / "outputs" / "evaluate_world.jsonl")
    assert {r["task"] for r in written} == {"caption", "comprehension", "qa", "generation"}
