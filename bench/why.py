"""Why CoA-LoRA trails a LoRA per configuration (#37), one factor at a time. Factor ``spread`` (no training): does
U_θ's output vary with the configuration at all?

    python bench/why.py --factor spread --compare runs/compare-smollm2-a runs/compare-smollm2-b runs/compare-smollm2-c

For every CoA-LoRA adapter of the comparison folders (one per seed) it reports, over the run's own training set:
how far the mean correction I + Ū is from I, how much U moves with the configuration, and the
configuration-dependent part of the correction s·B(U(c) − Ū)A against the shared part s·B(I + Ū)A
(:func:`coa_lora.lora.diagnose.correction_spread`), per module kind and per layer. As a yardstick it measures how much
the comparison's per-configuration LoRAs of the same seed (same initialisation, same batches) differ between the
lowest and highest trained budget, ‖ΔW(lo) − ΔW(hi)‖ / ‖(ΔW(lo) + ΔW(hi)) / 2‖ over all targets, against the same
quantity for CoA-LoRA at those budgets' configurations. Spreads are mean ± sd over seeds.
Factor ``repair`` (no training): what the comparison's adapters do to the quantization damage, from its result files.
Per method and budget, paired by seed: the KL from the unquantized model that remains against the quantized base's
(KL_method / KL_base: below 1 the adapter repairs, above 1 it moves the model further from the unquantized one),
and held-out perplexity against the unquantized model's (measured once, same windows): below 1 the adapter has
adapted to the text beyond what the unquantized model knows.

    python bench/why.py --factor repair --compare runs/compare-smollm2-a runs/compare-smollm2-b runs/compare-smollm2-c \
        --out data/compare/smollm2-rank8

Factor ``arms`` (training): CoA-LoRA with one setting changed at a time, the search off so each arm is one plain
training, at the budgets where the damage is largest (2.5 and 3.0 bits trained by per-configuration LoRA, 2.75
unseen). Each arm is a small comparison of its own (``runs/why/<arm>``: resumable, its runs ordinary run folders);
its effect is 100·ln(metric_arm / metric_default) paired by seed, mean ± sd, for held-out perplexity and KL, and,
with ``--compare``, the gap to the comparison's per-configuration LoRA of the same seeds before and after:

    OMP_NUM_THREADS=1 nohup python bench/why.py --factor arms --arms u-lr-10x --seeds 0,1,2 --root runs/why \
        --compare runs/compare-smollm2-a runs/compare-smollm2-b runs/compare-smollm2-c > runs/why-u-lr.log 2>&1 &
    python bench/why.py --factor arms --arms kd,rank-64,steps-2x,qlora-rank-64,qlora-steps-2x,u-lr-10x --seeds 0,1,2 \
        --no-train --root runs/why --compare runs/compare-smollm2-a runs/compare-smollm2-b runs/compare-smollm2-c \
        --out data/compare/smollm2-rank8   # the report, generated into the why.json docs/RESULTS.md shows

An arm in ``BASES`` is measured against another arm instead of the default one (``rank-64-u-lr-10x`` against
``rank-64``: U_θ's learning rate at the library's default rank).

Two arms train at a time (one thread each); an arm killed at any step resumes where it stopped. The arms train at
rank 8, the rank of the comparison they are measured against (data/compare/smollm2-rank8), whatever the default is.
The verdict (:mod:`why_verdict`) is generated once the capacity and steps arms are there.

Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

from coa_lora import Workbench, load_trained
from coa_lora.compare import read_why
from coa_lora.compare.report import WHY_FILE
from coa_lora.lora import even_budgets
from coa_lora.lora.diagnose import correction_spread
from coa_lora.storage import write_json
from why_verdict import fmt_sd, gap_verdict  # bench/why_verdict.py, beside this script


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample sd over seeds; one seed has no sd (None: JSON null, "–" in the report)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _deltas(coa) -> dict[str, torch.Tensor]:
    """s·B(I + U)A of every target under the adapter's current correction (none for a plain LoRA)."""
    return {name: w.scaling * w.merged_B() @ w.lora_A.weight.detach() for name, w in coa.wrappers.items()}


def _relative_difference(lo: dict[str, torch.Tensor], hi: dict[str, torch.Tensor]) -> float:
    diff = sum(float((lo[n] - hi[n]).pow(2).sum()) for n in lo)
    mean = sum(float(((lo[n] + hi[n]) / 2).pow(2).sum()) for n in lo)
    return (diff / mean) ** 0.5


def spread(wb: Workbench, compare_folders: list[Path]) -> dict:
    kinds_rows, layer_rows, difference = {}, {}, {"coa": [], "per-config LoRA": []}
    per_seed = {"share": [], "u_mean": [], "delta_to_weight": []}  # each seed's mean over the target matrices
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
            per_seed["share"].append(float(table["config_share"].mean()))
            per_seed["u_mean"].append(float(table["u_mean"].mean()))
            per_seed["delta_to_weight"].append(float(table["delta_to_weight"].mean()))
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
        print(f"{kind:10s} " + " ".join(f"{m:8.4f} ± {fmt_sd(s, 4):>6s}" for m, s in
                                       (cols[c] for c in ("u_mean", "u_spread", "config_share", "delta_to_weight"))))
    print("config share per layer: " + " ".join(f"{layer}:{statistics.fmean(v):.3f}" for layer, v in sorted(layer_rows.items())))
    measured = {
        "configuration-dependent share of the correction": per_seed["share"],
        "‖Ū‖ / ‖I‖": per_seed["u_mean"],
        "‖ΔW‖ / ‖W‖": per_seed["delta_to_weight"],
        f"ΔW({lo_budget:g}) vs ΔW({hi_budget:g}), CoA-LoRA": difference["coa"],
        f"ΔW({lo_budget:g}) vs ΔW({hi_budget:g}), two per-configuration LoRAs": difference["per-config LoRA"],
    }
    stats = {k: dict(zip(("mean", "sd"), _mean_sd(v)), n=len(v)) for k, v in measured.items()}
    share, coa_diff, pc_diff = (stats[k]["mean"] for k in list(measured)[:1] + list(measured)[3:])
    return {
        "question": "Does U_θ's output vary with the configuration at all?",
        "measured": stats,
        "finding": f"U_θ is not idle (the mean I + Ū is {stats['‖Ū‖ / ‖I‖']['mean']:.2f} of ‖I‖ away from I), but only "
                   f"{share:.0%} of the correction moves with the configuration over the training set: CoA-LoRA's "
                   f"corrections at {lo_budget:g} and {hi_budget:g} bits differ by {coa_diff:.0%}, two "
                   f"per-configuration LoRAs of the same seed by {pc_diff:.0%}. The adapter is mostly one shared "
                   "correction; U_θ can only mix within the r-dimensional spans of A and B that all configurations "
                   "share.",
        "by_kind": by_kind,
        "config_share_by_layer": {k: statistics.fmean(v) for k, v in sorted(layer_rows.items())},
    }


def repair(wb: Workbench, compare_folders: list[Path]) -> dict:
    import pandas as pd

    from coa_lora.evaluation import EvalOptions, Evaluator, PerplexityOptions

    plan = json.loads((compare_folders[0] / "plan.json").read_text())
    rows = pd.concat([pd.read_csv(f / "results.csv") for f in compare_folders], ignore_index=True)
    base = rows[rows["method"] == "base"].drop_duplicates("budget").set_index("budget")
    length = plan["ppl_length"]
    evaluator = Evaluator(wb, EvalOptions(perplexity=PerplexityOptions(length=length, stride=length)))
    reference = evaluator.run("ppl", None, limit=plan["ppl_limit"]).perplexity  # the unquantized model, same windows
    print(f"unquantized model: held-out perplexity {reference:.2f} ({plan['ppl_limit']} window(s) of {length} per play)")
    table, measured = {}, {}
    budgets = sorted(set(plan["budgets"]) | set(plan["unseen"]))
    print(f"{'method':8s} {'bits':>5s} {'KL / base KL':>16s} {'ppl / unquantized':>18s}  n")
    for method in [m for m in ("qlora", "shared", "coa") if m in set(rows["method"])]:
        for budget in budgets:
            part = rows[(rows["method"] == method) & (rows["budget"] == budget)].dropna(subset=["seed"])
            if part.empty:
                continue
            kl = _mean_sd((part["kl"] / base.loc[budget, "kl"]).tolist())
            ppl = _mean_sd((part["perplexity"] / reference).tolist())
            table[f"{method}@{budget:g}"] = {"kl_remaining": kl, "ppl_over_unquantized": ppl, "n": len(part)}
            print(f"{method:8s} {budget:5g} {kl[0]:8.3f} ± {fmt_sd(kl[1], 3):>5s} {ppl[0]:10.3f} ± {fmt_sd(ppl[1], 3):>5s}  {len(part)}")
            if budget in (min(budgets), max(budgets)) and method in ("qlora", "coa"):
                for name, (m, sd) in ((f"KL / base KL, {method} at {budget:g} bits", kl),
                                      (f"perplexity / unquantized, {method} at {budget:g} bits", ppl)):
                    measured[name] = {"mean": m, "sd": sd, "n": len(part)}
    lo, hi = min(budgets), max(budgets)
    coa_hi, base_kl = table.get(f"coa@{hi:g}", {}), base.loc[hi, "kl"]
    finding = (f"At {hi:g} bits the adapters leave {coa_hi.get('kl_remaining', (float('nan'),))[0]:.2f}x the quantized "
               f"base's KL ({base_kl:.3f} nats) while reaching {coa_hi.get('ppl_over_unquantized', (float('nan'),))[0]:.2f}x"
               " the unquantized model's perplexity: there is little damage left to repair and the `lm` objective "
               "spends the adapter on the text (adaptation every adapter learns, which moves the model away from "
               f"the unquantized one). At {lo:g} bits damage dominates and the comparison of repair between methods "
               "is what the configuration-aware part is for.")
    return {"question": "What do the adapters repair, and what do they adapt? (the comparison's own evaluations)",
            "measured": measured, "finding": finding, "reference_perplexity": reference, "table": table}


# One change each against the default arm (CoA-LoRA, search off, the comparison's steps, rank and initial set).
ARMS = {
    "default": ({}, "the reference arm"),
    "kd": ({"train": {"objective": "kd"}}, "Distillation toward the unquantized model instead of the text's "
                                         "next-token loss: does repairing damage, not adapting, close the gap?"),
    "steps-2x": ({"steps": 120}, "Twice the steps: CoA-LoRA spreads its steps over the set, a per-configuration "
                                 "LoRA spends all of them on one configuration."),
    "steps-4x": ({"steps": 240}, "Four times the steps."),
    "rank-16": ({"rank": 16}, "Capacity: rank 16 (U is 16 x 16)."),
    "rank-64": ({"rank": 64}, "Capacity: rank 64, the official code's."),
    "init-50": ({"set_budgets": even_budgets(n=50)}, "The official code's 50 initial configurations instead of 10."),
    # Not a CoA-LoRA arm: per-configuration LoRA at rank 64, so that the rank-64 arm is also compared at equal rank.
    "qlora-rank-64": ({"rank": 64, "methods": ("qlora",)}, "Per-configuration LoRA at rank 64 too: is the rank-64 "
                                                           "arm's gain capacity that every method gets?"),
    "qlora-steps-2x": ({"steps": 120, "methods": ("qlora",)}, "Per-configuration LoRA at twice the steps too: is the "
                                                             "steps-2x arm's gain training that every method gets?"),
    "stratified": ({"train": {"draws": "stratified"}}, "Draws: every initial configuration keeps its share."),
    # Factor 1's levers (spread by arm: U_θ's configuration-dependent share still grows at 120 steps).
    "u-lr-10x": ({"train": {"u_lr_scale": 10.0}}, "U_θ's learning rate 10x the adapter's: is its configuration-"
                                                   "dependent part slow to learn?"),
    # The lever that helped at rank 8, at the library's default rank: measured against the rank-64 arm (BASES).
    "rank-64-u-lr-10x": ({"rank": 64, "train": {"u_lr_scale": 10.0}}, "U_θ's learning rate 10x at rank 64 (the "
                                                                       "default since #37): does the gain carry over?"),
    "u-init": ({"train": {"u_init_std": 1e-3}}, "U_θ's last layer drawn from N(0, 1e-3²) as in the official code, "
                                                "not zero: do the layers before it learn from the first step?"),
}
ARM_BUDGETS, ARM_UNSEEN = (2.5, 3.0), (2.75,)
# A per-configuration arm is compared with per-configuration LoRA at the default rank, and its CoA-LoRA partner with it.
PARTNERS = {"qlora-rank-64": "rank-64", "qlora-steps-2x": "steps-2x"}
# The arm a CoA-LoRA arm is measured against, when it is not the default arm (one change at a time from it).
BASES = {"rank-64-u-lr-10x": "rank-64"}


def _method(arm: str) -> str:
    return ARMS[arm][0].get("methods", ("coa",))[0]


def arm_plan(model: str, arm: str, seeds: tuple[int, ...]):
    """The arm's comparison plan: CoA-LoRA only, search off, evaluated at 2.5, 2.75 and 3.0 bits (held-out
    perplexity and KL; no zero-shot task, whose standard error at 40 items separates nothing here)."""
    import dataclasses

    from coa_lora.compare import ComparePlan

    # Rank 8: the rank the arms' reference (the rank-8 comparison and its default arm) trained at, whatever the
    # library's default is now (64 since #37).
    base = ComparePlan.quick() if model == "tiny" else ComparePlan(rank=8)
    changes, _ = ARMS[arm]
    train = {**dict(base.train), **changes.get("train", {})}
    other = {k: v for k, v in changes.items() if k not in ("train", "methods")}
    return dataclasses.replace(base, methods=changes.get("methods", ("coa",)), search="off", seeds=seeds, tasks=(),
                               budgets=ARM_BUDGETS, unseen=ARM_UNSEEN, train=tuple(train.items()), **other)


def _paired(a, b, metric: str) -> dict[float, tuple[float, float | None, int]]:
    """Per budget: 100·ln(a / b) of ``metric`` paired by seed → (mean, sd, n)."""

    out = {}
    for budget in sorted(set(a["budget"])):
        x = a[a["budget"] == budget].set_index("seed")[metric]
        y = b[b["budget"] == budget].set_index("seed")[metric]
        seeds = sorted(set(x.index) & set(y.index))
        if seeds:
            values = [100 * math.log(x[s] / y[s]) for s in seeds]
            out[budget] = (*_mean_sd(values), len(values))
    return out


def arms(wb: Workbench, args) -> dict:
    """Train the listed arms (unless --no-train), then each arm's effect against the default arm."""
    import pandas as pd

    from coa_lora.compare import run_comparison
    from coa_lora.progress import tqdm_progress

    seeds = tuple(int(s) for s in args.seeds.split(","))
    names = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in names if a not in ARMS]
    if unknown:
        raise SystemExit(f"Unknown arm {unknown[0]!r}; choose from {', '.join(ARMS)}.")
    if not args.no_train:
        for arm in names:
            with tqdm_progress(f"arm {arm}") as progress:
                run_comparison(arm_plan(args.model, arm, seeds), args.root / arm, wb=wb, progress=progress,
                               command="python bench/why.py " + " ".join(sys.argv[1:]))
    results = {}
    for arm in dict.fromkeys(["default", *names, *(BASES[a] for a in names if a in BASES)]):
        path = args.root / arm / "results.csv"
        if path.is_file():
            rows = pd.read_csv(path)
            results[arm] = rows[rows["method"] == _method(arm)]
    if "default" not in results:
        raise SystemExit(f"The default arm has no results in {args.root / 'default'} yet; train it (--arms default).")
    reference = None
    if args.compare:
        rows = pd.concat([pd.read_csv(f / "results.csv") for f in args.compare], ignore_index=True)
        reference = rows[rows["method"] == "qlora"]  # per-configuration LoRA, same seeds, budgets and windows
    entries = {}
    for arm in [a for a in names if a in PARTNERS and a in results and reference is not None]:
        partner, measured = PARTNERS[arm], {}
        for metric, label in (("perplexity", "ppl"), ("kl", "KL")):
            for budget, (m, sd, n) in _paired(results[arm], reference, metric).items():
                measured[f"100·ln({label} {arm} / per-config LoRA) at {budget:g} bits"] = {"mean": m, "sd": sd, "n": n}
            if partner in results:
                for budget, (m, sd, n) in _paired(results[partner], results[arm], metric).items():
                    measured[f"100·ln({label} {partner} / {arm}) at {budget:g} bits"] = {"mean": m, "sd": sd, "n": n}
        print(f"\narm {arm}, mean ± sd over seeds:")
        for k, v in measured.items():
            print(f"  {k}: {v['mean']:+.2f} ± {fmt_sd(v['sd'], 2)} (n = {v['n']})")
        gap = {k: v for k, v in measured.items() if k.startswith(f"100·ln(ppl {partner} / {arm})")}
        entries[f"arm {arm}"] = {
            "question": ARMS[arm][1], "measured": measured,
            "finding": (f"{partner} against {arm} (the same change for both methods), held-out perplexity: "
                        + "; ".join(f"{k.split(' at ')[1]} {v['mean']:+.1f} ± {fmt_sd(v['sd'], 1)}" for k, v in gap.items())
                        + " (100·ln ratio, paired by seed; above 0: CoA-LoRA behind)."),
        }
    for arm in [a for a in names if a != "default" and a in results and a not in PARTNERS]:
        base = BASES.get(arm, "default")
        if base not in results:
            raise SystemExit(f"Arm {arm} is measured against arm {base}, which has no results under {args.root}; "
                             f"train it (--arms {base}).")
        measured = {}
        for metric, label in (("perplexity", "ppl"), ("kl", "KL")):
            for budget, (m, sd, n) in _paired(results[arm], results[base], metric).items():
                measured[f"100·ln({label} {arm} / {base}) at {budget:g} bits"] = {"mean": m, "sd": sd, "n": n}
        if reference is not None:
            for metric, label in (("perplexity", "ppl"), ("kl", "KL")):
                for who, rows in ((base, results[base]), (arm, results[arm])):
                    for budget, (m, sd, n) in _paired(rows, reference, metric).items():
                        measured[f"100·ln({label} {who} / per-config LoRA) at {budget:g} bits"] = {
                            "mean": m, "sd": sd, "n": n}
        def clear(label: str, sign: int) -> int:
            """Budgets where the arm is clearly better (sign -1) or worse (+1): |mean| beyond its standard error."""
            return sum(1 for k, v in measured.items() if k.startswith(f"100·ln({label} {arm} / {base})") and v["sd"]
                       is not None and sign * v["mean"] - v["sd"] / v["n"] ** 0.5 > 0)
        print(f"\narm {arm} against {base}, mean ± sd over seeds:")
        for k, v in measured.items():
            print(f"  {k}: {v['mean']:+.2f} ± {fmt_sd(v['sd'], 2)} (n = {v['n']})")
        entries[f"arm {arm}"] = {
            "question": ARMS[arm][1], "measured": measured,
            "finding": (f"Against the {base} arm, over {len(ARM_BUDGETS) + len(ARM_UNSEEN)} budgets: held-out "
                        f"perplexity clearly better at {clear('ppl', -1)}, clearly worse at {clear('ppl', 1)}; KL "
                        f"clearly better at {clear('KL', -1)}, clearly worse at {clear('KL', 1)} (clearly: the mean "
                        "beyond its standard error over seeds)."),
        }
    verdict = gap_verdict(entries)
    if verdict is not None:
        entries["verdict"] = verdict
    return entries


FACTORS = {"spread": spread, "repair": repair}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", choices=sorted(FACTORS) + ["arms"], default="spread")
    parser.add_argument("--arms", default="default", help=f"arms to train and report: {', '.join(ARMS)}")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the arms (the comparison's, for pairing)")
    parser.add_argument("--root", type=Path, default=Path("runs/why"), help="where the arms' comparisons go")
    parser.add_argument("--no-train", action="store_true", help="report arms already trained, train nothing")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--compare", nargs="+", type=Path, default=[],
                        help="comparison folders (python -m coa_lora compare --out) holding the adapters")
    parser.add_argument("--out", type=Path, help="a comparison folder whose why.json gets this factor (its RESULTS.md "
                        "and `compare --merge ... --report` then show it)")
    args = parser.parse_args()
    if args.out is not None:
        read_why(args.out)  # a bad why.json is refused before the long part
    wb = Workbench.load(args.model)
    command = "python bench/why.py " + " ".join(sys.argv[1:])
    if args.factor == "arms":
        entries = {k: {**v, "command": command} for k, v in arms(wb, args).items()}
    else:
        if not args.compare:
            raise SystemExit(f"--factor {args.factor} reads a comparison's adapters or results: pass --compare.")
        entries = {args.factor: {**FACTORS[args.factor](wb, args.compare), "command": command}}
    if args.out is not None:
        write_json(args.out / WHY_FILE, {**read_why(args.out), **entries})  # read again: another may have written
    print(json.dumps(entries))


if __name__ == "__main__":
    main()
