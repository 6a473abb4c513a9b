"""Allocator on SmolLM2: average bits, damage and solve time per budget, plus the damage table's compute time.

    python bench/allocator.py [--model smollm2] [--budgets 2.5,3,4,6] [--weighting fisher|none]

Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time

from coa_lora import ModelConfig, Workbench, preset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--budgets", default="2.5,3,4,6")
    parser.add_argument("--weighting", default="fisher", choices=["none", "fisher"])
    args = parser.parse_args()
    wb = Workbench.load(args.model)
    t = time.perf_counter()
    table = wb.damage_table(args.weighting)
    load_s = time.perf_counter() - t
    allocator = wb.allocator(args.weighting)
    print(f"{wb.layout.model_id}: damage table ({args.weighting}) computed in {table.seconds:.1f} s "
          f"(this run: {load_s:.1f} s to load or compute)")
    print(f"{'budget':>6s} {'avg bits':>9s} {'damage':>12s} {'uniform damage':>15s} {'solve s':>8s}")
    rows = []
    for budget in (float(b) for b in args.budgets.split(",")):
        t = time.perf_counter()
        a = allocator.allocate(budget)
        solve_s = time.perf_counter() - t
        # The best uniform preset within the budget, for scale (NF-b with 8-bit fp32 scales, B0 64, B1 256).
        uniform = [p for p in ("nf2", "nf3", "nf4", "nf8") if preset(p).bits_per_weight <= budget]
        u_damage = (table.damage(ModelConfig.uniform(wb.layout, preset(uniform[-1])).option_indices())
                    if uniform else float("nan"))
        rows.append({"budget": budget, "avg_bits": a.avg_bits, "damage": a.damage, "uniform": uniform[-1:] or None,
                     "uniform_damage": u_damage, "solve_s": solve_s})
        print(f"{budget:6.2f} {a.avg_bits:9.4f} {a.damage:12.4g} {u_damage:15.4g} {solve_s:8.2f}")
    print(json.dumps({"model": wb.layout.model_id, "weighting": args.weighting, "table_seconds": table.seconds,
                      "rows": rows}))


if __name__ == "__main__":
    main()
