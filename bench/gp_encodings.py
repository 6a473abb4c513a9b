"""Which GP encoding predicts f1 on real SmolLM2 pools: k-fold and next-round prediction, per encoding.

    python bench/gp_encodings.py --runs data/reference/coa_search,runs/acc/search_s0,... [--folds 5]
                                 [--targets raw,censored] [--encodings damage,field]

No training and no forward pass: it reads each run's logged search (search_pool.jsonl, search_history.jsonl) and refits the
library's GP (:func:`coa_lora.search.surrogate.fit_surrogate`) with each encoding of :data:`coa_lora.search.surrogate.ENCODINGS`.

- ``kfold``: the final pool's f1 (only configurations the final adapter measured), k-fold held out.
- ``next``: what the search needs: for each round r ≥ 1, fit on the pool as round r's acquisition saw it (the f1
  values after that round's re-measurement) and predict the f1 its proposals then measured. Reported per run as
  RMSE and Spearman over all of its proposals; proposals sit in regions the pool has not covered yet, so this is the
  harder and the deciding test.

Prints a table per run and a summary (mean rank of each encoding by next-round RMSE over proposals that did not
collapse (probe loss below twice the run's best: the collapsed ones, ~20 against ~4, swamp any RMSE and no encoding
predicts them), by next-round Spearman, then by k-fold RMSE); last line: one JSON object. ``--targets censored``
fits and scores f1 as min(f1, the plane's reference loss), as the search does: beyond that loss the acquisition
counts nothing.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from coa_lora.runs import read_run_info, read_search_tables
from coa_lora.search.pareto import LOSS_CAP, HypervolumePlane
from coa_lora.search.surrogate import ENCODINGS, _spearman, cross_validate, fit_surrogate


def next_round(history, pool, encoding: str, damage=None, numels=None, censor: float = math.inf) -> dict:
    """RMSE / Spearman of each round's proposals predicted from the pool the round's acquisition saw; with
    ``censor``, f1 is fitted and scored as min(f1, censor), the value the acquisition gives it."""
    options = {int(r["id"]): r["options"] for _, r in pool.iterrows()}
    first = {int(r["id"]): int(r["round"]) for _, r in pool.iterrows()}
    pred, true = [], []
    for r in sorted(history["round"].unique()):
        rows = history[history["round"] == r]
        seen = rows[[first[i] < r for i in rows["id"]]]
        new = rows[[first[i] == r for i in rows["id"]]]
        if r == 0 or len(new) == 0 or len(seen) < 3:
            continue
        X = torch.tensor([options[i] for i in seen["id"]], dtype=torch.float64)
        gp = fit_surrogate(X, -torch.tensor(seen["f1"].values, dtype=torch.float64).clamp(max=censor), encoding,
                           damage=damage, numels=numels)
        with torch.no_grad():
            mean = gp.posterior(torch.tensor([options[i] for i in new["id"]], dtype=torch.float64)).mean.reshape(-1)
        pred += (-mean).tolist()
        true += new["f1"].clip(upper=censor).tolist()  # the round's own row: f1 as measured when proposed
    if not pred:
        return {"next_rmse": math.nan, "next_spearman": math.nan, "next_n": 0, "next_rmse_usable": math.nan}
    p, t = torch.tensor(pred), torch.tensor(true)
    usable = t < LOSS_CAP * float(pool["f1"].min())  # collapsed configurations (probe loss ~20) swamp the RMSE
    return {"next_rmse": float(((p - t) ** 2).mean().sqrt()), "next_spearman": _spearman(p, t), "next_n": len(p),
            "next_rmse_usable": float(((p - t)[usable] ** 2).mean().sqrt()) if usable.any() else math.nan}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="comma-separated run folders trained with a search")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--model", default="smollm2", help="whose damage table the 'damage' encoding reads")
    ap.add_argument("--targets", default="raw,censored", help="raw f1, and/or f1 censored at the plane's reference "
                    "loss (what the search fits since the acquisition measures in the plane)")
    ap.add_argument("--encodings", default=",".join(ENCODINGS))
    args = ap.parse_args()
    torch.set_num_threads(1)  # small tensors: one thread is fastest
    from coa_lora import Workbench

    wb = Workbench.load(args.model)
    damage, numels = wb.damage_table().for_layout(wb.layout).values, wb.layout.numels
    rows = []
    for run in args.runs.split(","):
        t = read_search_tables(Path(run))
        pool, history = t["pool"], t["history"]
        measured = pool[~pool["f1_estimated"]] if "f1_estimated" in pool else pool
        X = torch.tensor(measured["options"].tolist(), dtype=torch.float64)
        plane = HypervolumePlane.from_dict(read_run_info(Path(run)).search_plane)
        for targets, enc in [(t, e) for t in args.targets.split(",") for e in args.encodings.split(",")]:
            censor = plane.corner()[1] if targets == "censored" else math.inf
            y = -torch.tensor(measured["f1"].values, dtype=torch.float64).clamp(max=censor)
            cv = cross_validate(X, y, enc, n_folds=min(args.folds, len(y)), damage=damage, numels=numels)
            rows.append({"run": run, "encoding": enc, "targets": targets, "n": len(y), "kfold_rmse": cv["rmse"],
                         "kfold_spearman": cv["spearman"], "kfold_nlpd": cv["nlpd"],
                         **next_round(history, pool, enc, damage, numels, censor)})
            r = rows[-1]
            print(f"{run:40s} {enc:12s} {targets:8s} n={r['n']:3d} kfold rmse {r['kfold_rmse']:.4f} rho {r['kfold_spearman']:+.3f}"
                  f" | next-round rmse {r['next_rmse']:.4f} (not collapsed {r['next_rmse_usable']:.4f}) rho "
                  f"{r['next_spearman']:+.3f} (n={r['next_n']})",
                  flush=True)
    import pandas as pd

    df = pd.DataFrame(rows)
    for key in ("next_rmse_usable", "kfold_rmse"):
        df[f"rank_{key}"] = df.groupby("run")[key].rank()
    df["rank_next_spearman"] = df.groupby("run")["next_spearman"].rank(ascending=False)
    summary = df.groupby(["encoding", "targets"])[["rank_next_rmse_usable", "rank_next_spearman", "rank_kfold_rmse",
                                      "next_rmse_usable", "next_rmse", "kfold_rmse", "next_spearman",
                                      "kfold_spearman"]].mean().sort_values("rank_next_rmse_usable")
    print(summary.round(4).to_string())
    print(json.dumps({"rows": rows, "summary": summary.reset_index().to_dict("records")}))


if __name__ == "__main__":
    main()
