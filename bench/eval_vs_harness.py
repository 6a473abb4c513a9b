"""Our multiple-choice scorer against lm-evaluation-harness 0.4.13: same model object, data and device.

    python bench/eval_vs_harness.py [--tasks date_understanding,...] [--limit 100] [--harness-batch 16] [--budget 2.5]
                                    [--reps 2]

For each task the first --limit items are written as a local JSON-lines file and a harness task YAML points at it
(``dataset_path: json``), so the harness runs offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1). The harness gets
the very model instance and tokenizer we score with (``HFLM(pretrained=model, tokenizer=...)``), at full precision
or, with --budget, under the allocator's configuration. Times cover scoring with tokenization on both sides (the
harness's ``loglikelihood`` calls; its one-off indexing of its task folder is left out). Both sides are warmed up on
a few items first (untimed), then each task is scored --reps times by each side, alternating which side goes first
(the first side of a pair also warms the second's caches and memory), and the median times are compared. Reports
items per second, the throughput ratio (ours / harness), and the items whose correctness differs from the harness's
own logged per-sample ``acc`` / ``acc_norm`` or whose predicted choice differs (the target is 0: any difference is a
bug), with the largest log-probability difference. Prints a table and, last, one JSON object.
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
from coa_lora.harness import Harness, compare, write_harness_task  # noqa: E402
from coa_lora.mc_tasks import Task, embedded_tasks  # noqa: E402

WARM_UP_ITEMS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tasks", help="comma-separated (default: every embedded task)")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--harness-batch", type=int, default=16)
    parser.add_argument("--budget", type=float, help="quantize with the allocator's configuration at this budget")
    parser.add_argument("--reps", type=int, default=2, help="timed runs per side and task, alternating the order")
    args = parser.parse_args()

    wb = Workbench.load(args.model)
    if args.budget is not None:
        wb.qmodel.apply_(wb.allocate(args.budget).config)
    names = args.tasks.split(",") if args.tasks else embedded_tasks()
    tasks = [load_task(name, args.limit) for name in names]
    rows = {}
    warm_up = Task("warm_up", tasks[0].items[:WARM_UP_ITEMS], tasks[0].source)
    with tempfile.TemporaryDirectory() as folder:
        harness_names = [write_harness_task(task, Path(folder)) for task in tasks]
        warm_name = write_harness_task(warm_up, Path(folder))
        harness = Harness(wb.model, wb.tokenizer, args.harness_batch, Path(folder))
        harness.logprobs(warm_name)  # untimed: first-call costs (lazy imports, allocator, thread pools) on both sides
        evaluate_task(wb.model, wb.tokenizer, warm_up)
        pair = 0
        for task, harness_name in zip(tasks, harness_names):
            times: dict[str, list[float]] = {"ours": [], "harness": []}
            for _ in range(args.reps):
                for side in (("harness", "ours") if pair % 2 == 0 else ("ours", "harness")):
                    if side == "harness":
                        theirs, harness_s = harness.logprobs(harness_name)
                        times["harness"].append(harness_s)
                    else:
                        t = time.perf_counter()
                        ours = evaluate_task(wb.model, wb.tokenizer, task)
                        times["ours"].append(time.perf_counter() - t)
                pair += 1
            ours_s, harness_s = statistics.median(times["ours"]), statistics.median(times["harness"])
            rows[task.name] = {"items": len(task.items), "ours_s": ours_s, "harness_s": harness_s,
                               "ours_runs_s": times["ours"], "harness_runs_s": times["harness"],
                               "ratio": harness_s / ours_s, **compare(ours, theirs)}
            print(f"{task.name}: {rows[task.name]}", file=sys.stderr, flush=True)

    items = sum(r["items"] for r in rows.values())
    ours_s = sum(r["ours_s"] for r in rows.values())
    harness_s = sum(r["harness_s"] for r in rows.values())
    print(f"{'task':28s} {'items':>5s} {'ours it/s':>9s} {'harness it/s':>12s} {'ratio':>6s} {'differ':>6s} "
          f"{'differ_norm':>11s} {'differ_pred':>11s} {'max |dlogp|':>11s}")
    for name, r in rows.items():
        print(f"{name:28s} {r['items']:5d} {r['items'] / r['ours_s']:9.2f} {r['items'] / r['harness_s']:12.2f} "
              f"{r['ratio']:6.2f} {r['differ_acc']:6d} {r['differ_acc_norm']:11d} {r['differ_pred']:11d} "
              f"{r['max_abs_logprob_diff']:11.2e}")
    print(json.dumps({
        "model": wb.layout.model_id, "budget": args.budget, "limit": args.limit, "harness_batch": args.harness_batch,
        "reps": args.reps, "threads": torch.get_num_threads(),
        "items": items, "ours_items_per_s": items / ours_s, "harness_items_per_s": items / harness_s,
        "throughput_ratio": harness_s / ours_s,
        "differ_acc": sum(r["differ_acc"] for r in rows.values()),
        "differ_acc_norm": sum(r["differ_acc_norm"] for r in rows.values()),
        "differ_pred": sum(r["differ_pred"] for r in rows.values()),
        "max_abs_logprob_diff": max(r["max_abs_logprob_diff"] for r in rows.values()),
        "tasks": rows,
    }))


if __name__ == "__main__":
    main()
