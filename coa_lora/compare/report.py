"""A comparison's result files and its report, made only from those files (never edited by hand).

    write_results(comparison, command="python -m coa_lora compare ...")   # results.csv, runs.csv, summary.json
    markdown = results_markdown(read_summary(folder))                       # what docs/RESULTS.md holds

Claims are made over seeds: each cell is mean +- sd over the seeds that finished (n given), never one seed. The gap
of a method to another at a budget is 100 * ln(metric_method / metric_other), paired by seed; a target is met when its
mean plus its standard error stays within the target (for "better": <= 0).
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from coa_lora.compare.plan import LABELS, PER_CONFIG, ComparePlan
from coa_lora.storage import atomic_write_bytes, write_json

RESULTS_FILE, RUNS_FILE, SUMMARY_FILE = "results.csv", "runs.csv", "summary.json"
WHY_FILE = "why.json"  # the diagnosis of the comparison's gap (bench/why.py), kept beside its result files
SUMMARY_VERSION = 1
# The targets for CoA-LoRA, as 100 * ln ratios: within 2 % of per-configuration LoRA at trained budgets,
# better at unseen ones, better than Shared-LoRA everywhere; and at most 0.35 x the per-configuration runs' time.
WITHIN_TRAINED = 100 * math.log(1.02)
TIME_TARGET = 0.35


@dataclass
class Comparison:
    """What :func:`run_comparison` leaves: the plan, its folder, the evaluation rows and the state."""

    plan: ComparePlan
    folder: Path
    rows: list[dict]  # one per (method, seed, budget) evaluated: see evaluation_row
    state: dict


def write_results(comparison: Comparison, command: str, date: str | None = None) -> dict:
    """Write results.csv (one row per evaluation), runs.csv (one per adapter) and summary.json; return the summary."""
    folder = Path(comparison.folder)
    rows = pd.DataFrame(comparison.rows)
    runs = pd.DataFrame([{"run": name, **info} for name, info in comparison.state["runs"].items()],
                        columns=["run", "method", "seed", "budget", "train_seconds", "passes"])
    atomic_write_bytes(folder / RESULTS_FILE, rows.to_csv(index=False).encode())
    atomic_write_bytes(folder / RUNS_FILE, runs.to_csv(index=False).encode())
    summary = summarize(comparison.plan, rows, runs)
    summary.update({"command": command, "date": date or dt.date.today().isoformat(),
                    "machine": comparison.state.get("machine"),
                    "estimate_seconds": comparison.state["estimate_seconds"],
                    "actual_seconds": comparison.state["elapsed_seconds"],
                    "finished": comparison.state.get("finished", False)})
    write_json(folder / SUMMARY_FILE, summary)
    return summary


def find_comparisons(roots) -> list[Path]:
    """Comparison folders (those holding a summary) directly under each of ``roots``, or a root itself, sorted."""
    found = []
    for root in map(Path, roots):
        if (root / SUMMARY_FILE).is_file():
            found.append(root)
        elif root.is_dir():
            found += sorted(p for p in root.iterdir() if (p / SUMMARY_FILE).is_file())
    return found


def read_results(folder: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``(results, runs, summary)`` of a comparison folder; a folder without them raises one ValueError sentence."""
    folder = Path(folder).expanduser()
    missing = [f for f in (RESULTS_FILE, RUNS_FILE, SUMMARY_FILE) if not (folder / f).is_file()]
    if missing:
        raise ValueError(f"{folder} has no comparison results ({', '.join(missing)} missing); run "
                         f"`python -m coa_lora compare --out {folder}` first.")
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    if summary.get("format_version") != SUMMARY_VERSION:
        raise ValueError(f"{folder / SUMMARY_FILE} has format_version {summary.get('format_version')!r}; this "
                         f"version reads {SUMMARY_VERSION}.")
    return pd.read_csv(folder / RESULTS_FILE), pd.read_csv(folder / RUNS_FILE), summary


def metric_columns(plan: ComparePlan) -> list[str]:
    return ["perplexity", "kl", "top1"] + [f"{t}.acc" for t in plan.tasks] + [f"{t}.acc_norm" for t in plan.tasks]


def cells(plan: ComparePlan, rows: pd.DataFrame) -> pd.DataFrame:
    """Per (method, budget, metric): mean, sd and n over seeds (the base, trained once, has n = 1 and no sd)."""
    long = rows.melt(id_vars=["method", "seed", "budget", "trained"], value_vars=metric_columns(plan),
                     var_name="metric", value_name="value")
    g = long.groupby(["method", "budget", "trained", "metric"])["value"]
    out = pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "n": g.count()}).reset_index()  # sd of one: None
    return out


def gaps(plan: ComparePlan, rows: pd.DataFrame, method: str, other: str, metric: str) -> pd.DataFrame:
    """Per budget: 100 * ln(metric_method / metric_other) paired by seed, as mean, sd, standard error and n."""
    a = rows[rows.method == method].set_index(["seed", "budget"])[metric]
    b = rows[rows.method == other].set_index(["seed", "budget"])[metric]
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1).dropna()
    both["gap"] = 100 * (both["a"] / both["b"]).apply(math.log)
    g = both.reset_index().groupby("budget")["gap"]
    out = pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "n": g.count()}).reset_index()
    out["se"] = out["sd"] / out["n"].pow(0.5)
    out["trained"] = out["budget"].isin(plan.budgets)
    return out


def complete_seeds(runs: pd.DataFrame, method: str, n_budgets: int) -> pd.DataFrame:
    """``method``'s runs of the seeds where all of them finished (a per-configuration method has one per budget):
    a seed stopped part-way would understate its time."""
    mine = runs[runs.method == method]
    if method not in PER_CONFIG:
        return mine
    counts = mine.groupby("seed").size()
    return mine[mine.seed.isin(counts[counts == n_budgets].index)]


def time_ratio(runs: pd.DataFrame, n_budgets: int, method: str = "coa") -> dict | None:
    """Training time of ``method``'s one adapter over all per-configuration adapters of the same seed (seeds whose
    per-configuration adapters all finished)."""
    if runs.empty or method not in set(runs.method) or not set(PER_CONFIG) & set(runs.method):
        return None
    done = pd.concat([complete_seeds(runs, m, n_budgets) for m in PER_CONFIG])
    per_config = done.groupby("seed")["train_seconds"].sum()
    own = runs[runs.method == method].set_index("seed")["train_seconds"]
    ratio = (own / per_config).dropna()
    if ratio.empty:
        return None
    return {"mean": float(ratio.mean()), "sd": float(ratio.std(ddof=1)) if len(ratio) > 1 else 0.0, "n": len(ratio)}


def summarize(plan: ComparePlan, rows: pd.DataFrame, runs: pd.DataFrame) -> dict:
    """Everything the report and the Compare page show, as plain JSON."""
    out = {"format_version": SUMMARY_VERSION, "plan": plan.to_dict(), "cells": cells(plan, rows).to_dict("records"),
           "gaps": [], "methods": []}
    for other in [m for m in ("qlora", "shared") if m in plan.methods]:
        for method in [m for m in plan.methods if m != other and m not in PER_CONFIG]:
            for metric in ("perplexity", "kl"):
                for g in gaps(plan, rows, method, other, metric).to_dict("records"):
                    out["gaps"].append({"method": method, "other": other, "metric": metric, **g})
    for method in plan.methods:
        mine = complete_seeds(runs, method, len(plan.budgets)) if not runs.empty else runs
        per_seed = mine.groupby("seed")[["train_seconds", "passes"]].sum() if not mine.empty else None
        out["methods"].append({
            "method": method, "label": LABELS[method],
            "adapters": len(plan.budgets) if method in PER_CONFIG else 1,
            "seeds_trained": 0 if per_seed is None else len(per_seed),
            "train_seconds": None if per_seed is None else _mean_sd(per_seed["train_seconds"]),
            "passes": None if per_seed is None else int(per_seed["passes"].iloc[0]),
        })
    out["time_ratio"] = time_ratio(runs, len(plan.budgets))
    return _finite(out)


def _mean_sd(values: pd.Series) -> dict:
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "n": int(len(values))}


def _finite(obj):
    """JSON has no NaN: undefined statistics (an sd of one seed) become None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item"):  # numpy scalars
        return _finite(obj.item())
    return obj


def read_why(folder: str | os.PathLike) -> dict:
    """``{factor: entry}`` of the folder's why.json (empty when the gap has not been diagnosed there)."""
    path = Path(folder) / WHY_FILE
    if not path.is_file():
        return {}
    try:
        why = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); run bench/why.py again.") from None
    if not isinstance(why, dict) or not all(isinstance(e, dict) and {"question", "measured", "finding", "command"}
                                            <= set(e) for e in why.values()):
        raise ValueError(f"{path} is not a diagnosis file (each factor needs question, measured, finding, command).")
    return why


def merge_results(folders, out: str | os.PathLike, command: str) -> Comparison:
    """One comparison's result files from several folders of the same plan run side by side on disjoint seeds (two
    processes of one thread each use two cores better than one of two threads); ``out`` gets the result files only.

    Each folder's results are read as they are, so a merge of comparisons still running reports their finished seeds.
    """
    parts = [(Path(f), *read_results(f)) for f in folders]
    plans = [ComparePlan.from_dict(s["plan"]) for _, _, _, s in parts]
    if any(not p.same_plan(plans[0]) for p in plans[1:]):
        raise ValueError("These comparisons have different plans (beyond their seeds); merge only folders of one plan.")
    # The seeds each folder has results or adapters for (a merged folder plans all seeds but holds only some).
    seeds = [set(r.seed.dropna().astype(int)) | set(ru.seed.dropna().astype(int)) for _, r, ru, _ in parts]
    if len(set().union(*seeds)) != sum(map(len, seeds)):
        raise ValueError("These comparisons share seeds; merge folders whose seeds are disjoint.")
    seeds = [set(p.seeds) for p in plans]
    rows = pd.concat([r for _, r, _, _ in parts], ignore_index=True)
    base = rows[rows.method == "base"].drop_duplicates(subset=["budget"])  # the same model and configurations
    rows = pd.concat([base, rows[rows.method != "base"]], ignore_index=True)
    runs = pd.concat([r for _, _, r, _ in parts], ignore_index=True)
    plan = ComparePlan.from_dict({**plans[0].to_dict(), "seeds": sorted(set().union(*seeds))})
    trained = set(runs["run"]) if "run" in runs else set()
    state = {"runs": {r["run"]: {k: v for k, v in r.items() if k != "run"} for r in runs.to_dict("records")},
             "machine": parts[0][3].get("machine"),
             "estimate_seconds": max(s["estimate_seconds"] for _, _, _, s in parts),
             "elapsed_seconds": max(s["actual_seconds"] for _, _, _, s in parts),  # they ran side by side
             # Finished when every adapter of the merged plan is in (a folder stopped once another one took over
             # its last seed is not finished by itself, but the merge is).
             "finished": all(spec.name in trained for spec in plan.runs())}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    comparison = Comparison(plan, out, rows.to_dict("records"), state)
    write_results(comparison, command)
    return comparison
