"""Initial-set size n and segment count U, measured together: how much the segment-wise selection has to select.

    python bench/segments.py --model smollm2 --n 10,20,50 --segments 5,10,20,40 [--runs runs/a,runs/b]

For each n: the allocator's configurations at n even budgets over the default 2.5–7.25 bits (rounded to the
pre-solved grid's steps and read from it), their f1 measured as round 0 measures it (probe loss on the probe play's
windows; the adapter starts as the identity, B = 0, so this is the quantized model itself), then for each U the size
of the training set that the segment-wise Pareto selection keeps. With ``--runs``: the same for each run's final
pool (f1 of the trained adapter, initial configurations plus the proposals of its rounds), in the run's own plane.

The training set's hypervolume does not depend on U (every globally non-dominated configuration is on its segment's
front), so what U decides is only how many dominated configurations keep being trained on: "kept" is the fraction of
the pool selected, 1.0 meaning the selection discards nothing. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from coa_lora import Workbench
from coa_lora.configs.allocation_grid import GRID_STEP
from coa_lora.lora.trainer import TrainOptions, even_budgets, probe_windows
from coa_lora.runs import read_run_info, read_search_tables
from coa_lora.search.in_run import probe_loss
from coa_lora.search.pareto import segment_select


def kept(bits: torch.Tensor, loss: torch.Tensor, segments: list[int], bits_range: tuple[float, float]) -> dict:
    """``{U: fraction of the configurations the segment-wise selection keeps}``."""
    return {u: round(float(segment_select(bits, loss, u, bits_range)[0].double().mean()), 3) for u in segments}


def initial_sets(model: str, sizes: list[int], segments: list[int]) -> list[dict]:
    wb = Workbench.load(model)
    options = TrainOptions()
    probe = probe_windows(wb.tokenizer, options.seq_length, options.probe_windows)
    allocator = wb.grid_allocator()
    rows = []
    for n in sizes:
        # Budgets on the pre-solved grid's 0.05-bit steps (an off-grid budget is a live MILP solve, up to a minute).
        budgets = sorted({round(round(b / GRID_STEP) * GRID_STEP, 6) for b in even_budgets(n=n)})
        configs = [allocator.allocate(b).config for b in budgets]
        losses = []
        for config in tqdm(configs, desc=f"f1 of {n} initial configurations", leave=False):
            wb.qmodel.apply_(config)
            losses.append(probe_loss(wb.model, probe, options.batch_size))
        wb.qmodel.restore_()
        bits = torch.tensor([c.avg_bits for c in configs], dtype=torch.float64)
        loss = torch.tensor(losses, dtype=torch.float64)
        if allocator.live:
            print(f"  ({allocator.live} budgets were solved live: not on the grid)")
        rows.append({"pool": f"initial n={n}", "n": len(configs), "kept": kept(bits, loss, segments, (float(bits.min()),
                                                                                         float(bits.max())))})
    return rows


def final_pools(runs: list[Path], segments: list[int]) -> list[dict]:
    rows = []
    for run in runs:
        pool = read_search_tables(run)["pool"]
        bits = torch.tensor(pool["avg_bits"].to_numpy(), dtype=torch.float64)
        loss = torch.tensor(pool["f1"].to_numpy(), dtype=torch.float64)
        plane = read_run_info(run).search_plane
        rows.append({"pool": f"final {run}", "n": len(pool), "kept": kept(bits, loss, segments,
                                                                          tuple(plane["bits_range"]))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", default="10,20,50", help="initial-set sizes (even budgets over 2.5-7.25 bits)")
    parser.add_argument("--segments", default="5,10,20,40", help="segment counts U")
    parser.add_argument("--runs", help="comma-separated run folders trained with --search: their final pools too")
    args = parser.parse_args()
    segments = [int(u) for u in args.segments.split(",")]
    rows = initial_sets(args.model, [int(n) for n in args.n.split(",")], segments) if args.n else []
    if args.runs:
        rows += final_pools([Path(r) for r in args.runs.split(",")], segments)
    print(f"{'pool':<44s} {'n':>3s}  " + "  ".join(f"U={u:<4d}" for u in segments) + "   (fraction kept)")
    for r in rows:
        print(f"{r['pool']:<44s} {r['n']:>3d}  " + "  ".join(f"{r['kept'][u]:<6.3f}" for u in segments))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
