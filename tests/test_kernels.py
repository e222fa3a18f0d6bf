"""bench/kernels.py: the decoder's weight products, kernel by kernel, on tiny shapes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from helpers.course.paths import repo_root

SCRIPT = repo_root() / "bench" / "kernels.py"
KERNELS = ["read", "float32", "bfloat16", "torchao-int4", "torchao-int4-inductor", "onnxruntime-int4",
           "onnxruntime-int4-b128", "onnxruntime-int8-rows"]


def _script():
    """bench/kernels.py imported from its file (bench/ is a folder of scripts, not a package)."""
    if "kosmos2_kernels" not in sys.modules:
        spec = importlib.util.spec_from_file_location("kosmos2_kernels", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["kosmos2_kernels"]


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=repo_root())


def _report(out, *args: str) -> dict:
    """The script's report (``kernels.json``, with ``kernels.md`` as "markdown") of a tiny run with ``args``."""
    # --tiny: hidden 128, ffn 512, so that ONNX Runtime's blocks of 128 divide every layer's inputs
    run = _run("--tiny", "--layers", "2", "--rows", "1,5", "--repeats", "2", *args, "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((out / "kernels.json").read_text(encoding="utf-8"))
    data["markdown"] = (out / "kernels.md").read_text(encoding="utf-8")
    return data


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    return _report(tmp_path_factory.mktemp("kernels"))


@pytest.fixture(scope="module")
def threads_report(tmp_path_factory) -> dict:
    return _report(tmp_path_factory.mktemp("kernels-threads"), "--threads", "1,2",
                   "--kernels", "float32,torchao-int4,onnxruntime-int4-b128")


def test_every_kernel_runs_at_every_row_count(report):
    assert [(r["kernel"], r["threads"], r["rows"], r["status"]) for r in report["results"]] == [
        (k, 2, rows, "ok") for k in KERNELS for rows in (1, 5)]
    assert report["threads"] == [2] and report["layers"] == 2 and "--tiny" in report["command"]
    assert all(r["ms"] > 0 and r["gb_per_s"] == pytest.approx(r["weights_mb"] / r["ms"]) for r in report["results"])


def test_kernels_compute_the_same_products(report):
    """Each kernel's output against float32's chain of products: float32 is it, bfloat16 close, 8-bit further,
    4-bit further still."""
    error = {(r["kernel"], r["rows"]): r["relative_error"] for r in report["results"]}
    for rows in (1, 5):
        assert error[("float32", rows)] < 1e-5
        assert error[("bfloat16", rows)] < 0.03
        for kernel in KERNELS[KERNELS.index("torchao-int4"):]:
            assert 0.01 < error[(kernel, rows)] < 0.6, kernel  # 4 or 8 bits move the numbers, not wildly
        assert error[("onnxruntime-int8-rows", rows)] < error[("onnxruntime-int4-b128", rows)] / 3
        # Inductor runs the same int4 weights as torchao's eager kernel
        assert error[("torchao-int4-inductor", rows)] == pytest.approx(error[("torchao-int4", rows)], rel=0.1)


def test_each_kernel_runs_at_each_thread_count_with_the_same_products(threads_report):
    kernels = ["float32", "torchao-int4", "onnxruntime-int4-b128"]
    assert [(r["kernel"], r["threads"], r["rows"], r["status"]) for r in threads_report["results"]] == [
        (k, threads, rows, "ok") for k in kernels for threads in (1, 2) for rows in (1, 5)]
    assert threads_report["threads"] == [1, 2] and "threads: 1, 2" in threads_report["markdown"]
    assert threads_report["markdown"].count("\n| ") == 4 * len(kernels) + 1
    for kernel in kernels:
        one, two = ([r for r in threads_report["results"]
                     if (r["kernel"], r["threads"], r["rows"]) == (kernel, t, 5)][0] for t in (1, 2))
        assert one["weights_mb"] == two["weights_mb"]
        assert one["relative_error"] == pytest.approx(two["relative_error"], abs=1e-3), kernel


def test_read_reads_the_float32_weights_and_multiplies_nothing(report):
    read = [r for r in report["results"] if r["kernel"] == "read"]
    float32 = {r["rows"]: r for r in report["results"] if r["kernel"] == "float32"}
    assert [r["rows"] for r in read] == [1, 5]
    assert all(r["weights_mb"] == float32[r["rows"]]["weights_mb"] and r["relative_error"] is None for r in read)
    assert "| read | 2 | 1 |" in report["markdown"] and report["markdown"].count(" | – |\n") == 2


def test_weights_shrink_with_their_bits(report):
    size = {r["kernel"]: r["weights_mb"] for r in report["results"] if r["rows"] == 1}
    assert size["float32"] == pytest.approx(2 * size["bfloat16"])
    assert size["torchao-int4"] < size["bfloat16"] / 2.5  # 4 bits plus a scale and a zero per 32 weights
    assert size["onnxruntime-int4-b128"] < size["onnxruntime-int4"] < size["bfloat16"] / 2.5
    assert size["bfloat16"] / 2 < size["onnxruntime-int8-rows"] < size["bfloat16"] / 1.9  # 8 bits, a scale per output
    assert report["markdown"].count("\n| ") == 2 * len(KERNELS) + 1  # the header and one line per result


@pytest.mark.parametrize("args, message", [
    (["--rows", "0"], "--rows needs comma-separated positive integers"),
    (["--rows", "a,b"], "--rows needs comma-separated positive integers"),
    (["--kernels", "float32,int3"], "--kernels takes names from read, float32, bfloat16, torchao-int4, "),
    (["--kernels", ","], "--kernels takes names from read, float32"),
    (["--layers", "0"], "must be at least 1"),
    (["--threads", "0"], "--threads needs comma-separated positive integers"),
    (["--threads", "two"], "--threads needs comma-separated positive integers"),
])
def test_bad_options_are_refused_with_a_message(args, message, capsys):
    with pytest.raises(SystemExit) as refused:  # in this process: argparse refuses before anything is built
        _script().main(["--tiny", *args])
    assert refused.value.code == 2 and message in capsys.readouterr().err


def test_a_kernel_named_twice_is_timed_once(monkeypatch):
    kernels = _script()
    timed = []
    monkeypatch.setattr(kernels, "measure", lambda names, **settings: timed.append(names) or [])
    assert kernels.main(["--tiny", "--kernels", "read, float32,read"]) == 0
    assert timed == [["read", "float32"]]
