"""Our multiple-choice scorer against lm-evaluation-harness 0.4.13: same model object, data and device.

    python bench/eval_vs_harness.py [--tasks hyperbaton,...] [--limit 100] [--harness-batch 16] [--budget 2.5]

For each task the first --limit items are written as a local JSON-lines file and a harness task YAML points at it
(``dataset_path: json``), so the harness runs offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1). The harness gets
the very model instance and tokenizer we score with (``HFLM(pretrained=model, tokenizer=...)``), at full precision
or, with --budget, under the allocator's configuration. Times cover scoring with tokenization on both sides (the
harness's ``loglikelihood`` calls; its one-off indexing of its task folder is left out). Reports items per second,
the throughput ratio (ours / harness), and the items whose ``acc`` or ``acc_norm`` predictions differ (the target is
0: any difference is a bug) with the largest log-probability difference. Prints a table and, last, one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from coa_lora import Workbench, evaluate_task, load_task  # noqa: E402
from coa_lora.harness import Harness, compare, write_harness_task  # noqa: E402
from coa_lora.mc_tasks import embedded_tasks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tasks", help="comma-separated (default: every embedded task)")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--harness-batch", type=int, default=16)
    parser.add_argument("--budget", type=float, help="quantize with the allocator's configuration at this budget")
    args = parser.parse_args()

    wb = Workbench.load(args.model)
    if args.budget is not None:
        wb.qmodel.apply_(wb.allocate(args.budget).config)
    names = args.tasks.split(",") if args.tasks else embedded_tasks()
    tasks = [load_task(name, args.limit) for name in names]
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        harness_names = [write_harness_task(task, Path(folder)) for task in tasks]
        harness = Harness(wb.model, wb.tokenizer, args.harness_batch, Path(folder))
        for task, harness_name in zip(tasks, harness_names):
            theirs, harness_s = harness.logprobs(harness_name)
            t = time.perf_counter()
            ours = evaluate_task(wb.model, wb.tokenizer, task)
            ours_s = time.perf_counter() - t
            rows[task.name] = {"items": len(task.items), "ours_s": ours_s, "harness_s": harness_s,
                               "ratio": harness_s / ours_s, "acc": ours.acc, **compare(ours, theirs)}
            print(f"{task.name}: {rows[task.name]}", file=sys.stderr, flush=True)

    items = sum(r["items"] for r in rows.values())
    ours_s = sum(r["ours_s"] for r in rows.values())
    harness_s = sum(r["harness_s"] for r in rows.values())
    print(f"{'task':28s} {'items':>5s} {'ours it/s':>9s} {'harness it/s':>12s} {'ratio':>6s} {'differ':>6s} "
          f"{'differ_norm':>11s} {'max |dlogp|':>11s}")
    for name, r in rows.items():
        print(f"{name:28s} {r['items']:5d} {r['items'] / r['ours_s']:9.2f} {r['items'] / r['harness_s']:12.2f} "
              f"{r['ratio']:6.2f} {r['differ_acc']:6d} {r['differ_acc_norm']:11d} {r['max_abs_logprob_diff']:11.2e}")
    print(json.dumps({
        "model": wb.layout.model_id, "budget": args.budget, "limit": args.limit, "harness_batch": args.harness_batch,
        "items": items, "ours_items_per_s": items / ours_s, "harness_items_per_s": items / harness_s,
        "throughput_ratio": harness_s / ours_s,
        "differ_acc": sum(r["differ_acc"] for r in rows.values()),
        "differ_acc_norm": sum(r["differ_acc_norm"] for r in rows.values()),
        "max_abs_logprob_diff": max(r["max_abs_logprob_diff"] for r in rows.values()),
        "tasks": rows,
    }))


if __name__ == "__main__":
    main()
