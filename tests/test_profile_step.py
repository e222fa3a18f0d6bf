"""bench/profile_step.py: the decode step of a path split into weight products and the rest (tiny model)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from helpers.course.paths import repo_root

SCRIPT = repo_root() / "bench" / "profile_step.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          cwd=repo_root(), env=dict(os.environ, HF_HUB_OFFLINE="1"))


def test_int4_step_is_split_into_products_and_the_rest() -> None:
    run = _run("--tiny", "--path", "int4", "--new-tokens", "32", "--repeats", "2", "--threads", "1")
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    head = re.search(r"decode ([\d.]+) ms per token: weight products ([\d.]+) ms, the rest (-?[\d.]+) ms", out)
    assert head, out
    decode, products, rest = map(float, head.groups())
    assert decode > 0 and products > 0 and abs(decode - products - rest) < 0.2
    rows = re.findall(r"^(layers\.\*\.\S+|lm_head)\s+(\d+)x(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    names = [r[0] for r in rows]
    # every linear kind of a decoder layer, counted once per layer, then lm_head once
    assert set(names) == {"layers.*.self_attn.q_proj", "layers.*.self_attn.k_proj", "layers.*.self_attn.v_proj",
                          "layers.*.self_attn.out_proj", "layers.*.ffn.fc1", "layers.*.ffn.fc2", "lm_head"}
    tiny_layers = 2
    assert all(int(r[3]) == (1 if r[0] == "lm_head" else tiny_layers) and float(r[4]) > 0 for r in rows)
    assert "aten::" in out.split("operators of one generate call")[1]


@pytest.mark.parametrize("args, message", [
    (("--tiny", "--path", "int5"), "--path must be one of"),
    (("--tiny", "--new-tokens", "1"), "--new-tokens must be at least 2"),
    ((), "give --work WORK"),
    (("--tiny", "--threads", "0"), "--threads must be at least 1, got 0"),
    (("--tiny", "--repeats", "0"), "--repeats must be at least 1, got 0"),
])
def test_bad_arguments_say_what_is_expected(args, message) -> None:
    run = _run(*args)
    assert run.returncode != 0 and message in run.stderr + run.stdout
