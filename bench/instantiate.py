"""Configuration instantiation on SmolLM2: cold vs warm, and stepping the budget by 0.1 bit after warm-up.

    python bench/instantiate.py [--model smollm2] [--budget 3.0] [--steps 5]

cold  = apply the allocator's configuration at --budget with an empty cache (quantize + dequantize every matrix);
warm  = restore the full-precision weights, then apply the same configuration again (every option cached);
step  = from the configuration at b, allocate and apply the one at b + 0.1 (only changed matrices are quantized).
Prints a table and, last, one JSON object.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

from coa_lora import Workbench
from coa_lora.quant.quantizer import warm_up


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--budget", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    wb = Workbench.load(args.model)
    qm = wb.qmodel
    t = time.perf_counter()
    wb.allocator()  # damage table: from the disk cache, or computed once
    table_s = time.perf_counter() - t
    config = wb.allocate(args.budget).config
    # Compile the quantizer kernels before timing (a one-off per process, not per configuration).
    t = time.perf_counter()
    warm_up()
    warm_up_s = time.perf_counter() - t

    colds, warms = [], []
    for _ in range(args.reps):
        qm.restore_()
        qm.cache.clear()
        t = time.perf_counter()
        qm.apply_(config)
        colds.append(time.perf_counter() - t)
        qm.restore_()
        t = time.perf_counter()
        qm.apply_(config)
        warms.append(time.perf_counter() - t)
    cold, warm = statistics.median(colds), statistics.median(warms)

    steps = []
    budget = args.budget
    for _ in range(args.steps):
        budget = round(budget + 0.1, 6)
        t = time.perf_counter()
        nxt = wb.allocate(budget).config
        alloc_s = time.perf_counter() - t
        changed = sum(a != b for a, b in zip(qm.config.options, nxt.options))
        t = time.perf_counter()
        qm.apply_(nxt)
        steps.append({"budget": budget, "allocate_s": alloc_s, "apply_s": time.perf_counter() - t, "changed": changed})

    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model {wb.layout.model_id}: {len(wb.layout)} target matrices, configuration at {args.budget} bits")
    print(f"damage table (load or compute): {table_s:.2f} s; kernel warm-up (compilation): {warm_up_s:.1f} s")
    print(f"cold instantiation  {cold * 1e3:9.1f} ms   (median of {args.reps})")
    print(f"warm instantiation  {warm * 1e3:9.1f} ms   -> {cold / warm:.0f}x faster")
    for s in steps:
        print(f"step to {s['budget']:.1f} bits: allocate {s['allocate_s'] * 1e3:7.1f} ms, apply "
              f"{s['apply_s'] * 1e3:7.1f} ms, {s['changed']} matrices changed")
    print(f"peak RSS {rss_mib:.0f} MiB, weight cache {qm.cache.nbytes / 2**20:.0f} MiB in {len(qm.cache)} entries")
    print(json.dumps({
        "warm_up_s": warm_up_s,
        "cold_ms": cold * 1e3,
        "warm_ms": warm * 1e3,
        "warm_speedup": cold / warm,
        "step_allocate_ms_median": statistics.median(s["allocate_s"] for s in steps) * 1e3,
        "step_apply_ms_median": statistics.median(s["apply_s"] for s in steps) * 1e3,
        "step_changed_median": statistics.median(s["changed"] for s in steps),
        "peak_rss_mib": rss_mib,
    }))


if __name__ == "__main__":
    main()
