"""Held-out perplexity of trained adapters against the quantized base, at the allocator's configurations.

    FLAGS="--steps 20 --eval-every 10 --budgets 2.5,3,3.5,4"
    python -m coa_lora train --model smollm2 --method coa --out runs/coa20 $FLAGS
    python -m coa_lora train --model smollm2 --method shared --out runs/shared20 $FLAGS
    python bench/adapter_ppl.py --runs runs/coa20,runs/shared20 [--budgets 2.5,3,3.5,4] [--windows 2]

Perplexity: the held-out plays, --windows 1024-token windows per play (the same numbers as
``python -m coa_lora eval --run RUN --budget B --tasks ppl --limit W``). Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json

from coa_lora import Evaluator, Workbench, load_trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--runs", required=True, help="comma-separated run folders")
    parser.add_argument("--budgets", default="2.5,3,3.5,4")
    parser.add_argument("--windows", type=int, default=2)
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    runs = args.runs.split(",")
    wb = Workbench.load(args.model)
    configs = {b: wb.allocate(b).config for b in budgets}
    ev = Evaluator(wb)
    rows = {b: {"base": ev.run("ppl", configs[b], limit=args.windows).perplexity} for b in budgets}
    for run in runs:
        wb = Workbench.load(args.model)  # a fresh model per run: the adapter wraps it in place
        ev = Evaluator(wb)
        coa, _, _ = load_trained(wb, run)
        for b in budgets:
            rows[b][run] = ev.run("ppl", configs[b], limit=args.windows, adapter=coa).perplexity
    print(f"{'budget':>6s} {'base':>12s} " + " ".join(f"{r:>16s}" for r in runs))
    for b in budgets:
        print(f"{b:6.2f} {rows[b]['base']:12.2f} " + " ".join(f"{rows[b][r]:16.2f}" for r in runs))
    print(json.dumps({"model": args.model, "windows_per_play": args.windows, "rows": rows}))


if __name__ == "__main__":
    main()
