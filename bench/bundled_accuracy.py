"""Evaluate the bundled model with every quantization path and compare each metric with float32.

Each path loads ``data/kosmos2-tiny-world`` through ``load(quantization=...)`` and runs the course's
evaluation (:func:`helpers.grounding.evaluation.evaluate`) on the same held-out scenes. A path passes when
every metric stays within ``--tolerance`` percentage points of float32's. The table is printed; with ``--out`` it
goes to ``OUT/bundled_accuracy.md`` and the figures to ``OUT/bundled_accuracy.json`` (without it, no file is
written). A path this machine cannot run (its library missing) is refused before anything runs, with what to
install. The int4-onnx graphs are built for the run and kept nowhere (``KOSMOS2_ONNX_CACHE=off`` for its loads), so
the course's cache of graphs stays as it was.

    python bench/bundled_accuracy.py --out bench/results/cpu          # 220 scenes, every path (minutes)
    python bench/bundled_accuracy.py --scenes 8                       # a quick check: prints the table
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence
from unittest import mock

from helpers.grounding import evaluation
from helpers.grounding import quantization as quant
from helpers.grounding.onnx_decoder import CACHE_ENV_VAR

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report as R  # noqa: E402  (the facts of a run and the writing of its files)

#: Paths compared with float32 (``"none"``), in the order of the table.
PATHS = ("4bit", "nf4", "8bit", "int8", "int4", "int4-onnx")
#: The metrics compared: the keys of :data:`helpers.grounding.evaluation.METRICS`, in its order.
METRICS = tuple(key for _, key, _ in evaluation.METRICS)


def compare(scenes: int, seed: int, paths: Sequence[str] = PATHS, tolerance: float = 1.0, log=print) -> dict[str, Any]:
    """Metrics of float32 and of each path on the same ``scenes`` held-out scenes, with differences in points
    (int4-onnx's graphs are kept nowhere: ``KOSMOS2_ONNX_CACHE=off`` while the paths load)."""
    import torch

    from helpers.course.paths import bundled_model_dir
    from helpers.grounding.model import load
    from helpers.world.scenes import sample_scenes

    world = sample_scenes(scenes, seed=seed)
    results: dict[str, Any] = {}
    for name in ("none", *paths):
        with mock.patch.dict(os.environ, {CACHE_ENV_VAR: "off"}):
            model, processor = load(bundled_model_dir(), quantization=name, device="cpu", verbose=False)
        report = evaluation.evaluate(model, processor, world).as_dict()
        results[name] = {"dtype": model.load_info.dtype, **report}
        log(f"{name}: " + ", ".join(f"{m} {_rate(report[m])}" for m in METRICS))
        del model
    reference = results["none"]
    for name in paths:
        diffs = {m: _points(results[name][m]) - _points(reference[m]) for m in METRICS}
        results[name]["points_vs_float32"] = {m: round(d, 2) for m, d in diffs.items()}
        results[name]["within_tolerance"] = all(abs(d) <= tolerance for d in diffs.values())
    return {
        "model": "data/kosmos2-tiny-world (bundled)", "scenes": scenes, "seed": seed,
        "tolerance_points": tolerance, "threads": torch.get_num_threads(), "paths": results,
    }


def _points(metric: dict) -> float:
    """The metric in points, from its counts (its ``rate`` is rounded to four places already)."""
    return 100.0 * metric["hits"] / metric["total"] if metric["total"] else 0.0


def _rate(metric: dict) -> str:
    return "–" if not metric["total"] else f"{_points(metric):.1f} %"


def to_markdown(report: dict[str, Any]) -> str:
    """One row per path, one column per metric (in %), float32 first; then whether each path is within tolerance."""
    paths = report["paths"]
    lines = [f"Bundled model, {report['scenes']} held-out scenes (seed {report['seed']}), {report['date']}; "
             f"command: `{report['command']}`", "",
             "| path | " + " | ".join(METRICS) + f" | within {report['tolerance_points']:g} point(s) of float32 |",
             "|---|" + "---:|" * len(METRICS) + "---|"]
    for name, r in paths.items():
        cells = []
        for m in METRICS:
            cell = _rate(r[m])
            if "points_vs_float32" in r:
                cell += f" ({r['points_vs_float32'][m]:+.1f})"
            cells.append(cell)
        verdict = "reference" if name == "none" else ("yes" if r["within_tolerance"] else "**no**")
        label = "float32 (none)" if name == "none" else name
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/bundled_accuracy.py", description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=220, help="held-out scenes (220, as the model card)")
    parser.add_argument("--seed", type=int, default=evaluation.HELD_OUT_SEED)
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from {','.join(PATHS)}")
    parser.add_argument("--tolerance", type=float, default=1.0, help="points each metric may move (1)")
    parser.add_argument("--out", default=None,
                        help="a folder for bundled_accuracy.json and bundled_accuracy.md (without it the table is "
                             "printed, no file written)")
    args = parser.parse_args(argv)
    paths = R.names(parser, "--paths", args.paths, PATHS)
    if args.scenes < 1:
        parser.error(f"--scenes must be at least 1, got {args.scenes}")
    for name in paths:  # load()'s own check: what to install
        try:
            quant.check_available(name, "cpu")
        except quant.QuantizationError as err:
            parser.error(f"--paths {name}: {err}")
    out = R.out_folder(parser, args.out, ["bundled_accuracy.json", "bundled_accuracy.md"])
    report = {**R.run_facts("bundled_accuracy.py", argv), **compare(args.scenes, args.seed, paths, args.tolerance)}
    if out is not None:
        R.write(out, {"bundled_accuracy.json": report, "bundled_accuracy.md": to_markdown(report)})
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(R.exit_status(main))
