"""Does Fisher weighting make the allocator's configurations better? Held-out perplexity of SmolLM2 under the
allocator's configuration at each budget, damage weighted (a) by nothing and (b) by the diagonal Fisher estimate,
next to the best uniform preset within the budget.

    python bench/allocator_weighting.py [--budgets 2.5,3,4] [--windows 2]

Perplexity: the held-out plays, 1024-token windows, --windows per play. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json

from coa_lora import ModelConfig, Workbench, preset
from coa_lora.evaluation.perplexity import PerplexityOptions, heldout_perplexity


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--budgets", default="2.5,3,4")
    parser.add_argument("--windows", type=int, default=2)
    args = parser.parse_args()
    wb = Workbench.load(args.model)
    opts = PerplexityOptions()

    def ppl(config=None) -> float:
        if config is None:
            wb.qmodel.restore_()
        else:
            wb.qmodel.apply_(config)
        return heldout_perplexity(wb.model, wb.tokenizer, opts, limit=args.windows).perplexity

    rows = [{"budget": None, "full_precision": ppl()}]
    print(f"full precision: {rows[0]['full_precision']:.2f}")
    print(f"{'budget':>6s} {'uniform':>8s} {'ppl uniform':>12s} {'ppl none':>9s} {'ppl fisher':>11s}")
    for budget in (float(b) for b in args.budgets.split(",")):
        uniform = [p for p in ("nf2", "nf3", "nf4", "nf8") if preset(p).bits_per_weight <= budget][-1]
        row = {
            "budget": budget,
            "uniform": uniform,
            "uniform_ppl": ppl(ModelConfig.uniform(wb.layout, preset(uniform))),
            "none_ppl": ppl(wb.allocate(budget, "none").config),
            "fisher_ppl": ppl(wb.allocate(budget, "fisher").config),
        }
        rows.append(row)
        print(f"{budget:6.2f} {uniform:>8s} {row['uniform_ppl']:12.2f} {row['none_ppl']:9.2f} "
              f"{row['fisher_ppl']:11.2f}")
    print(json.dumps({"model": wb.layout.model_id, "windows_per_play": args.windows, "rows": rows}))


if __name__ == "__main__":
    main()
