"""Kosmos-2's decoder weight products, kernel by kernel, on this machine's CPU.

    python bench/kernels.py --out bench/results/cpu      # the real decoder's shapes (a few minutes)
    python bench/kernels.py --tiny                      # small shapes, seconds (figures mean nothing)
    # a whole decode step's products on 1 core, then on 2:
    python bench/kernels.py --layers 24 --rows 1 --threads 1,2 \
        --kernels read,float32,torchao-int4,onnxruntime-int4-b128 --out bench/results/cpu/threads

A layer of Kosmos-2's text decoder multiplies its input by six weight matrices: q, k, v and out (2 048 × 2 048),
fc1 (2 048 × 8 192) and fc2 (8 192 × 2 048). This script builds ``--layers`` layers of them with random weights
(1.2 GB in float32, more than the CPU's caches hold; in 4 bits their 160-190 MB may partly stay in a large
shared L3 cache, which a decode step's 24 layers do not fit) and times one pass through all of them, each
product feeding the next, for ``--rows`` rows at a time: 1 is a decode step, 71 the prefill of image and
prompt. Each kernel gets the same weights:

* ``read``: no product; torch sums every float32 weight, which reads them once: how fast this machine's
  memory gives bytes to so many threads, the ceiling of a kernel's rate (it has no error column);
* ``float32``, ``bfloat16``: torch's matrix products;
* ``torchao-int4``: the course's ``"int4"`` layers (torch's CPU int4 kernel, groups of 32, as ``load()`` makes
  them), eager;
* ``torchao-int4-inductor``: the same layers under ``torch.compile(mode="max-autotune-no-cudagraphs")`` with
  Inductor's weight freezing, which lets it choose its own int4 kernels (AMX for many rows); compiling is not
  timed, and is reported. Each row count gets layers quantized and compiled afresh: compiled a second time
  for a new shape, the same frozen layers gave wrong products (torch 2.13, torchao 0.18);
* ``onnxruntime-int4``, ``onnxruntime-int4-b128``: ONNX Runtime's ``MatMulNBits`` (4-bit weights in blocks of
  32 or 128 with a zero point, activations quantized to int8 for the product: ``accuracy_level=4``), every
  product in one graph; needs ``pip install -e '.[quant]'``;
* ``onnxruntime-int8-rows``: ONNX Runtime's ``MatMulInteger`` with 8-bit weights (a scale per output) and each
  row of the input rounded to 8 bits with its own scale, as the ``int4-onnx`` path's prompt graph multiplies
  (ONNX Runtime takes AMX for these products on a CPU that has it).

Each row gives ms per pass (median of ``--repeats``), the MB of weights, scales included, that a pass reads,
and the rate (GB/s). ``--threads`` takes one thread count or several (``1,2``): each kernel is then timed at
each, which tells whether a kernel is held back by what each core does (its rate grows with the cores) or by a
memory limit the cores share (it does not). With ``--out`` the table goes to ``OUT/kernels.json`` and
``OUT/kernels.md``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as B  # noqa: E402  (its count of a quantized model's bytes, its reading of lists of counts)
import report as R  # noqa: E402  (the facts of a run and the writing of its files)
from helpers.grounding import quantization as quant  # noqa: E402  (the course's int4 recipe)

#: ONNX Runtime's kernels and their 4-bit block size (None: the 8-bit products of int4-onnx's prompt graph).
ONNXRUNTIME_KERNELS = {"onnxruntime-int4": 32, "onnxruntime-int4-b128": 128, "onnxruntime-int8-rows": None}
KERNELS = ("read", "float32", "bfloat16", "torchao-int4", "torchao-int4-inductor", *ONNXRUNTIME_KERNELS)
#: (hidden, ffn) of the real text decoder and of --tiny.
FULL, TINY = (2048, 8192), (128, 512)


def layer_shapes(hidden: int, ffn: int) -> list[tuple[int, int]]:
    """(inputs, outputs) of one decoder layer's products, in the order a token meets them."""
    return [(hidden, hidden)] * 4 + [(hidden, ffn), (ffn, hidden)]


def random_weights(shapes: Sequence[tuple[int, int]], layers: int, seed: int = 0) -> list[torch.Tensor]:
    """float32 weights, (outputs, inputs) as ``nn.Linear`` keeps them, scaled so that products stay near 1."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, k, generator=generator) / k ** 0.5 for _ in range(layers) for k, n in shapes]


def _linears(weights: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.nn.Sequential:
    layers = []
    for w in weights:
        layer = torch.nn.utils.skip_init(torch.nn.Linear, w.shape[1], w.shape[0], bias=False)  # weights set below
        layer.weight.data = w.to(dtype)
        layers.append(layer)
    return torch.nn.Sequential(*layers).eval()


def torch_kernel(name: str, weights: Sequence[torch.Tensor]) -> tuple[Callable, torch.dtype, int, dict]:
    """``(run, input dtype, weight bytes, notes)`` of a torch kernel."""
    if name == "read":
        def read(x: torch.Tensor) -> torch.Tensor:
            return sum(w.sum() for w in weights)
        return read, torch.float32, sum(w.numel() * w.element_size() for w in weights), {"product": False}
    dtype = torch.float32 if name == "float32" else torch.bfloat16
    model = _linears(weights, dtype)
    notes: dict[str, Any] = {}
    if name.startswith("torchao-int4"):
        quant.quantize(model, "int4")
    size = round(B.storage_gib(model) * 2**30)  # torchao's inner tensors by their own size
    run = model
    if name == "torchao-int4-inductor":
        import torch._inductor.config as inductor

        inductor.freezing = True  # weights become constants: Inductor may repack them for its own kernels
        run = torch.compile(model, mode="max-autotune-no-cudagraphs")
        notes["compiled"] = True
    return run, dtype, size, notes


def onnxruntime_kernel(block: int | None, weights: Sequence[torch.Tensor], threads: int):
    """``(run, input dtype, weight bytes, notes)`` of ONNX Runtime's MatMulNBits over all ``weights`` in one
    graph, built and quantized as the ``int4-onnx`` path builds its decoder (min-max scales), or with
    ``block=None`` the 8-bit products of its prompt graph; without ONNX Runtime the error says what to install."""
    from helpers.grounding.onnx_decoder import GraphPart, quantize_part, session, weight_bytes

    # (a QuantizationError saying what to install, without ONNX Runtime)
    part, previous = GraphPart("", int8=block is None), "x"
    import onnxruntime as ort
    from onnx import TensorProto, helper

    for index, layer in enumerate(_linears(weights, torch.float32)):
        previous = part.linear(previous, f"w{index}", layer)
    rows = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["rows", size])
            for name, size in (("x", weights[0].shape[1]), (previous, weights[-1].shape[0]))]
    quantized = quantize_part(part, rows[:1], rows[1:], bits=block and 4, block_size=block or 0, hqq=False)
    ort_session = session(quantized, threads)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(ort_session.run(None, {"x": x.numpy()})[0])

    notes = {"block_size": block, "accuracy_level": 4} if block else {"products": "MatMulInteger, 8-bit rows"}
    return run, torch.float32, weight_bytes(quantized), {**notes, "onnxruntime": ort.__version__}


def build(name: str, weights: Sequence[torch.Tensor], threads: int):
    """``(run, input dtype, weight bytes, notes)`` of kernel ``name`` running on ``threads`` threads."""
    if name in ONNXRUNTIME_KERNELS:
        return onnxruntime_kernel(ONNXRUNTIME_KERNELS[name], weights, threads)
    if name in KERNELS:
        return torch_kernel(name, weights)
    raise ValueError(f"unknown kernel {name!r}; the kernels are {', '.join(KERNELS)}")


def time_pass(run: Callable, x: torch.Tensor, repeats: int, warmup: int) -> tuple[float, float, torch.Tensor]:
    """``(median seconds, warm-up seconds, output)`` of ``run(x)``."""
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(warmup):
            out = run(x)
        warm = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = run(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times), warm, out


def measure(kernels: Sequence[str], *, hidden: int, ffn: int, layers: int, rows: Sequence[int], repeats: int,
            threads: Sequence[int], log=print) -> list[dict[str, Any]]:
    """One result per (kernel, threads, rows); a kernel that cannot be built or run is recorded with its error."""
    weights = random_weights(layer_shapes(hidden, ffn), layers)
    inputs = {r: torch.randn(r, hidden, generator=torch.Generator().manual_seed(r)) for r in rows}
    reference = {}
    with torch.inference_mode():
        for r, x in inputs.items():
            for w in weights:
                x = x @ w.T
            reference[r] = x
    results = []
    for name, count in itertools.product(kernels, threads):  # each kernel at each thread count, built afresh
        torch.set_num_threads(count)
        built = None
        for r, x in inputs.items():
            where = f"{name}, {count} thread{'s' * (count > 1)}, {r} rows"
            if built is None or name == "torchao-int4-inductor":  # compiled afresh for each shape (docstring)
                torch._dynamo.reset()
                try:
                    built = build(name, weights, count)
                except Exception as err:  # recorded: the other kernels and shapes still run
                    log(f"{where}: not measured — {type(err).__name__}: {err}")
                    results.append({"kernel": name, "threads": count, "rows": r, "status": "error",
                                    "reason": f"{type(err).__name__}: {err}"})
                    built = None
                    continue
            run, dtype, size, notes = built
            seconds, warm, out = time_pass(run, x.to(dtype), repeats, warmup=3 if notes.get("compiled") else 1)
            ref = reference[r]
            error = (float(torch.linalg.vector_norm(out.float() - ref) / torch.linalg.vector_norm(ref))
                     if notes.get("product", True) else None)
            results.append({"kernel": name, "threads": count, "rows": r, "status": "ok", "ms": seconds * 1000,
                            "weights_mb": size / 1e6, "gb_per_s": size / seconds / 1e9,
                            "relative_error": error, "warmup_s": warm, **notes})
            log(f"{where}: {seconds * 1000:.2f} ms, {size / 1e6:.1f} MB, {size / seconds / 1e9:.1f} GB/s, "
                f"error {_error(error)} (warm-up {warm:.1f} s)")
    return results


def _error(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def to_markdown(report: dict[str, Any]) -> str:
    threads = ", ".join(str(t) for t in report["threads"])
    lines = [f"Weight products of {report['layers']} decoder layers (hidden {report['hidden']}, ffn {report['ffn']}), "
             f"threads: {threads}, {report['cpu']}, {report['date']}; command: `{report['command']}`", "",
             "| kernel | threads | rows | ms per pass | MB of weights | GB/s | error vs float32 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        if r["status"] == "ok":
            lines.append(f"| {r['kernel']} | {r['threads']} | {r['rows']} | {r['ms']:.2f} | {r['weights_mb']:.1f} | "
                         f"{r['gb_per_s']:.1f} | {_error(r['relative_error'])} |")
        else:
            lines.append(f"| {r['kernel']} | {r['threads']} | {r['rows']} | – | – | – | {r['reason']} |")
    return "\n".join(lines) + "\n"


def _counts(option: str):
    """An argparse type for ``option``: the benchmark's reading of ``1,8,64``, its error as argparse's."""
    def parse(text: str) -> list[int]:
        try:
            return B.parse_batch_sizes(text, option)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
    return parse


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/kernels.py", description=__doc__.split("\n")[0])
    parser.add_argument("--kernels", default=",".join(KERNELS), help=f"comma-separated, from {','.join(KERNELS)}")
    parser.add_argument("--rows", type=_counts("--rows"), default=[1, 71],
                        help="rows per product: 1 decodes, 71 prefills")
    parser.add_argument("--layers", type=int, default=6, help="decoder layers of weights (6: 302 M weights)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=_counts("--threads"), default=[2],
                        help="threads per kernel; several (1,2) time each kernel at each")
    parser.add_argument("--tiny", action="store_true", help="hidden 128, ffn 512: seconds, for tests")
    parser.add_argument("--out", default=None,
                        help="write kernels.json and kernels.md here (without it the table is printed, no file "
                             "written)")
    args = parser.parse_args(argv)
    kernels = R.names(parser, "--kernels", args.kernels, KERNELS)
    if args.layers < 1 or args.repeats < 1:
        parser.error("--layers and --repeats must be at least 1")
    out = R.out_folder(parser, args.out, ["kernels.json", "kernels.md"])
    facts = R.run_facts("kernels.py", argv)
    hidden, ffn = TINY if args.tiny else FULL
    results = measure(kernels, hidden=hidden, ffn=ffn, layers=args.layers, rows=args.rows,
                      repeats=args.repeats, threads=args.threads)
    report = {**facts, "threads": args.threads, "hidden": hidden, "ffn": ffn, "layers": args.layers,
              "results": results}
    table = to_markdown(report)
    print(table)
    if out is not None:
        R.write(out, {"kernels.json": report, "kernels.md": table})
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(R.exit_status(main))
