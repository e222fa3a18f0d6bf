"""bench/profile_step.py: the decode step of a path split into weight products and the rest (tiny model)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from helpers.course.paths import repo_root

SCRIPT = repo_root() / "bench" / "profile_step.py"
FACTS = {"date", "command", "cpu", "python", "torch", "transformers", "libraries"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          cwd=repo_root(), env=dict(os.environ, HF_HUB_OFFLINE="1"))


def _script():
    """bench/profile_step.py imported from its file (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("kosmos2_profile_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", ["int4", "int8"])  # int8's layers are the course's Int8Linear, not nn.Linear
def test_the_step_is_split_into_products_and_the_rest(tmp_path, path) -> None:
    run = _run("--tiny", "--path", path, "--new-tokens", "32", "--repeats", "2", "--threads", "1",
               "--out", str(tmp_path))
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
    # the run's facts and figures, as printed
    report = json.loads((tmp_path / "profile.json").read_text(encoding="utf-8"))
    assert set(report) >= FACTS and report["path"] == path and report["model"] == "tiny (--tiny)"
    assert report["command"] == f"python bench/profile_step.py --tiny --path {path} --new-tokens 32 --repeats 2 " \
                                f"--threads 1 --out {tmp_path}"
    assert f"{report['decode_ms_per_token']:.1f}" == head[1] and len(report["products"]) == len(rows)
    assert out.splitlines()[0] in (tmp_path / "profile.md").read_text(encoding="utf-8")
    assert report["command"] in out.splitlines()[0] and report["date"] in out.splitlines()[0]


@pytest.mark.parametrize("args, message", [
    (("--tiny", "--path", "int5"), "argument --path: invalid choice: 'int5'"),
    # int4-onnx has no torch layers to time; the others decode in their own way or compile: not profiled
    (("--tiny", "--path", "int4-onnx"), "argument --path: invalid choice: 'int4-onnx'"),
    (("--tiny", "--path", "static"), "argument --path: invalid choice: 'static'"),
    (("--tiny", "--path", "graphs"), "argument --path: invalid choice: 'graphs'"),
    (("--tiny", "--path", "int4-static"), "argument --path: invalid choice: 'int4-static'"),
    (("--tiny", "--path", "int4-compile"), "argument --path: invalid choice: 'int4-compile'"),
    (("--tiny", "--new-tokens", "1"), "--new-tokens must be at least 2"),
    ((), "give --work WORK"),
    (("--tiny", "--threads", "0"), "--threads must be at least 1, got 0"),
    (("--tiny", "--repeats", "0"), "--repeats must be at least 1, got 0"),
    (("--tiny", "--work", ""), "--work is empty; give a folder for the random weights"),
])
def test_bad_arguments_say_what_is_expected(monkeypatch, capsys, args, message) -> None:
    profile_step = _script()
    monkeypatch.setattr(profile_step, "profile", lambda *a, **k: pytest.fail("profiled after a bad argument"))
    with pytest.raises(SystemExit) as stop:
        profile_step.main(list(args))
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_path_whose_library_is_missing_is_refused_up_front(monkeypatch, capsys) -> None:
    profile_step = _script()
    monkeypatch.setattr(profile_step, "profile", lambda *a, **k: pytest.fail("profiled without its library"))
    real = profile_step.quant.installed_version
    monkeypatch.setattr(profile_step.quant, "installed_version", lambda name: None if name == "torchao" else real(name))
    with pytest.raises(SystemExit) as stop:
        profile_step.main(["--tiny", "--path", "int4"])
    assert stop.value.code == 2
    assert "--path int4 cannot run here: quantization='int4' needs torchao" in capsys.readouterr().err


def test_a_work_folder_of_the_other_model_size_is_refused(tmp_path, monkeypatch, capsys) -> None:
    """--tiny --work W writes the tiny weights there: W without --tiny would profile them as the full-size model."""
    profile_step = _script()
    profiled = []

    class Profiled(Exception):
        pass

    def profile(path, **kwargs):
        profiled.append(kwargs["tiny"])
        raise Profiled  # the checks are done: nothing more to see

    monkeypatch.setattr(profile_step, "profile", profile)
    afile = tmp_path / "afile.txt"
    afile.write_text("notes", encoding="utf-8")
    with pytest.raises(SystemExit) as stop:
        profile_step.main(["--work", str(afile)])
    assert stop.value.code == 2 and f"--work {str(afile)!r} is a file" in capsys.readouterr().err
    work = tmp_path / "work"
    with pytest.raises(Profiled):
        profile_step.main(["--tiny", "--work", str(work)])
    assert json.loads((work / "settings.json").read_text(encoding="utf-8")) == {"model": "tiny (--tiny)"}
    with pytest.raises(SystemExit) as stop:
        profile_step.main(["--work", str(work)])
    assert stop.value.code == 2
    assert (f"--work {str(work)!r} holds the work of a run with model tiny (--tiny); this run has model full size"
            in capsys.readouterr().err)
    assert profiled == [True]
