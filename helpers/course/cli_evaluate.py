"""``python -m helpers evaluate``: score a model on the synthetic world, RefCOCO/+/g or Flickr30k Entities.

Examples::

    python -m helpers evaluate world --scenes 220
    python -m helpers evaluate refcoco 'refcoco/refs(unc).p' --instances refcoco/instances.json --split testA \\
        --images coco/train2014 --model microsoft/kosmos-2-patch14-224
    python -m helpers evaluate refcoco mdetr_annotations/finetune_refcocog_val.json --images coco/train2014
    python -m helpers evaluate flickr30k flickr30k_entities --split test --images flickr30k-images

Each run writes one JSON line per scored item to ``--out`` (default ``outputs/evaluate/<benchmark>.jsonl``;
never one of the files it reads) and prints the table. The benchmarks decode as the Kosmos-2 authors did (greedy,
``no_repeat_ngram_size`` 3); ``world`` uses plain greedy decoding. ``--no-repeat-ngram-size`` and ``--num-beams``
change that.

Exit codes: 0 when the evaluation ran; 2 for bad input (a missing or malformed file, a missing image, a bad
option), with a one-line message on stderr; 1 when the model could not be loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Sequence

from helpers.course.outputs import write_jsonl
from helpers.grounding.checks import count_option, fail, out_problem, parse, positive_int_option
from helpers.grounding.evaluation import (BENCHMARK_MAX_NEW_TOKENS, HELD_OUT_SEED, PhraseScores, caption_error_table,
                                          check_images_exist, evaluate, evaluate_captions, format_score)
from helpers.grounding.quantization import QUANTIZATIONS

PROG = "python -m helpers evaluate"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``evaluate`` command (one sub-command per benchmark)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Score a Kosmos-2 model; write one JSON line per item and print the table.",
        epilog="Without --model: $KOSMOS2_MODEL, else microsoft/kosmos-2-patch14-224 when cached or reachable, "
               "else the bundled offline model.",
    )
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    def common(sub: argparse.ArgumentParser, ngram: int) -> None:
        sub.add_argument("--model", default=None, metavar="M", help="a model folder or hub id")
        sub.add_argument("--quantization", default=None, choices=QUANTIZATIONS, metavar="Q",
                         help=f"load the model with these weights: {', '.join(QUANTIZATIONS)} "
                              "(see load(); default: load() chooses)")
        sub.add_argument("--out", default=None, metavar="FILE",
                         help="JSON Lines file for the per-item results (default outputs/evaluate/<benchmark>.jsonl)")
        sub.add_argument("--batch-size", type=positive_int_option, default=None, metavar="N",
                         help="prompts per generate call")
        sub.add_argument("--no-repeat-ngram-size", type=count_option, default=ngram, metavar="N",
                         help=f"forbid repeating any N tokens in an answer; 0 switches it off (default {ngram})")
        sub.add_argument("--num-beams", type=positive_int_option, default=1, metavar="N",
                         help="beam search width (default 1: greedy)")
        sub.add_argument("--quiet", action="store_true", help="print nothing but the table and errors")

    world = benchmarks.add_parser("world", help="the synthetic world's held-out scenes (the bundled model's card)")
    world.add_argument("--scenes", type=positive_int_option, default=220, metavar="N",
                       help="held-out scenes (default 220)")
    world.add_argument("--seed", type=int, default=None, metavar="S", help="scene seed (default: the held-out seed)")
    world.add_argument("--captions-only", action="store_true",
                       help="only the brief captions: their scores and errors by type (a quick probe)")
    common(world, 0)

    ref = benchmarks.add_parser("refcoco", help="RefCOCO / RefCOCO+ / RefCOCOg comprehension")
    ref.add_argument("annotations", help="refs(unc).p / refs(umd).p / refs(google).p, an MDETR finetune_*.json, "
                                         "or a JSON file of records")
    ref.add_argument("--instances", default=None, metavar="FILE", help="instances.json (with a refs pickle)")
    ref.add_argument("--split", default=None, help="train, val, test, testA, testB … (refer toolkit rules)")
    ref.add_argument("--images", required=True, metavar="DIR", help="the image folder (COCO train2014)")
    ref.add_argument("--limit", type=positive_int_option, default=None, metavar="N",
                     help="only the first N expressions (a quick look)")
    ref.add_argument("--max-new-tokens", type=positive_int_option, default=BENCHMARK_MAX_NEW_TOKENS, metavar="N",
                     help=f"most tokens per answer (default {BENCHMARK_MAX_NEW_TOKENS}: room for 20 boxes)")
    common(ref, 3)

    flickr = benchmarks.add_parser("flickr30k", help="Flickr30k Entities phrase grounding")
    flickr.add_argument("root", help="the annotations folder (Sentences/, Annotations/, train/val/test.txt)")
    flickr.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                        help="the split to read (default test, the paper's; all: every image of Sentences/)")
    flickr.add_argument("--images", required=True, metavar="DIR", help="the flickr30k-images folder")
    flickr.add_argument("--limit", type=positive_int_option, default=None, metavar="N",
                        help="only the first N phrases (a quick look)")
    flickr.add_argument("--max-new-tokens", type=positive_int_option, default=BENCHMARK_MAX_NEW_TOKENS, metavar="N",
                     help=f"most tokens per answer (default {BENCHMARK_MAX_NEW_TOKENS}: room for 20 boxes)")
    common(flickr, 3)
    return parser


def split_table(rows: Sequence[dict]) -> str:
    """RefCOCO rows → a Markdown table of accuracy@1 and the upper bound per split, then all together."""
    groups: dict[str, PhraseScores] = defaultdict(PhraseScores)
    for row in rows:
        for key in (str(row.get("split")), "all"):
            groups[key].accuracy_at_1.add(row["hit"])
            groups[key].upper_bound.add(row["hit_any"])
    keys = [k for k in groups if k != "all"] + ["all"]
    if len(keys) == 2:
        keys = keys[:1]  # one split: its row is the whole
    lines = ["| split | accuracy@1 | upper bound (any box of the expression) |", "| --- | --- | --- |"]
    lines += [f"| {k} | {groups[k].accuracy_at_1} | {groups[k].upper_bound} |" for k in keys]
    return "\n".join(lines)


def input_files(args: argparse.Namespace, data) -> Iterator[Path]:
    """The files a run reads (which ``--out`` must not replace): the annotations and ``--instances`` or the Flickr30k
    split, sentence and annotation files, and the images of ``data`` (what :func:`main` read; ``None`` for the
    world, which reads no file). Listed only when asked for (a generator)."""
    if args.benchmark == "refcoco":
        yield from (Path(f) for f in (args.annotations, args.instances) if f is not None)
    elif args.benchmark == "flickr30k":
        root = Path(args.root)
        yield from (*root.glob("*.txt"), *(root / "Sentences").glob("*.txt"), *(root / "Annotations").glob("*.xml"))
    if data is not None:
        yield from (Path(args.images) / it.file_name for it in (data if isinstance(data, list) else data.items))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    out = args.out if args.out is not None else f"outputs/evaluate/{args.benchmark}.jsonl"
    wanted = f"the results file's name, e.g. --out {Path(out) / 'results.jsonl'}"
    problem = out_problem("--out", out, folder=False, wanted=wanted)  # at once, before a long read of the data
    if problem:
        return fail(problem, prog=PROG)
    from helpers.grounding.flickr30k import Flickr30kFormatError
    from helpers.grounding.images import ImageLoadError
    from helpers.grounding.model import Decoding, ModelLoadError, load
    from helpers.grounding.refcoco import RefCocoFormatError

    decoding = Decoding(num_beams=args.num_beams, no_repeat_ngram_size=args.no_repeat_ngram_size)
    data = None
    try:  # read the annotations and find the images before spending time on loading a model
        if args.benchmark == "refcoco":
            from helpers.grounding.refcoco import load_refcoco

            data = load_refcoco(args.annotations, instances=args.instances, split=args.split)[: args.limit]
        elif args.benchmark == "flickr30k":
            from helpers.grounding.flickr30k import load_flickr30k_entities

            data = load_flickr30k_entities(args.root, split=None if args.split == "all" else args.split)
            if not args.quiet:
                print(data.summary())
            data.items = data.items[: args.limit]
        if data is not None:
            check_images_exist([it.file_name for it in (data if isinstance(data, list) else data.items)], args.images)
    except (RefCocoFormatError, Flickr30kFormatError, ImageLoadError) as err:
        return fail(str(err), prog=PROG)
    problem = None if data is None else out_problem("--out", out, folder=False, wanted=wanted,
                                                    inputs=input_files(args, data))  # not one of the files read
    if problem:
        return fail(problem, prog=PROG)
    out = Path(out)
    try:
        model, processor = load(args.model, quantization=args.quantization, verbose=not args.quiet)
    except (ModelLoadError, ValueError) as err:
        return fail(str(err), code=1, prog=PROG)
    try:
        if args.benchmark == "world":
            from helpers.world.scenes import sample_scenes

            scenes = sample_scenes(args.scenes, seed=HELD_OUT_SEED if args.seed is None else args.seed)
            if args.captions_only:
                scores, errors = evaluate_captions(model, processor, scenes, batch_size=args.batch_size,
                                                   decoding=decoding)
                rows = [{"task": "caption", "metric": name, "hits": score.hits, "total": score.total}
                        for name, score in (("phrase recall", scores.phrase_recall), ("box hit", scores.box_hit),
                                            ("phrase precision", scores.phrase_precision))]
                rows.append({"task": "caption", "errors": errors})
                table = "\n".join([f"captioning: {r['metric']}: {format_score(r['hits'], r['total'])}"
                                   for r in rows[:3]] + ["", caption_error_table(errors)])
            else:
                report = evaluate(model, processor, scenes, batch_size=args.batch_size, decoding=decoding)
                rows, table = report.rows, report.table() + "\n\n" + caption_error_table(report.caption_errors)
        elif args.benchmark == "refcoco":
            from helpers.grounding.refcoco import evaluate_comprehension

            result = evaluate_comprehension(model, processor, data, args.images, batch_size=args.batch_size,
                                            max_new_tokens=args.max_new_tokens, decoding=decoding)
            rows, table = result.rows, split_table(result.rows)
        else:
            from helpers.grounding.flickr30k import evaluate_phrase_grounding

            result = evaluate_phrase_grounding(model, processor, data, args.images, batch_size=args.batch_size,
                                               max_new_tokens=args.max_new_tokens, decoding=decoding)
            rows, table = result.rows, result.table()
    except (ImageLoadError, ValueError) as err:
        return fail(str(err), prog=PROG)
    write_jsonl(out, rows)
    print(table)
    if not args.quiet:
        print(f"wrote {len(rows)} item(s) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
