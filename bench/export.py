"""Deploying a configuration: export time and size on disk per budget; load time and peak RSS of a packed checkpoint.

    OMP_NUM_THREADS=1 python bench/export.py [--model smollm2] [--budgets 2.5,3,4] [--load-budget 3] [--reps 3]

export = ``save_packed`` of the allocator's configuration (Fisher-weighted, the CLI's default) with the tokenizer,
         after the damage table is loaded and the quantizer kernels are compiled (both reported apart): quantize every
         target matrix, write and rename the folder.
size   = weights on disk (quantized.safetensors + unquantized.safetensors) against the unquantized model.safetensors
         that ``prepare`` wrote, and against the computed size (``ModelConfig.size_bytes``).
load   = a fresh Python process per repetition that imports coa_lora and transformers' Llama, then loads; wall time
         of the load alone and the process's peak RSS (VmHWM) after the load and after one 16-token forward pass
         (transformers memory-maps the full-precision file, whose pages count only once the weights are used):
         ``load_packed`` of the --load-budget folder, ``load_model`` of the full-precision model (transformers'
         from_pretrained of the safetensors), and a process that only imports (the floor both share). Medians over
         --reps.
Prints a table and, last, one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from coa_lora import Workbench, save_packed
from coa_lora.models.assets import smollm2_dir
from coa_lora.models.loading import SMOLLM2
from coa_lora.quant.quantizer import warm_up

# Run in a fresh interpreter, so that peak RSS is the load's alone (plus the imports every process pays).
CHILD = """
import json, sys, time
start = time.perf_counter()
import coa_lora
import transformers.models.llama.modeling_llama  # the import every load pays is timed apart from the load
from coa_lora.models.loading import load_model
imported = time.perf_counter()
kind, arg = sys.argv[1], sys.argv[2]

def peak_rss_mib():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024

model = coa_lora.load_packed(arg) if kind == "packed" else load_model(arg) if kind == "full" else None
done = time.perf_counter()
loaded_rss = peak_rss_mib()
if model is not None:  # a memory-mapped checkpoint is read only when the weights are used: run one forward pass
    import torch
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 16, dtype=torch.long))
print(json.dumps({"import_s": imported - start, "load_s": done - imported, "peak_rss_mib": loaded_rss,
                  "peak_rss_run_mib": peak_rss_mib()}))
"""


def measure_load(kind: str, arg: str, reps: int, env: dict) -> dict:
    runs = []
    for _ in range(reps):
        out = subprocess.run([sys.executable, "-c", CHILD, kind, arg], capture_output=True, text=True,
                             env={**os.environ, **env}, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=SMOLLM2)
    parser.add_argument("--budgets", default="2.5,3,4")
    parser.add_argument("--load-budget", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    mib = 1024**2

    wb = Workbench.load(args.model)
    t = time.perf_counter()
    wb.allocator()
    table_s = time.perf_counter() - t
    t = time.perf_counter()
    warm_up()
    warm_up_s = time.perf_counter() - t
    full_file = (smollm2_dir() if args.model == SMOLLM2 else Path(args.model)) / "model.safetensors"
    full_bytes = full_file.stat().st_size

    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    rows, folders = [], {}
    for budget in budgets:
        config = wb.allocate(budget).config
        folder = tmp / f"{budget:g}bit"
        t = time.perf_counter()
        summary = save_packed(wb, config, folder)
        export_s = time.perf_counter() - t
        on_disk = summary.quantized_file_bytes + summary.unquantized_bytes
        folders[budget] = folder
        rows.append({"budget": budget, "avg_bits": summary.avg_bits, "export_s": export_s, "on_disk": on_disk,
                     "computed": summary.size_bytes, "targets": summary.target_bytes,
                     "ideal": summary.ideal_target_bytes, "folder": summary.disk_bytes})

    try:
        loads = {
            "import only": measure_load("none", "-", args.reps, {}),
            "packed": measure_load("packed", str(folders[args.load_budget]), args.reps, {}),
            "full precision": measure_load("full", args.model, args.reps, {}),
        }
    finally:
        shutil.rmtree(tmp)

    print(f"model {wb.layout.model_id}: {len(wb.layout)} target matrices; unquantized {full_file.name} "
          f"{full_bytes / mib:.1f} MiB; damage table {table_s:.1f} s; kernel warm-up {warm_up_s:.1f} s")
    print("budget  avg bits  export s  on disk MiB  computed MiB  vs unquantized  targets B = bits x n / 8 + padding")
    for r in rows:
        print(f"{r['budget']:6g}  {r['avg_bits']:8.4f}  {r['export_s']:8.2f}  {r['on_disk'] / mib:11.2f}  "
              f"{r['computed'] / mib:12.2f}  {r['on_disk'] / full_bytes:14.1%}  "
              f"{r['targets']:,} = {r['ideal']:,.0f} + {r['targets'] - r['ideal']:,.0f}")
    print(f"load of the {args.load_budget:g}-bit folder vs the full-precision model (fresh process, median of "
          f"{args.reps}; import time excluded from load s, included in peak RSS)")
    print("what            load s  import s  peak RSS MiB: loaded  after a forward")
    for name, m in loads.items():
        print(f"{name:14s}  {m['load_s']:6.2f}  {m['import_s']:8.2f}  {m['peak_rss_mib']:20.0f}  "
              f"{m['peak_rss_run_mib']:15.0f}")
    packed, full, floor = loads["packed"], loads["full precision"], loads["import only"]
    result = {f"disk_ratio_{r['budget']:g}": r["on_disk"] / full_bytes for r in rows}
    result.update({f"export_s_{r['budget']:g}": r["export_s"] for r in rows})
    result["max_disk_vs_computed"] = max(r["on_disk"] / r["computed"] for r in rows)
    result["load_time_ratio"] = packed["load_s"] / full["load_s"]
    result["peak_rss_ratio"] = packed["peak_rss_mib"] / full["peak_rss_mib"]
    result["peak_rss_run_ratio"] = packed["peak_rss_run_mib"] / full["peak_rss_run_mib"]
    result["peak_rss_run_above_imports_ratio"] = ((packed["peak_rss_run_mib"] - floor["peak_rss_run_mib"])
                                                  / (full["peak_rss_run_mib"] - floor["peak_rss_run_mib"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
