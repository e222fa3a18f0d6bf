"""How much memory each CPU path of ``load(quantization=...)`` holds for the full-size Kosmos-2, and how long it
takes to load: each path in its own process, loading a float32 checkpoint as the real one is stored, then writing
one caption.

A process's resident memory counts two kinds of pages. *Private* pages (``RssAnon``) are the process's own:
the weights it converted, the quantized copies, the ONNX Runtime graphs. *File* pages (``RssFile``) are parts of
files mapped into memory, such as a safetensors checkpoint that transformers maps instead of reading; the system
drops them when it needs the room and reads them again when they are used. So the private peak is what a path
needs, and the file pages say how much it leans on the checkpoint staying cached. Both are sampled by
``report.MemoryPeaks``, as ``bench/benchmark.py``'s CPU table samples the private peaks.

    python bench/memory.py --weights /tmp/kosmos2-random            # saves random full-size weights there first
    python bench/memory.py --weights DIR --paths 4bit,int4 --out bench/results/cpu/memory

``--weights`` is a folder for the random float32 weights (6.2 GiB; written once, with the world's processor at
224 pixels so that ``load()`` and ``ground()`` work on it), or a folder that already holds a Kosmos-2 checkpoint.
``int4-onnx`` runs twice: building its graphs (kept in a temporary folder), then reading them back. Each path runs
``--repeats`` times (3), each time in a new process: the private peak of the same path moves by gigabytes from one
run to the next (how many tensors are being converted at once when it is reached), so the table gives each figure's
range over the runs. A run that fails (out of memory, a library missing) is a row of its own, with its reason, and
the exit status is 1. The table is printed; with ``--out`` it is written, with the rows, to ``OUT/memory.md`` and
``OUT/memory.json`` when the run ends, unless no run succeeded (the earlier files then stay as they were).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report as R  # noqa: E402  (the facts of a run and the writing of its files)

PATHS = ("none", "4bit", "int8", "int4", "int4-onnx")
GiB = 2**30


def child(weights: str, quantization: str, new_tokens: int) -> dict:
    """Load ``weights`` with ``quantization`` and write one caption, sampling the private and file pages every
    50 ms (:class:`report.MemoryPeaks`); one JSON-ready row."""
    with R.MemoryPeaks() as peaks:
        from helpers import ground, load, sample_scenes

        start = time.perf_counter()
        model, processor = load(weights, device="cpu", quantization=quantization, verbose=False)
        load_seconds = time.perf_counter() - start
        private_load = peaks.gib("RssAnon")
        start = time.perf_counter()
        ground(model, processor, sample_scenes(1, seed=3)[0].image, max_new_tokens=new_tokens)
        caption_seconds = time.perf_counter() - start
        private, files = peaks.gib("RssAnon"), peaks.gib("RssFile")
    return {"path": quantization, "status": "ok", "load_s": round(load_seconds, 1),
            "caption_s": round(caption_seconds, 2), "new_tokens": new_tokens,
            "private_peak_load_gib": round(private_load, 2), "private_peak_gib": round(private, 2),
            "file_peak_gib": round(files, 2),
            "graphs": getattr(model, "from_cache", None) if quantization == "int4-onnx" else None}


def save_random_checkpoint(folder: Path) -> None:
    """Random full-size float32 weights (seeded) and the world's processor at 224 pixels, in ``folder``."""
    import torch
    from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration

    from helpers.world.language import build_processor

    torch.manual_seed(0)
    Kosmos2ForConditionalGeneration(Kosmos2Config()).save_pretrained(folder)
    build_processor(image_size=224).save_pretrained(folder)


def ok(row: dict) -> bool:
    """Whether a run of a path succeeded (the committed ``memory.json`` predates ``status``: its rows all did)."""
    return row.get("status", "ok") == "ok"


def label(row: dict) -> str:
    """The path of a run as the table names it: int4-onnx's say whether its graphs were built or read."""
    return row["path"] + {True: " (graphs read)", False: " (graphs built)"}.get(row["graphs"], "")


def table(rows: list[dict]) -> str:
    """One line per path (and, for int4-onnx, per graphs built or read): the range over the runs of each figure;
    the runs that failed on a line of their own, their reasons below the table."""
    def span(values: list[float]) -> str:
        low, high = min(values), max(values)
        return f"{low}" if low == high else f"{low}–{high}"

    lines = ["| path | runs | load s | caption s | private GiB, peak | file pages GiB, peak |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(label(row) if ok(row) else f"{label(row)} (failed)", []).append(row)
    for name, runs in groups.items():
        keys = ("load_s", "caption_s", "private_peak_gib", "file_peak_gib")
        figures = [span([r[key] for r in runs]) for key in keys] if ok(runs[0]) else ["–"] * len(keys)
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(figures) + " |")
    failed = [f"- {label(r)}: {r['reason']}" for r in rows if not ok(r)]
    if failed:
        lines += ["", "Failed:", "", *dict.fromkeys(failed)]
    return "\n".join(lines)


def to_markdown(report: dict) -> str:
    """``memory.md``: what was measured, when and how, then :func:`table`."""
    return (f"Memory and load time of each CPU path of load(), one caption of {report['new_tokens']} tokens, "
            f"{report['cpu']}, {report['date']}; command: `{report['command']}`\n\n{table(report['rows'])}\n")


def weights_folder(parser: argparse.ArgumentParser, text: str) -> Path:
    """The ``--weights`` folder: one that holds a checkpoint (``config.json``) as it is, else a new or empty folder
    that the random weights can be written to; stop with the parser's error (exit 2) otherwise."""
    folder = Path(text)
    if text.strip():
        if (folder / "config.json").is_file():
            return folder
        if folder.is_dir() and any(folder.iterdir()):
            parser.error(f"--weights {text!r} holds files but no config.json: give a checkpoint folder or a new one")
    return R.folder_option(parser, "--weights", text,
                           "a Kosmos-2 checkpoint folder, or a new folder for random full-size float32 weights")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/memory.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True,
                        help="a Kosmos-2 checkpoint folder, or a new folder for random full-size float32 weights")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from {', '.join(PATHS)}")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens of the one caption (default 16)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each path, each in a new process (default 3): the peaks vary between runs")
    parser.add_argument("--out", help="a folder for memory.json and memory.md, written when the run ends (without "
                                      "it the table is printed, no file written)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.weights, args.child, args.new_tokens)))
        return 0
    paths = R.names(parser, "--paths", args.paths, PATHS)
    if args.new_tokens < 1 or args.repeats < 1:
        parser.error(f"--new-tokens and --repeats must be at least 1, got {args.new_tokens} and {args.repeats}")
    out = R.out_folder(parser, args.out, ["memory.json", "memory.md"])
    weights = weights_folder(parser, args.weights)
    facts = R.run_facts("memory.py", argv, hide=["--weights"])  # a scratch folder, not a setting of the run
    if not (weights / "config.json").is_file():
        print(f"saving random full-size float32 weights in {weights}", flush=True)
        save_random_checkpoint(weights)
    rows = []
    for _ in range(args.repeats):
        for path in paths:
            with tempfile.TemporaryDirectory(prefix="kosmos2-onnx-") as graphs:  # int4-onnx: built, then read
                env = {**os.environ, "HF_HUB_OFFLINE": "1", "KOSMOS2_PROGRESS": "0", "KOSMOS2_ONNX_CACHE": graphs}
                for read in ([False, True] if path == "int4-onnx" else [None]):  # graphs built, then read
                    done = subprocess.run([sys.executable, __file__, "--weights", str(weights), "--child", path,
                                           "--new-tokens", str(args.new_tokens)], env=env, capture_output=True,
                                          text=True)
                    if done.returncode != 0:
                        rows.append({"path": path, "status": "error", "reason": R.process_failure(done),
                                     "graphs": read})
                        print(f"{path}: failed — {rows[-1]['reason']}", flush=True)
                        break  # int4-onnx: no graphs were kept to be read
                    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                    print(json.dumps(rows[-1]), flush=True)
    report = {**facts, "new_tokens": args.new_tokens, "rows": rows}
    markdown = to_markdown(report)
    print(markdown, end="")
    if not any(ok(row) for row in rows):
        print("no run succeeded" + (f": {out} is left as it was" if out is not None else ""), file=sys.stderr)
    elif out is not None:
        R.write(out, {"memory.json": report, "memory.md": markdown})
    return 0 if all(ok(row) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(R.exit_status(main))
