"""Why CoA-LoRA trails a LoRA per configuration (#37), one factor at a time. Factor ``spread`` (no training): does
U_θ's output vary with the configuration at all?

    python bench/why.py --factor spread --compare runs/compare-smollm2-a runs/compare-smollm2-b

For every CoA-LoRA adapter of the comparison folders (one per seed) it reports, over the run's own training set:
how far the mean correction I + Ū is from I, how much U moves with the configuration, and the
configuration-dependent part of the correction s·B(U(c) − Ū)A against the shared part s·B(I + Ū)A
(:func:`coa_lora.lora.diagnose.correction_spread`), per module kind and per layer. As a yardstick it measures how much
the comparison's per-configuration LoRAs of the same seed (same initialisation, same batches) differ between the
lowest and highest trained budget, ‖ΔW(lo) − ΔW(hi)‖ / ‖(ΔW(lo) + ΔW(hi)) / 2‖ over all targets, against the same
quantity for CoA-LoRA at those budgets' configurations. Spreads are mean ± sd over seeds.
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from coa_lora import Workbench, load_trained
from coa_lora.lora.diagnose import correction_spread


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def _deltas(coa) -> dict[str, torch.Tensor]:
    """s·B(I + U)A of every target under the adapter's current correction (none for a plain LoRA)."""
    return {name: w.scaling * w.merged_B() @ w.lora_A.weight.detach() for name, w in coa.wrappers.items()}


def _relative_difference(lo: dict[str, torch.Tensor], hi: dict[str, torch.Tensor]) -> float:
    diff = sum(float((lo[n] - hi[n]).pow(2).sum()) for n in lo)
    mean = sum(float(((lo[n] + hi[n]) / 2).pow(2).sum()) for n in lo)
    return (diff / mean) ** 0.5


def spread(wb: Workbench, compare_folders: list[Path]) -> dict:
    kinds_rows, layer_rows, difference = {}, {}, {"coa": [], "per-config LoRA": []}
    for folder in compare_folders:
        plan = json.loads((folder / "plan.json").read_text())
        lo_budget, hi_budget = min(plan["budgets"]), max(plan["budgets"])
        lo_config, hi_config = wb.allocate(lo_budget).config, wb.allocate(hi_budget).config
        finished = json.loads((folder / "state.json").read_text())["runs"]  # the runs that ran to their last step
        for run in sorted((folder / "runs").glob("coa-seed*")):
            seed = run.name.removeprefix("coa-seed")
            lo_run, hi_run = (folder / "runs" / f"qlora-{b:g}bits-seed{seed}" for b in (lo_budget, hi_budget))
            if not {run.name, lo_run.name, hi_run.name} <= set(finished):
                print(f"{run}: seed {seed} has not finished its runs yet; skipped", flush=True)
                continue
            coa, _, configs = load_trained(wb, run)
            table = correction_spread(coa, configs)
            for kind, part in table.groupby("kind"):
                kinds_rows.setdefault(kind, []).append(part[["u_mean", "u_spread", "config_share",
                                                             "delta_to_weight"]].mean().to_dict())
            for layer, part in table.groupby("layer"):
                layer_rows.setdefault(int(layer), []).append(float(part["config_share"].mean()))
            with torch.no_grad():
                ends = []
                for config in (lo_config, hi_config):
                    coa.config = config  # U for this configuration; the base weights are not needed here
                    coa.refresh()
                    ends.append(_deltas(coa))
                difference["coa"].append(_relative_difference(*ends))
                coa.remove_()
                ends = []
                for qrun in (lo_run, hi_run):
                    plain, _, _ = load_trained(wb, qrun)
                    ends.append(_deltas(plain))
                    plain.remove_()
                difference["per-config LoRA"].append(_relative_difference(*ends))
            print(f"{run.name}: {len(configs)} training configurations, configuration-dependent share "
                  f"{table['config_share'].mean():.4f} (median over targets {table['config_share'].median():.4f}); "
                  f"ΔW({lo_budget:g}) vs ΔW({hi_budget:g}): CoA {difference['coa'][-1]:.4f}, "
                  f"per-config LoRA {difference['per-config LoRA'][-1]:.4f}", flush=True)
    if not difference["coa"]:
        raise SystemExit("No finished CoA-LoRA seed with its per-configuration runs in " + ", ".join(map(str, compare_folders)))
    by_kind = {kind: {col: _mean_sd([row[col] for row in rows]) for col in rows[0]} for kind, rows in kinds_rows.items()}
    print("\nper module kind, mean ± sd over seeds:")
    print(f"{'kind':10s} {'‖Ū‖/‖I‖':>16s} {'spread U/‖I‖':>16s} {'config share':>16s} {'‖ΔW‖/‖W‖':>16s}")
    for kind, cols in by_kind.items():
        print(f"{kind:10s} " + " ".join(f"{m:8.4f} ± {s:5.4f}" for m, s in
                                       (cols[c] for c in ("u_mean", "u_spread", "config_share", "delta_to_weight"))))
    print("config share per layer: " + " ".join(f"{layer}:{statistics.fmean(v):.3f}" for layer, v in sorted(layer_rows.items())))
    return {
        "factor": "spread",
        "seeds": len(difference["coa"]),
        "config_share_by_kind": {k: v["config_share"] for k, v in by_kind.items()},
        "u_mean_by_kind": {k: v["u_mean"] for k, v in by_kind.items()},
        "delta_to_weight_by_kind": {k: v["delta_to_weight"] for k, v in by_kind.items()},
        "config_share_by_layer": {k: statistics.fmean(v) for k, v in sorted(layer_rows.items())},
        "lo_vs_hi_difference": {k: _mean_sd(v) for k, v in difference.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", choices=["spread"], default="spread")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--compare", nargs="+", type=Path, required=True, help="comparison folders (python -m coa_lora compare --out)")
    args = parser.parse_args()
    wb = Workbench.load(args.model)
    print(json.dumps(spread(wb, args.compare)))


if __name__ == "__main__":
    main()
