"""bench/benchmark.py: the --tiny mode runs on the CPU and writes complete, positive results (no timing limits)."""

from __future__ import annotations

import importlib.util
import json
from datetime import datetime, timedelta, timezone
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.course.paths import repo_root

SCRIPT = repo_root() / "bench" / "benchmark.py"
NEW_TOKENS = 3
PATHS = ["article", "fp32", "bf16", "eager", "static", "graphs"]
SMALL_ONLY = ("article", "static", "graphs")  # run at --static-batch-sizes (1)
BATCHES = [1, 2]


def _report():
    """bench/report.py, as bench/benchmark.py imports it (bench/ on the path)."""
    _module()
    return sys.modules["report"]


def _module():
    """bench/benchmark.py imported from its file (bench/ is a folder of scripts, not a package)."""
    if "kosmos2_benchmark" not in sys.modules:
        spec = importlib.util.spec_from_file_location("kosmos2_benchmark", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["kosmos2_benchmark"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[dict, str, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("bench")
    args = ["--tiny", "--out", str(out), "--new-tokens", str(NEW_TOKENS), "--batch-sizes", ",".join(map(str, BATCHES)),
            "--paths", ",".join(PATHS), "--warmup", "1", "--repeats", "2", "--device", "cpu"]
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                         cwd=repo_root(), env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "results.json").read_text(encoding="utf-8"))
    markdown = (out / "results.md").read_text(encoding="utf-8")
    return report, markdown, run


def test_report_records_the_conditions(tiny_run):
    import torch
    import transformers

    report, _, _ = tiny_run
    assert report["torch"] == torch.__version__
    assert report["transformers"] == transformers.__version__
    assert report["device"] == "cpu" and report["device_name"].startswith("CPU")
    assert "--tiny" in report["command"] and report["command"].startswith("python bench/benchmark.py")
    assert report["new_tokens"] == NEW_TOKENS
    assert report["prompt_tokens"] == 3 + 64 + 4
    assert report["model"]["config"].startswith("tiny")
    assert 0 < report["model"]["parameters"] < 50_000_000
    assert set(report["support"]) >= {"_supports_sdpa", "_can_compile_fullgraph", "_supports_static_cache"}
    measured_at = datetime.fromisoformat(report["date"])
    assert measured_at.tzinfo is not None  # a date that says which clock
    assert abs(datetime.now(timezone.utc) - measured_at) < timedelta(hours=1)  # this run's date, not a copied one


def test_every_path_and_batch_size_has_a_row(tiny_run):
    report, _, _ = tiny_run
    rows = report["results"]
    expected = [(p, b) for p in PATHS for b in ([1] if p in SMALL_ONLY else BATCHES)]
    assert [(r["path"], r["batch_size"]) for r in rows] == expected


def test_measured_rows_have_positive_numbers(tiny_run):
    report, _, _ = tiny_run
    measured = [r for r in report["results"] if r["status"] == "ok"]
    assert {r["path"] for r in measured} >= {"fp32", "bf16", "eager", "graphs"}
    for r in measured:
        assert r["captions_per_s"] > 0 and r["ms_per_token"] > 0 and r["prefill_ms"] > 0
        assert r["peak_memory_gib"] > 0 and r["weights_gib"] > 0
        if _report().MemoryPeaks.available():  # Linux: the private memory, while built and while generating
            assert r["memory_kind"] == _module().PRIVATE_PEAK and r["load_peak_gib"] > 0
        else:  # elsewhere the process's peak resident memory, and no load peak
            assert r["memory_kind"].startswith("process peak RSS") and r["load_peak_gib"] is None
        assert len(r["runs"]) == 2 and all(s > 0 for s in r["runs"])
        # the figures are consistent with each other
        assert r["captions_per_s"] == pytest.approx(r["batch_size"] / r["seconds"])
        assert r["ms_per_token"] == pytest.approx(r["seconds"] / NEW_TOKENS * 1000)
    assert {r["dtype"] for r in measured if r["path"] == "bf16"} == {"bfloat16"}
    assert {r["attention"] for r in measured if r["path"] == "eager"} == {"eager"}


def test_paths_that_cannot_run_are_recorded_with_a_reason(tiny_run):
    report, markdown, run = tiny_run
    rows = {r["path"]: r for r in report["results"] if r["batch_size"] == 1}
    article = rows["article"]
    reason = _module().skip_reason(_module().PATHS["article"], "cpu")
    if reason is None:  # bitsandbytes runs 4-bit on this CPU (the quant extra): the article's path must run
        assert article["status"] == "ok", article
        assert article["ms_per_token"] > 0 and article["quantization"] == "4bit"
    else:  # without bitsandbytes (or too old for a CPU) the row says why
        assert article["status"] == "skipped" and article["reason"] == reason
        assert "skipped" in run.stdout
    # transformers' static cache does not fit Kosmos-2 (bench/README.md): with the pinned transformers the
    # path fails in the prefill, and the failure is recorded with its reason instead of stopping the run
    static = rows["static"]
    assert static["status"] == "error", static
    assert static["reason"].startswith("RuntimeError: The size of tensor a") and "dimension 3" in static["reason"]
    assert f"`static` (error): {static['reason']}" in markdown


def test_markdown_table_matches_the_json(tiny_run):
    report, markdown, _ = tiny_run
    assert report["command"] in markdown
    assert report["transformers"] in markdown and report["device_name"] in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| path")]
    assert len(table) == len(report["results"])
    for line, row in zip(table, report["results"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["path"] and cells[5] == str(row["batch_size"]) and cells[-1] == row["status"]
        if row["status"] == "ok":
            assert float(cells[6]) == pytest.approx(row["captions_per_s"], abs=0.006)


def test_bad_options_are_refused_with_a_message(capsys, tmp_path):
    bench = _module()
    with pytest.raises(ValueError, match="'0' is not one"):
        bench.parse_batch_sizes("1,0")
    assert bench.parse_batch_sizes(" 8, 1,8") == [8, 1]
    afile = tmp_path / "afile.txt"
    afile.write_text("notes", encoding="utf-8")
    for argv, message in ((["--paths", "turbo"], "--paths takes names from article, fp32,"),
                          (["--paths", " , "], "--paths takes names from article, fp32,"),
                          (["--batch-sizes", "x"], "not one"),
                          (["--new-tokens", "0"], "--new-tokens must be at least 1"),
                          (["--threads", "0"], "--threads must be at least 1, got 0"),  # not taken as the default
                          (["--warmup-tokens", "0"], "--warmup-tokens must be at least 1, got 0"),
                          (["--cpu-table", "--repeats", "0"], "--repeats must be at least 1, got 0"),
                          (["--device", "tpu"], "--device 'tpu' is not a device torch knows"),
                          (["--work", "w"],
                           "--work keeps the CPU table's weights and results: it goes with --cpu-table"),
                          (["--cpu-table", "--work", ""], "--work is empty; give a folder for the CPU table's"),
                          (["--cpu-table", "--work", str(afile)], f"--work {str(afile)!r} is a file; give a folder"),
                          (["--cpu-table", "--work", str(afile / "sub")],
                           f"--work {str(afile / 'sub')!r}: {str(afile)!r} is a file, so nothing can be written")):
        with pytest.raises(SystemExit) as stop:
            bench.main(["--tiny", *argv])
        assert stop.value.code == 2
        assert message in capsys.readouterr().err


def test_a_bitsandbytes_path_loads_on_the_gpu_asked_for(monkeypatch, tmp_path):
    """--device cuda:1: bitsandbytes places the weights by the device map, which must name cuda:1 (the inputs
    go there), not GPU 0. Checked without a GPU: from_pretrained only records what it is given."""
    from transformers import AutoModelForImageTextToText

    bench = _module()
    given = {}

    def from_pretrained(folder, **kwargs):
        given.update(kwargs)
        raise RuntimeError("recorded")

    monkeypatch.setattr(bench.quant, "check_available", lambda *args: None)  # no GPU, maybe no bitsandbytes here
    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", from_pretrained)  # as load() loads
    for device, device_map in (("cuda:1", {"": "cuda:1"}), ("cuda", {"": 0})):  # bare "cuda": GPU 0, as load()
        given.clear()
        with pytest.raises(RuntimeError, match="recorded"):
            bench.build_model(bench.tiny_config(), bench.PATHS["article"], device, weights=tmp_path)
        assert given["device_map"] == device_map


def test_gpu_name_memory_and_synchronizing_are_those_of_the_gpu_asked_for(monkeypatch):
    """With --device cuda:1 the report names that GPU and its peak memory, and timing waits for it, not for
    the current GPU (0)."""
    bench = _module()
    calls = []

    def record(name, value=None):
        return lambda *args: calls.append((name, args)) or value

    monkeypatch.setattr(torch.cuda, "get_device_name", record("name", "Second GPU"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", record("peak", 2 ** 30))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", record("reset"))
    monkeypatch.setattr(torch.cuda, "synchronize", record("sync"))
    assert bench.device_name("cuda:1") == "Second GPU"
    assert bench.peak_memory("cuda:1") == (1.0, "torch.cuda.max_memory_allocated")
    bench._reset_peak("cuda:1")
    bench._sync("cuda:1")
    assert calls == [("name", ("cuda:1",)), ("peak", ("cuda:1",)), ("reset", ("cuda:1",)), ("sync", ("cuda:1",))]


def test_the_default_precision_follows_the_courses_native_bfloat16_rule(monkeypatch):
    """On a T4 (compute capability 7.5, which emulates bfloat16) the default paths run in float16 and the bf16 path
    is skipped; from 8.0 on, bfloat16: the rule of helpers.grounding.model.native_bf16."""
    bench = _module()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    for capability, dtype in (((7, 5), torch.float16), ((8, 6), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",  # True on a T4 too: it counts emulation
                            lambda including_emulation=True: including_emulation or capability >= (8, 0))
        assert bench.resolve_dtype(bench.PATHS["sdpa"], "cuda:1") == dtype
        reason = bench.skip_reason(bench.PATHS["bf16"], "cuda:1")
        assert (reason is None) == (dtype == torch.bfloat16), reason
        assert bench.resolve_dtype(bench.PATHS["article"], "cuda:1") == torch.float16  # as the article had it
    assert bench.resolve_dtype(bench.PATHS["article"], "cpu") == torch.float32


def test_a_gpu_that_does_not_exist_is_refused(monkeypatch, capsys):
    bench = _module()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("set_device called"))
    with pytest.raises(SystemExit) as stop:
        bench.main(["--tiny", "--device", "cuda:2"])
    assert stop.value.code == 2
    assert "--device cuda:2 does not exist: torch sees 2 CUDA GPU(s)" in capsys.readouterr().err


def test_full_size_configuration_has_the_real_models_parameter_count():
    bench = _module()
    assert round(bench.parameters_from_config(bench.full_config()) / 1e9, 2) == 1.66


@pytest.mark.parametrize("quantization", ["none", "int4"])
def test_fixed_shape_decoder_writes_what_generate_writes(quantization):
    """The ``graphs`` and ``int4-static`` paths' own decoding loop, on the course's trained model in float32 and
    in int4: uncompiled, the same captions as ``generate``, token for token. Compiled (``int4-static``), Inductor
    may take other int4 kernels than eager torch does (on an AMD EPYC one box corner of 72 tokens moved by one
    row): nearly every token the same."""
    from helpers.grounding.model import load
    from helpers.course.paths import bundled_model_dir
    from helpers.world.scenes import sample_scenes
    from helpers.grounding.prompts import CAPTION_PROMPT

    bench = _module()
    model, processor = load(bundled_model_dir(), quantization=quantization, device="cpu", verbose=False)
    model.generation_config.eos_token_id = None  # both run the full length
    images = [scene.image for scene in sample_scenes(3, seed=5)]
    inputs = dict(processor(text=[CAPTION_PROMPT] * 3, images=images, return_tensors="pt"))
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    decoder = bench.FixedShapeDecoder(model)
    assert decoder.step == decoder._step
    with torch.inference_mode():
        expected = model.generate(**inputs, generation_config=bench.generation_config(model.config, 24, "dynamic"))
        first = decoder.generate(inputs, 24)
        again = decoder.generate(inputs, 24)  # the cache is reused for the same shapes
    assert torch.equal(first, expected) and torch.equal(again, expected)
    captions = processor.batch_decode(first, skip_special_tokens=True)
    assert len(set(captions)) == 3 and all("<phrase>" in c for c in captions)
    if quantization == "int4":
        compiled = bench.FixedShapeDecoder(model, compile_step=True)
        assert compiled.step != compiled._step  # a new callable
        with torch.inference_mode():
            tokens = compiled.generate(inputs, 24)
        prompt = inputs["input_ids"].shape[1]
        assert torch.equal(tokens[:, :prompt], expected[:, :prompt])
        assert (tokens[:, prompt:] == expected[:, prompt:]).float().mean() >= 0.95


# --------------------------------------------------------------------------------------------- the CPU table

CPU_PATHS = ["fp32-eager", "article", "int4", "int4-onnx"]


@pytest.fixture(scope="module")
def cpu_table(tmp_path_factory) -> tuple[dict, str, str, object]:
    """``--cpu-table --tiny``: each path in its own process, a kept work folder, then the same command again."""
    out, work = tmp_path_factory.mktemp("cpu-table"), tmp_path_factory.mktemp("cpu-work")
    args = ["--cpu-table", "--tiny", "--out", str(out), "--work", str(work), "--new-tokens", "2",
            "--batch-sizes", "1,2", "--paths", ",".join(CPU_PATHS)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900,
                         cwd=repo_root(), env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "results.json").read_text(encoding="utf-8"))
    again = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                           cwd=repo_root(), env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    return report, (out / "summary.md").read_text(encoding="utf-8"), again.stdout, work


def test_cpu_table_runs_every_path_at_every_batch_size_with_two_threads(cpu_table):
    report, _, _, _ = cpu_table
    assert report["threads"] == 2 and report["device"] == "cpu" and report["timed_runs"] == 1
    assert report["warmup_tokens"] == 2  # the short warm-up, capped at --new-tokens
    assert [(r["path"], r["batch_size"], r["status"]) for r in report["results"]] == [
        (p, b, "ok") for p in CPU_PATHS for b in (1, 2)]
    assert set(report["libraries"]) == {"bitsandbytes", "torchao", "onnxruntime"}
    rows = {(r["path"], r["batch_size"]): r for r in report["results"]}
    assert rows[("article", 1)]["dtype"] == "4bit + float32" and rows[("int4", 1)]["dtype"] == "int4 + bfloat16"
    assert rows[("int4-onnx", 1)]["dtype"] == "int4-onnx + bfloat16"
    # each path ran in a process of its own: a peak memory of its own
    assert len({rows[(p, 1)]["peak_memory_gib"] for p in CPU_PATHS}) == len(CPU_PATHS)
    if _report().MemoryPeaks.available():  # each path's load peak is its own too
        assert len({rows[(p, 1)]["load_peak_gib"] for p in CPU_PATHS}) == len(CPU_PATHS)


def test_cpu_table_ratios_and_logits_agreement(cpu_table):
    report, summary, _, _ = cpu_table
    rows = {(r["path"], r["batch_size"]): r for r in report["results"]}
    for (path, batch), r in rows.items():
        assert r["vs_fp32_eager"] == pytest.approx(rows[("fp32-eager", batch)]["seconds"] / r["seconds"])
        assert r["vs_article"] == pytest.approx(rows[("article", batch)]["seconds"] / r["seconds"])
    assert rows[("fp32-eager", 1)]["accuracy"] == {"reference": True}
    for path in ("article", "int4", "int4-onnx"):
        accuracy = rows[(path, 1)]["accuracy"]
        assert accuracy["against"] == "fp32-eager"
        assert 0 < accuracy["relative_error"] < 0.5 and "top1_agreement" in accuracy  # its rule: test_quantization
        assert "accuracy" not in rows[(path, 2)]
    header, *_ = summary.splitlines()
    assert "| load GiB | run GiB |" in header
    lines = [line for line in summary.splitlines() if line.startswith("| ") and "path" not in line]
    assert [line.split("|")[1].strip() for line in lines] == CPU_PATHS
    for path, line in zip(CPU_PATHS, lines):  # the load peak, and the larger of the two batch sizes' peaks
        load, run = line.split("|")[5:7]
        expected = rows[(path, 1)]["load_peak_gib"]
        assert load.strip() == "–" if expected is None else float(load) == pytest.approx(expected, abs=0.005)
        assert float(run) == pytest.approx(max(rows[(path, b)]["peak_memory_gib"] for b in (1, 2)), abs=0.005)
    assert "reference" in lines[0] and "1.00×" in lines[1]  # the article against itself


def test_cpu_table_resumes_from_its_work_folder(cpu_table):
    report, _, second_stdout, work = cpu_table
    assert "--work WORK" in report["command"] and str(work) not in report["command"]  # scratch, not a setting
    for path in CPU_PATHS:
        assert f"{path}: measured earlier in {work}, kept" in second_stdout
    assert "saving the random float32 weights" not in second_stdout


def _table_main(monkeypatch, calls: list):
    """benchmark.main with --cpu-table's processes replaced: each run records its paths and gets an error row for
    each (the rows of a path whose process failed), so that only the checks and the writing of the files run."""
    bench = _module()

    def run_isolated(argv, paths, work, log=print):
        calls.append(list(paths))
        return [{"path": p, "description": "stand-in", "batch_size": None, "status": "error", "reason": "stand-in",
                 "quantization": None, "dtype": "–", "attention": "sdpa", "cache": "dynamic", "compile": False}
                for p in paths]

    monkeypatch.setattr(bench, "run_isolated", run_isolated)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the table's 2 threads: not for this process
    return bench.main


def test_a_work_folder_is_not_resumed_with_other_settings(tmp_path, monkeypatch, capsys):
    """A tiny trial with --work W, then the real table with the same W: refused, instead of publishing the tiny
    model's rows (and running its weights) as the full-size table."""
    calls: list = []
    main = _table_main(monkeypatch, calls)
    work = tmp_path / "work"
    tiny = ["--cpu-table", "--work", str(work), "--new-tokens", "4", "--batch-sizes", "1"]
    assert main([*tiny, "--tiny", "--paths", "fp32-eager"]) == 0
    assert json.loads((work / "settings.json").read_text(encoding="utf-8")) == {
        "model": "tiny (--tiny)", "--new-tokens": 4, "--batch-sizes": "1", "--static-batch-sizes": "1",
        "--warmup": 1, "--warmup-tokens": 4, "--repeats": 1, "--threads": 2}
    assert main([*tiny, "--tiny", "--paths", "fp32-eager,int4"]) == 0  # the same settings, more paths: resumed
    capsys.readouterr()
    for argv, then, now in (
            (["--cpu-table", "--work", str(work)], "model tiny (--tiny), --new-tokens 4, --batch-sizes 1",
             "model full size, --new-tokens 64, --batch-sizes 1,8"),
            ([*tiny, "--tiny", "--threads", "1"], "--threads 2", "--threads 1")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        assert f"--work {str(work)!r} holds the work of a run with {then}; this run has {now}: give the same " \
               "settings to go on with it, or a new --work folder" in capsys.readouterr().err
    assert calls == [["fp32-eager"], ["fp32-eager", "int4"]]  # nothing ran after the refusals


def test_an_interrupted_cpu_table_keeps_its_rows_in_work_and_leaves_out_alone(tmp_path, monkeypatch):
    """Ctrl-C during the second path: the first path's rows stay in --work, --out keeps the earlier tables; the
    same command then resumes, runs only the second path and writes --out at the end."""
    bench = _module()
    work, out = tmp_path / "work", tmp_path / "out"
    out.mkdir()
    (out / "results.md").write_text("the earlier table\n", encoding="utf-8")
    started, real_run = [], subprocess.run

    def run(command, **kwargs):  # the script's own processes: the weights, then one per path
        if "--save-weights" not in command and "--child" not in command:  # (platform asks uname for the CPU)
            return real_run(command, **kwargs)
        if "--save-weights" in command:
            weights = Path(command[command.index("--save-weights") + 1])
            weights.mkdir(parents=True)
            (weights / "config.json").write_text("{}", encoding="utf-8")
            return subprocess.CompletedProcess(command, 0)
        path = command[command.index("--paths") + 1]
        started.append(path)
        if path == "int4" and started.count("int4") == 1:
            raise KeyboardInterrupt
        rows = [{"path": path, "description": "stand-in", "batch_size": 1, "status": "error", "reason": "stand-in",
                 "quantization": None, "dtype": "–", "attention": "sdpa", "cache": "dynamic", "compile": False}]
        Path(command[command.index("--child") + 1]).write_text(json.dumps(rows), encoding="utf-8")
        return subprocess.CompletedProcess(command, 0, stdout="", stderr="")

    monkeypatch.setattr(bench.subprocess, "run", run)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    argv = ["--cpu-table", "--tiny", "--paths", "fp32-eager,int4", "--new-tokens", "2", "--batch-sizes", "1",
            "--work", str(work), "--out", str(out)]
    with pytest.raises(KeyboardInterrupt):
        bench.main(argv)
    assert sorted(p.name for p in out.iterdir()) == ["results.md"]
    assert (out / "results.md").read_text(encoding="utf-8") == "the earlier table\n"
    assert json.loads((work / "fp32-eager.json").read_text(encoding="utf-8"))[0]["path"] == "fp32-eager"
    assert bench.main(argv) == 0
    assert started == ["fp32-eager", "int4", "int4"]  # fp32-eager kept from the work folder
    report = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [r["path"] for r in report["results"]] == ["fp32-eager", "int4"]
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "summary.md"]


@pytest.mark.parametrize("name", ["int8", "int4", "int4-onnx"])
def test_the_cpu_tables_paths_are_built_as_load_builds_them(tmp_path, name):
    """From a float32 checkpoint (the CPU table's --weights), the benchmark builds each CPU path as load() does: the
    checkpoint loaded in its own type, then int8/int4 quantized layer by layer and int4-onnx's graphs made, and
    what stays in torch in bfloat16 (int4-onnx's vision tower was left in float32 once, unlike load()'s)."""
    bench = _module()
    config = bench.tiny_config()
    bench.save_random_weights(config, tmp_path)
    model = bench.build_model(config, bench.PATHS[name], "cpu", weights=tmp_path)
    torch_part = model.model if name == "int4-onnx" else model
    floats = {p.dtype for p in torch_part.parameters() if p.is_floating_point()}
    assert floats == {torch.bfloat16}
