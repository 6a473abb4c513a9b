"""Our multiple-choice scorer against lm-evaluation-harness 0.4.13: same model object, data and device.

    python bench/eval_vs_harness.py [--tasks date_understanding,...] [--limit 100] [--harness-batch 8,16]
                                    [--budget 2.5] [--reps 2]

Default tasks: every embedded task plus the shape-check tasks (see :data:`SHAPE_TASKS`), so both common task shapes
are measured: long contexts shared by short choices (most embedded tasks) and short or empty contexts with
sentence-long choices (the shape of COPA, PIQA, HellaSwag). Each task's shape is read off its tokens: "long context"
when its contexts average more than twice as many tokens as its choices, else "short context" (date_understanding
3.8, movie_recommendation 13; unit_conversion_si 1.6, hhh_alignment about 1, cause_and_effect 0.1).

For each task the first --limit items are written as a local JSON-lines file and a harness task YAML points at it
(``dataset_path: json``), so the harness runs offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1). The harness gets
the very model instance and tokenizer we score with (``HFLM(pretrained=model, tokenizer=...)``), at full precision
or, with --budget, under the allocator's configuration, once per --harness-batch size. Times cover scoring with
tokenization on all sides (the harness's ``loglikelihood`` calls; its one-off indexing of its task folder is left
out). Every side is warmed up on a few items first (untimed), then each task is scored --reps times by each side,
rotating which side goes first, and median times are compared. Reports items per second, the throughput ratio
(harness seconds / ours) per task, per shape and overall at each harness batch size, and the items whose correctness
differs from the harness's own logged per-sample ``acc`` / ``acc_norm`` or whose predicted choice differs (the
target is 0: any difference is a bug), with the largest log-probability difference. Prints a table and, last, one
JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from coa_lora import Workbench, evaluate_task, load_task  # noqa: E402
from coa_lora.evaluation.harness import Harness, compare, write_harness_task  # noqa: E402
from coa_lora.evaluation.loglik import encode_pair  # noqa: E402
from coa_lora.evaluation.tasks import EMBEDDED_DIR, Task, embedded_tasks, load_embedded  # noqa: E402

WARM_UP_ITEMS = 4
# Tasks of the second shape (empty or short contexts, sentence-long choices) shipped for this bench, beside the
# embedded tasks but not offered by the app; how they were chosen is in data/bigbench/SELECTION.md.
SHAPE_DIR = "shapes"
SHAPE_TASKS = tuple(f"{SHAPE_DIR}/{p.stem}" for p in sorted((EMBEDDED_DIR / SHAPE_DIR).glob("*.json")))


def task_by_name(name: str, limit: int) -> Task:
    """A shape-check task (``shapes/<name>``) or anything :func:`load_task` reads."""
    return load_embedded(name).head(limit) if name in SHAPE_TASKS else load_task(name, limit)


def shape(task: Task, tokenizer) -> str:
    """"long context" when the task's contexts average more than twice its choices' tokens, else "short context"."""
    ctx = cont = 0
    for item in task.items:
        for c, k in item.requests():
            a, b = encode_pair(tokenizer, c, k)
            ctx, cont = ctx + len(a) / len(item.choices), cont + len(b) / len(item.choices)
    # Twice: a context no longer than two choices is not worth much sharing; the tree then gains mostly from
    # choices sharing their first tokens and from identical requests, as on COPA- or HellaSwag-like tasks.
    return "long context" if ctx > 2 * cont else "short context"


def ratios(rows: dict, batches: list[int], names: list[str]) -> dict:
    """Items per second of ours and of the harness at each batch size, summed over ``names``."""
    items = sum(rows[n]["items"] for n in names)
    ours = sum(rows[n]["ours_s"] for n in names)
    out = {"items": items, "ours_items_per_s": items / ours}
    for b in batches:
        theirs = sum(rows[n]["harness_s"][str(b)] for n in names)
        out[f"harness{b}_items_per_s"] = items / theirs
        out[f"ratio{b}"] = theirs / ours
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tasks", help="comma-separated (default: every embedded task and the shape-check tasks)")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--harness-batch", default="8,16", help="comma-separated harness batch sizes")
    parser.add_argument("--budget", type=float, help="quantize with the allocator's configuration at this budget")
    parser.add_argument("--reps", type=int, default=2, help="timed runs per side and task, rotating the order")
    args = parser.parse_args()

    batches = [int(b) for b in args.harness_batch.split(",")]
    wb = Workbench.load(args.model)
    if args.budget is not None:
        wb.qmodel.apply_(wb.allocate(args.budget).config)
    names = args.tasks.split(",") if args.tasks else embedded_tasks() + list(SHAPE_TASKS)
    tasks = [task_by_name(name, args.limit) for name in names]
    rows = {}
    warm_up = Task("warm_up", tasks[0].items[:WARM_UP_ITEMS], tasks[0].source)
    with tempfile.TemporaryDirectory() as folder:
        harness_names = [write_harness_task(task, Path(folder)) for task in tasks]
        warm_name = write_harness_task(warm_up, Path(folder))
        harnesses = {b: Harness(wb.model, wb.tokenizer, b, Path(folder)) for b in batches}
        for harness in harnesses.values():  # untimed: first-call costs (lazy imports, allocator, thread pools)
            harness.logprobs(warm_name)
        evaluate_task(wb.model, wb.tokenizer, warm_up)
        sides = ["ours"] + [str(b) for b in batches]
        turn = 0
        for task, harness_name in zip(tasks, harness_names):
            times: dict[str, list[float]] = {side: [] for side in sides}
            theirs = {}
            for _ in range(args.reps):
                for side in sides[turn % len(sides):] + sides[:turn % len(sides)]:
                    if side == "ours":
                        t = time.perf_counter()
                        ours = evaluate_task(wb.model, wb.tokenizer, task)
                        times["ours"].append(time.perf_counter() - t)
                    else:
                        theirs[side], seconds = harnesses[int(side)].logprobs(harness_name)
                        times[side].append(seconds)
                turn += 1
            ours_s = statistics.median(times["ours"])
            harness_s = {b: statistics.median(times[b]) for b in sides[1:]}
            checks = {b: compare(ours, theirs[b]) for b in sides[1:]}
            rows[task.name] = {
                "items": len(task.items), "shape": shape(task, wb.tokenizer), "ours_s": ours_s,
                "harness_s": harness_s, "runs_s": times,
                "ratio": {b: harness_s[b] / ours_s for b in sides[1:]},
                # Differences against any batch size count: each harness run is its own reference.
                "differ_acc": max(c["differ_acc"] for c in checks.values()),
                "differ_acc_norm": max(c["differ_acc_norm"] for c in checks.values()),
                "differ_pred": max(c["differ_pred"] for c in checks.values()),
                "max_abs_logprob_diff": max(c["max_abs_logprob_diff"] for c in checks.values()),
                "acc": ours.acc, "acc_norm": ours.acc_norm,
            }
            print(f"{task.name}: {rows[task.name]}", file=sys.stderr, flush=True)

    header = f"{'task':40s} {'shape':13s} {'items':>5s} {'ours it/s':>9s} " + " ".join(
        f"{'h' + str(b) + ' it/s':>9s} {'ratio' + str(b):>7s}" for b in batches)
    print(header + f" {'differ':>6s} {'d_norm':>6s} {'d_pred':>6s} {'max|dlogp|':>10s}")
    for name, r in rows.items():
        print(f"{name[-40:]:40s} {r['shape']:13s} {r['items']:5d} {r['items'] / r['ours_s']:9.2f} " + " ".join(
            f"{r['items'] / r['harness_s'][str(b)]:9.2f} {r['ratio'][str(b)]:7.2f}" for b in batches)
            + f" {r['differ_acc']:6d} {r['differ_acc_norm']:6d} {r['differ_pred']:6d}"
            f" {r['max_abs_logprob_diff']:10.2e}")
    by_shape = {s: ratios(rows, batches, [n for n, r in rows.items() if r["shape"] == s])
                for s in sorted({r["shape"] for r in rows.values()})}
    overall = ratios(rows, batches, list(rows))
    for label, r in [*by_shape.items(), ("overall", overall)]:
        print(f"{label:54s} {r['items']:5d} {r['ours_items_per_s']:9.2f} " + " ".join(
            f"{r[f'harness{b}_items_per_s']:9.2f} {r[f'ratio{b}']:7.2f}" for b in batches))
    print(json.dumps({
        "model": wb.layout.model_id, "budget": args.budget, "limit": args.limit, "harness_batches": batches,
        "reps": args.reps, "threads": torch.get_num_threads(), **overall, "by_shape": by_shape,
        "differ_acc": sum(r["differ_acc"] for r in rows.values()),
        "differ_acc_norm": sum(r["differ_acc_norm"] for r in rows.values()),
        "differ_pred": sum(r["differ_pred"] for r in rows.values()),
        "max_abs_logprob_diff": max(r["max_abs_logprob_diff"] for r in rows.values()),
        "tasks": rows,
    }))


if __name__ == "__main__":
    main()
