"""Where one CPU path's time per token goes: the decode step split into its weight products and the rest.

    python bench/profile_step.py --path int4 --work WORK      # WORK as for benchmark.py --cpu-table
    python bench/profile_step.py --path int4 --tiny           # the 2-layer test model, seconds

It loads the path as ``bench/benchmark.py`` does (the random float32 weights of ``WORK/weights``, written there
first if missing; a ``WORK`` made for the other model size, ``--tiny`` or not, is refused: its ``settings.json``),
then measures, at batch 1:

* ``prefill`` and ``decode`` per token as the benchmark's table defines them (:func:`benchmark.measure`: one
  forward pass over image and prompt; (``generate`` of ``--new-tokens`` − prefill) ÷ (``--new-tokens`` − 1));
* each kind of weight product of the text decoder, and ``lm_head``, alone for one token (the layers' own
  forward on a ``(1, in)`` input, through every layer in turn, median of ``--repeats``), with the bytes its
  weights occupy and the rate at which it reads them; their sum is the products' share of a decode step, the
  rest is layer norms, attention, the cache and Python;
* the ``torch.profiler`` operators that took the most time in one ``generate``, prefill included.

``--path`` takes the paths that decode uncompiled with ``generate`` and a dynamic cache (:data:`PATHS`): not
``static``, ``graphs`` and ``int4-static`` (a decoding of their own), ``compile`` and ``int4-compile`` (the
profile's short warm-up leaves compiling to the timed run), nor ``int4-onnx`` (its decoder is an ONNX Runtime graph,
with no torch layers to time). The report is printed, with the facts of the run (``bench/report.py``); with ``--out`` it
also goes to ``OUT/profile.json`` and ``OUT/profile.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as B  # noqa: E402  (the benchmark's model builder, inputs and weights)
import report as R  # noqa: E402  (the facts of a run and the writing of its files)
from helpers.grounding import quantization as quant  # noqa: E402
from helpers.grounding.int8_linear import Int8Linear  # noqa: E402  (the int8 path's layers, not nn.Linear's)

#: The paths profiled: those of the benchmark that decode uncompiled with ``generate`` and its dynamic cache, in torch.
PATHS = tuple(name for name, spec in B.PATHS.items()
              if spec.cache == "dynamic" and not spec.compile and spec.quantization not in quant.ONNXRUNTIME)


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def products(model, dtype: torch.dtype, repeats: int) -> list[dict[str, Any]]:
    """One row per kind of weight product of the decoder's layers, and ``lm_head``: how many a token runs, ms
    per product for one token, MB of weights each and GB/s.

    A kind is timed through every layer in turn (``fc1`` of layer 0, 1, … 23), so that each product reads
    weights that the one before did not: one layer's weights alone would stay in the CPU's cache when repeated
    and look faster than a decode step sees them.
    """
    layers = list(model.text_model.model.layers)
    kinds = [name for name, module in layers[0].named_modules() if isinstance(module, (torch.nn.Linear, Int8Linear))]
    groups = [(f"layers.*.{name}", [layer.get_submodule(name) for layer in layers]) for name in kinds]
    groups.append(("lm_head", [model.text_model.lm_head]))
    rows = []
    with torch.no_grad():
        for name, modules in groups:
            first = modules[0]
            x = torch.randn(1, first.in_features, dtype=dtype)

            def run(modules=modules, x=x):
                for module in modules:
                    module(x)

            seconds = _median_seconds(run, repeats) / len(modules)
            mb = B.storage_gib(first) * 2**30 / 1e6
            rows.append({"product": name, "shape": f"{first.in_features}x{first.out_features}",
                         "per_token": len(modules), "ms": 1000 * seconds, "weights_mb": mb,
                         "gb_per_s": mb / 1000 / seconds})
    return rows


def profile(path: str, *, work: Path | None, tiny: bool, new_tokens: int, repeats: int, top: int) -> dict[str, Any]:
    """The figures of one profile of ``path`` (one of :data:`PATHS`), at batch 1 on the CPU."""
    spec = B.PATHS[path]
    config = B.tiny_config() if tiny else B.full_config()
    weights = None
    if work is not None:
        weights = work / "weights"
        if not (weights / "config.json").exists():
            print(f"writing the random float32 weights to {weights} (once)", flush=True)
            B.save_random_weights(config, weights)
    model = B.build_model(config, spec, "cpu", weights=weights)
    dtype = B.resolve_dtype(spec, "cpu")
    inputs = B.make_inputs(config, 1, "cpu", dtype)
    gen_config = B.generation_config(config, new_tokens, "dynamic")
    timed = B.measure(model, inputs, gen_config, new_tokens=new_tokens, warmup=1, repeats=1, device="cpu",
                      warmup_config=B.generation_config(config, 2, "dynamic"))
    if timed["decode_ms_per_token"] is None:
        raise SystemExit(f"generate took no longer than the prefill alone; give more --new-tokens than {new_tokens}")
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model.generate(**inputs, generation_config=gen_config)
    rows = products(model, dtype, repeats)
    in_products = sum(r["ms"] * r["per_token"] for r in rows)
    decode = timed["decode_ms_per_token"]
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1
    return {"path": path, "model": B.weights_setting(tiny)["model"], "threads": torch.get_num_threads(),
            "new_tokens": new_tokens,
            "prefill_s": timed["prefill_ms"] / 1000, "decode_ms_per_token": decode,
            "products_ms_per_token": in_products, "rest_ms_per_token": decode - in_products, "products": rows,
            "operators": [{"name": e.key, "share": e.self_cpu_time_total / total, "calls": e.count,
                           "ms": e.self_cpu_time_total / 1000} for e in ops]}


def to_text(report: dict[str, Any]) -> str:
    """The report as printed: the run's facts, the split of a decode step, the products, the operators."""
    lines = [f"{report['path']}, {report['model']} model, batch 1, {report['threads']} threads, "
             f"{report['new_tokens']} new tokens; {report['cpu']}, {report['date']}; command: `{report['command']}`",
             f"prefill {report['prefill_s']:.2f} s; decode {report['decode_ms_per_token']:.1f} ms per token: "
             f"weight products {report['products_ms_per_token']:.1f} ms, the rest {report['rest_ms_per_token']:.1f} ms",
             "", f"{'product':28s} {'shape':>12s} {'per token':>9s} {'ms':>8s} {'MB':>8s} {'GB/s':>6s}"]
    for r in report["products"]:
        lines.append(f"{r['product']:28s} {r['shape']:>12s} {r['per_token']:9d} {r['ms']:8.3f} {r['weights_mb']:8.2f} "
                     f"{r['gb_per_s']:6.1f}")
    lines += ["", "operators of one generate call, by own CPU time:"]
    lines += [f"  {o['share']:6.1%} {o['ms']:9.1f} ms {o['calls']:6d} calls  {o['name']}" for o in report["operators"]]
    return "\n".join(lines)


def to_markdown(report: dict[str, Any]) -> str:
    """``profile.md``: the printed report as a block of text."""
    return f"```text\n{to_text(report)}\n```\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/profile_step.py", description=__doc__.split("\n")[0])
    parser.add_argument("--path", default="int4", choices=PATHS,
                        help="a path of bench/benchmark.py that decodes with generate (default int4)")
    parser.add_argument("--work", default=None,
                        help="the --work folder of benchmark.py --cpu-table (its weights are written there if missing)")
    parser.add_argument("--out", default=None,
                        help="a folder for profile.json and profile.md (without it the report is printed, no file "
                             "written)")
    parser.add_argument("--tiny", action="store_true", help="the 2-layer test model (figures mean nothing)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--top", type=int, default=8, help="operators listed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.work is None and not args.tiny:
        parser.error("give --work WORK (the full-size weights live there) or --tiny")
    if args.new_tokens < 2:
        parser.error(f"--new-tokens must be at least 2 (one for the prefill, one to decode), got {args.new_tokens}")
    for option, value in (("--repeats", args.repeats), ("--top", args.top), ("--threads", args.threads)):
        if value < 1:
            parser.error(f"{option} must be at least 1, got {value}")
    reason = B.skip_reason(B.PATHS[args.path], "cpu")
    if reason:
        parser.error(f"--path {args.path} cannot run here: {reason}")
    out = R.out_folder(parser, args.out, ["profile.json", "profile.md"])
    work = None
    if args.work is not None:
        work = R.folder_option(parser, "--work", args.work, "a folder for the random weights (benchmark.py's --work)")
        R.check_settings(parser, "--work", work, B.weights_setting(args.tiny))
    facts = R.run_facts("profile_step.py", argv, hide=["--work"])  # the work folder holds scratch weights
    torch.set_num_threads(args.threads)
    report = {**facts, **profile(args.path, work=work, tiny=args.tiny, new_tokens=args.new_tokens,
                                 repeats=args.repeats, top=args.top)}
    print(to_text(report))
    if out is not None:
        R.write(out, {"profile.json": report, "profile.md": to_markdown(report)})
    return 0


if __name__ == "__main__":
    raise SystemExit(R.exit_status(main))
