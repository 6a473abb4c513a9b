"""Is a task's accuracy skill or label prior? Per embedded task: the model's answer counts, the gold counts and the
best constant answer's accuracy, at full precision and (optionally) the allocator's configuration at --budget.

    python bench/constant_answer.py [--tasks date_understanding,...] [--budget 2.5]

Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import collections
import json

from coa_lora import Evaluator, Workbench
from coa_lora.evaluation.evaluator import default_cache_dir
from coa_lora.evaluation.tasks import embedded_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tasks", help="comma-separated (default: every embedded task)")
    parser.add_argument("--budget", type=float, help="also under the allocator's configuration at this budget")
    args = parser.parse_args()
    wb = Workbench.load(args.model)
    ev = Evaluator(wb, cache_dir=default_cache_dir())  # shares results with `python -m coa_lora eval`
    configs = {"fp": None}
    if args.budget is not None:
        configs[f"{args.budget:g} bits"] = wb.allocate(args.budget).config
    out = {}
    for task in args.tasks.split(",") if args.tasks else embedded_tasks():
        for label, config in configs.items():
            r = ev.run(task, config)
            answers = collections.Counter(i.choices[i.pred] for i in r.items)
            gold = collections.Counter(i.choices[i.gold] for i in r.items)
            best = max(gold.values()) / r.n
            out[f"{task} {label}"] = {"acc": r.acc, "best_constant_acc": best, "answers": answers.most_common(),
                                      "gold": gold.most_common()}
            print(f"{task} {label}: acc {r.acc:.3f}, best constant answer {best:.3f}, "
                  f"answers {answers.most_common(3)}, gold {gold.most_common(3)}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
