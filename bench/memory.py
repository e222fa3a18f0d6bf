"""How much memory each CPU path of ``load(quantization=...)`` holds for the full-size Kosmos-2, and how long it
takes to load: each path in its own process, loading a float32 checkpoint as the real one is stored, then writing
one caption.

A process's resident memory counts two kinds of pages. *Private* pages (``RssAnon``) are the process's own:
the weights it converted, the quantized copies, the ONNX Runtime graphs. *File* pages (``RssFile``) are parts of
files mapped into memory, such as a safetensors checkpoint that transformers maps instead of reading; the system
drops them when it needs the room and reads them again when they are used. So the private peak is what a path
needs, and the file pages say how much it leans on the checkpoint staying cached. ``bench/benchmark.py``'s
*peak GiB* is the sum of both (``ru_maxrss``).

    python bench/memory.py --weights /tmp/kosmos2-random            # saves random full-size weights there first
    python bench/memory.py --weights DIR --paths 4bit,int4 --out bench/results/cpu/memory

``--weights`` is a folder for the random float32 weights (6.2 GiB; written once, with the world's processor at
224 pixels so that ``load()`` and ``ground()`` work on it), or a folder that already holds a Kosmos-2 checkpoint.
``int4-onnx`` runs twice: building its graphs (kept in a temporary folder), then reading them back. Each path runs
``--repeats`` times (3), each time in a new process: the private peak of the same path moves by gigabytes from one
run to the next (how many tensors are being converted at once when it is reached), so the table gives each figure's
range over the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report as R  # noqa: E402  (the facts of a run and the writing of its files)

PATHS = ("none", "4bit", "int8", "int4", "int4-onnx")
GiB = 2**30


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (this script needs Linux)")


def child(weights: str, quantization: str, new_tokens: int) -> dict:
    """Load ``weights`` with ``quantization`` and write one caption, sampling the private and file pages every
    50 ms; one JSON-ready row."""
    peak = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for field in peak:
                peak[field] = max(peak[field], _status_kib(field))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    from helpers import ground, load, sample_scenes

    start = time.perf_counter()
    model, processor = load(weights, device="cpu", quantization=quantization, verbose=False)
    load_seconds = time.perf_counter() - start
    after_load = dict(peak)
    start = time.perf_counter()
    ground(model, processor, sample_scenes(1, seed=3)[0].image, max_new_tokens=new_tokens)
    caption_seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return {"path": quantization, "load_s": round(load_seconds, 1), "caption_s": round(caption_seconds, 2),
            "new_tokens": new_tokens, "private_peak_load_gib": round(after_load["RssAnon"] * 1024 / GiB, 2),
            "private_peak_gib": round(peak["RssAnon"] * 1024 / GiB, 2),
            "file_peak_gib": round(peak["RssFile"] * 1024 / GiB, 2),
            "graphs": getattr(model, "from_cache", None) if quantization == "int4-onnx" else None}


def save_random_checkpoint(folder: Path) -> None:
    """Random full-size float32 weights (seeded) and the world's processor at 224 pixels, in ``folder``."""
    import torch
    from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration

    from helpers.world.language import build_processor

    torch.manual_seed(0)
    Kosmos2ForConditionalGeneration(Kosmos2Config()).save_pretrained(folder)
    build_processor(image_size=224).save_pretrained(folder)


def table(rows: list[dict]) -> str:
    """One line per path (and, for int4-onnx, per graphs built or read): the range over the runs of each figure."""
    def span(values: list[float]) -> str:
        low, high = min(values), max(values)
        return f"{low}" if low == high else f"{low}–{high}"

    lines = ["| path | runs | load s | caption s | private GiB, peak | file pages GiB, peak |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["path"] + {True: " (graphs read)", False: " (graphs built)"}.get(row["graphs"], ""),
                          []).append(row)
    for name, runs in groups.items():
        figures = [span([r[key] for r in runs]) for key in ("load_s", "caption_s", "private_peak_gib", "file_peak_gib")]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(figures) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True,
                        help="a Kosmos-2 checkpoint folder, or a new folder for random full-size float32 weights")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from {', '.join(PATHS)}")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens of the one caption (default 16)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each path, each in a new process (default 3): the peaks vary between runs")
    parser.add_argument("--out", type=Path, help="a folder for memory.json and memory.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(str(args.weights), args.child, args.new_tokens)))
        return 0
    paths = R.names(parser, "--paths", args.paths, PATHS)
    if args.new_tokens < 1 or args.repeats < 1:
        parser.error(f"--new-tokens and --repeats must be at least 1, got {args.new_tokens} and {args.repeats}")
    R.check_out(parser, args.out, ["memory.json", "memory.md"])
    facts = R.run_facts("memory.py", argv)
    if not (args.weights / "config.json").is_file():
        if args.weights.exists() and any(args.weights.iterdir()):
            parser.error(f"--weights {str(args.weights)!r} holds files but no config.json: give a checkpoint folder "
                         "or a new one")
        print(f"saving random full-size float32 weights in {args.weights}", flush=True)
        save_random_checkpoint(args.weights)
    rows = []
    for _ in range(args.repeats):
        for path in paths:
            with tempfile.TemporaryDirectory(prefix="kosmos2-onnx-") as graphs:  # int4-onnx: built, then read
                env = {**os.environ, "HF_HUB_OFFLINE": "1", "KOSMOS2_PROGRESS": "0", "KOSMOS2_ONNX_CACHE": graphs}
                for _ in range(2 if path == "int4-onnx" else 1):
                    done = subprocess.run([sys.executable, __file__, "--weights", str(args.weights), "--child", path,
                                           "--new-tokens", str(args.new_tokens)], env=env, capture_output=True,
                                          text=True)
                    if done.returncode != 0:
                        print(f"{path}: failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
                        continue
                    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                    print(json.dumps(rows[-1]), flush=True)
    markdown = table(rows)
    print(markdown)
    if args.out:
        R.write(args.out, {"memory.json": {**facts, "rows": rows}, "memory.md": markdown + "\n"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
