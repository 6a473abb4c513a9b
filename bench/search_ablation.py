"""Pareto search vs its ablations: hypervolume per round, final probe losses, and a round's cost in training steps.

    FLAGS="--model smollm2 --method coa --steps 40 --rounds 3"
    python -m coa_lora train $FLAGS --search        --out runs/abl_search
    python -m coa_lora train $FLAGS --search frozen --out runs/abl_frozen
    python -m coa_lora train $FLAGS --search random --out runs/abl_random
    python bench/search_ablation.py --runs runs/abl_search,runs/abl_frozen,runs/abl_random [--html ablation.html]

The three runs share the seed, the initial set and therefore the hypervolume plane in run.json (checked), so their
hypervolumes are comparable. ``hv_train``: the training set's front as measured by that round's adapter (re-measured
at the start of the round); ``final``: the last epoch's set re-measured by the trained adapter. Round cost: fit +
acquisition + evaluating the q proposals (the issue's definition), and with the re-measurement of the pool, each
divided by the run's median training-step time. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from coa_lora.runs import read_metrics, read_run_info, read_search_tables


def summarise(run: Path) -> dict:
    info = read_run_info(run)
    rounds = read_search_tables(run)["rounds"]
    metrics = read_metrics(run)
    step = float(metrics["seconds"].median())
    searched = rounds[rounds["mode"].isin(["search", "random", "frozen"])]
    core = searched["seconds_fit"] + searched["seconds_acquisition"] + searched["seconds_evaluate"]
    with_refresh = core + searched.get("seconds_refresh", 0)  # the pool re-measured with the round's adapter
    probe = metrics.dropna(subset=["probe_loss"]).iloc[-1]
    return {
        "run": str(run), "mode": info.hyper["search"], "plane": info.search_plane,
        "hv_pool": rounds["hv_pool"].round(4).tolist(), "hv_train": rounds["hv_train"].round(4).tolist(),
        "n_pool": rounds["n_pool"].tolist(), "n_train": rounds["n_train"].tolist(),
        "final_probe": {k: round(float(v), 4) for k, v in probe.items() if str(k).startswith("probe_loss")},
        "seconds_step_median": step,
        "seconds_round_core": core.round(2).tolist(),
        "seconds_round_with_refresh": with_refresh.round(2).tolist(),
        "round_core_in_steps": (core / step).round(2).tolist(),
        "round_with_refresh_in_steps": (with_refresh / step).round(2).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="comma-separated run folders trained with --search MODE")
    parser.add_argument("--html", type=Path, help="also write the hypervolume curves as an interactive plotly page")
    args = parser.parse_args()
    rows = [summarise(Path(r)) for r in args.runs.split(",")]
    if len({json.dumps(r["plane"], sort_keys=True) for r in rows}) != 1:
        raise SystemExit("These runs have different hypervolume planes (other initial sets): not comparable.")
    for r in rows:
        print(f"{r['mode']:>7s}  {r['run']}")
        print(f"{'':>7s}  hv_train per round {r['hv_train']}  hv_pool {r['hv_pool']}  pool {r['n_pool']}")
        print(f"{'':>7s}  final probe losses {r['final_probe']}")
        print(f"{'':>7s}  round (fit + acquisition + q evaluations) {r['seconds_round_core']} s = "
              f"{r['round_core_in_steps']} steps of {r['seconds_step_median']:.1f} s; with the pool "
              f"re-measurement {r['seconds_round_with_refresh']} s = {r['round_with_refresh_in_steps']} steps")
    if args.html:
        import plotly.graph_objects as go

        fig = go.Figure()
        for r in rows:
            fig.add_scatter(y=r["hv_train"], mode="lines+markers", name=f"{r['mode']} (training set)")
            fig.add_scatter(y=r["hv_pool"], mode="lines", line={"dash": "dot"}, name=f"{r['mode']} (pool)")
        fig.update_layout(xaxis_title="round (0: initial set; last: final adapter)", yaxis_title="hypervolume")
        fig.write_html(args.html)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
