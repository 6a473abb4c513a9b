"""Our multiple-choice scorer against lm-evaluation-harness 0.4.13: same model object, data and device.

    python bench/eval_vs_harness.py [--tasks hyperbaton,...] [--limit 100] [--harness-batch 16] [--budget 2.5]

For each task the first --limit items are written as a local JSON-lines file and a harness task YAML points at it
(``dataset_path: json``), so the harness runs offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1). The harness gets
the very model instance and tokenizer we score with (``HFLM(pretrained=model, tokenizer=...)``), at full precision
or, with --budget, under the allocator's configuration. Times cover scoring with tokenization on both sides (the
harness's ``loglikelihood`` calls; its one-off indexing of its task folder is left out). Reports items per second, the throughput ratio
(ours / harness), and the items whose ``acc`` or ``acc_norm`` predictions differ (the target is 0: any difference is
a bug) with the largest log-probability difference. Prints a table and, last, one JSON object.
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
from coa_lora.evaluate import argmax  # noqa: E402
from coa_lora.mc_tasks import Task, embedded_tasks  # noqa: E402

YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def write_harness_task(task: Task, folder: Path) -> str:
    """A harness task named ``coa_<task>`` reading ``task``'s items from a local JSON-lines file; returns its name."""
    if any(item.continuation is not None for item in task.items):
        raise ValueError(f"Task {task.name} uses partial scoring, which this bench does not translate.")
    name = "coa_" + "".join(c if c.isalnum() else "_" for c in Path(task.name).stem)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(item.to_dict()) + "\n" for item in task.items))
    (folder / f"{name}.yaml").write_text(YAML.format(name=name, data=data))
    return name


class Harness:
    """lm-evaluation-harness around our model instance; times only its log-likelihood calls (tokenization included),
    not its one-off task indexing, so both sides are timed on the same work."""

    def __init__(self, model, tokenizer, batch_size: int, folder: Path):
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
        self.tasks = TaskManager(include_path=str(folder))
        self.seconds = 0.0
        score = self.lm.loglikelihood

        def timed(requests, *args, **kwargs):
            t = time.perf_counter()
            try:
                return score(requests, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t

        self.lm.loglikelihood = timed

    def logprobs(self, name: str) -> tuple[list[list[float]], float]:
        """Per item, the harness's log-likelihood of each choice (item order), and the seconds it took."""
        import lm_eval

        self.seconds = 0.0
        out = lm_eval.simple_evaluate(model=self.lm, tasks=[name], num_fewshot=0, log_samples=True,
                                      task_manager=self.tasks, bootstrap_iters=0, verbosity="ERROR")
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        return [[float(r[0]) for r in s["filtered_resps"]] for s in samples], self.seconds


def compare(ours, theirs: list[list[float]]) -> dict:
    differ = differ_norm = 0
    worst = 0.0
    for record, lls in zip(ours.items, theirs):
        normed = [lp / len(c) for lp, c in zip(lls, record.choices)]
        differ += record.pred != argmax(lls)
        differ_norm += record.pred_norm != argmax(normed)
        worst = max(worst, max(abs(a - b) for a, b in zip(record.logprobs, lls)))
    return {"differ_acc": differ, "differ_acc_norm": differ_norm, "max_abs_logprob_diff": worst}


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
