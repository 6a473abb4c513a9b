"""Pareto search vs its ablations: hypervolume per round, final probe losses, and a round's cost in training steps.

    FLAGS="--model smollm2 --method coa --steps 40 --rounds 3"
    python -m coa_lora train $FLAGS --search        --out runs/abl_search
    python -m coa_lora train $FLAGS --search frozen --out runs/abl_frozen
    python -m coa_lora train $FLAGS --search random --out runs/abl_random
    python bench/search_ablation.py --runs runs/abl_search,runs/abl_frozen,runs/abl_random [--html ablation.html]
                                    [--ppl-budgets 2.5,3,3.5,4 --ppl-windows 2 --ppl-configs allocator,searched]
                                    [--draws] [--markdown]

Runs are grouped by seed; the runs of one seed share the initial set and therefore the hypervolume plane in run.json
(checked), so their hypervolumes are comparable. With ``--ppl-budgets``, each run's adapter is also scored in
held-out perplexity (the held-out plays, ``--ppl-windows`` 1024-token windows per play; text the probe never saw) at
each budget's configuration: ``allocator`` (the same configuration for every mode, so only the adapters differ) and/or
``searched`` (the configuration each run would deploy: its searched set's least probe loss within the budget, as the
app's bit-budget slider picks it; the sets and the adapters differ). ``hv_train``: the training set's front as
measured by that round's adapter (re-measured at the start of the round); ``final``: the last epoch's set
re-measured by the trained adapter. Round cost: fit + acquisition + evaluating the q proposals (the issue's
definition), and with the re-measurement of the pool, each divided by the run's median training-step time.
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from coa_lora.runs import read_metrics, read_run_info, read_search_tables
from coa_lora.search.pareto import HypervolumePlane


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
        "seed": int(info.hyper["seed"]), "draw_mode": info.hyper.get("draws", "random"),
        "hv_pool": rounds["hv_pool"].round(4).tolist(), "hv_train": rounds["hv_train"].round(4).tolist(),
        "hv_train_2.5": rounds["hv_train_2.5"].round(4).tolist() if "hv_train_2.5" in rounds else None,
        "n_pool": rounds["n_pool"].tolist(), "n_train": rounds["n_train"].tolist(),
        "final_probe": {k: round(float(v), 4) for k, v in probe.items() if str(k).startswith("probe_loss")},
        "seconds_step_median": step,
        "seconds_round_core": core.round(2).tolist(),
        "seconds_round_with_refresh": with_refresh.round(2).tolist(),
        "round_core_in_steps": (core / step).round(2).tolist(),
        "round_with_refresh_in_steps": (with_refresh / step).round(2).tolist(),
        **proposals(read_search_tables(run)["pool"], info.search_plane),
    }


def proposals(pool, plane: dict) -> dict:
    """How far the proposals landed from the pool, and how well the GP predicted them (when logged): measured f1
    censored at the plane's reference loss, as the search's GP fits it (beyond it every value is worth the same)."""
    new = pool[pool["source"] != "initial"]
    if new.empty or "distance_bits" not in new:
        return {}
    out = {"distance_bits_median": round(float(new["distance_bits"].median()), 4),
           "distance_bits_max": round(float(new["distance_bits"].max()), 4),
           "changed_matrices_median": float(new["changed_matrices"].median())}
    if "predicted_f1" in new and new["predicted_f1"].notna().any():
        censor = HypervolumePlane.from_dict(plane).corner()[1]
        err = (new["predicted_f1"] - new["measured_f1"].clip(upper=censor)).dropna()
        out["gp_rmse"] = round(float((err ** 2).mean() ** 0.5), 4)
        out["candidates"] = new["candidate"].value_counts().to_dict()
    return out


# Bit bands the draws are counted in: the lowest configurations, up to 3.5 bits, 3.5-4.25 (SmolLM2's 3.56- and
# 4.08-bit initial configurations, around the 4-bit budget) and the rest.
DRAW_BANDS = (0.0, 2.75, 3.5, 4.25, 99.0)


def draws_by_bits(runs: list[Path], model: str) -> dict:
    """``{run: {"at_lowest": n, "below_3.05": n, "total": n, "bands": {band: n}, "lowest_final_f1": f1}}``: how often
    training drew the lowest-bit configuration, configurations under 3.05 bits and in each of :data:`DRAW_BANDS`,
    from metrics.jsonl's configuration keys."""
    import torch

    from coa_lora import ModelConfig, Workbench

    layout = Workbench.load(model).layout
    out = {}
    for run in runs:
        tables = read_search_tables(run)
        pool, history = tables["pool"], tables["history"]
        bits = {ModelConfig.from_option_indices(layout, torch.tensor(o)).key(): b
                for o, b in zip(pool["options"], pool["avg_bits"])}
        drawn = [bits[k] for keys in read_metrics(run)["configs"] for k in keys]
        lowest = float(pool["avg_bits"].min())
        final = history[history["round"] == history["round"].max()]
        bands = {f"{lo:g}-{hi:g}": sum(lo <= b < hi for b in drawn) for lo, hi in zip(DRAW_BANDS, DRAW_BANDS[1:])}
        out[str(run)] = {"at_lowest": sum(b <= lowest + 1e-9 for b in drawn),
                         "below_3.05": sum(b < 3.05 for b in drawn), "total": len(drawn), "bands": bands,
                         "lowest_final_f1": float(final.loc[final["avg_bits"].idxmin(), "f1"])}
        print(f"  draws {run}: lowest-bit configuration {out[str(run)]['at_lowest']}, under 3.05 bits "
              f"{out[str(run)]['below_3.05']} of {len(drawn)}; its final f1 {out[str(run)]['lowest_final_f1']:.2f}; "
              "by bits " + ", ".join(f"{k}: {v}" for k, v in bands.items()))
    return out


def group_by_seed(rows: list[dict]) -> dict:
    """``{seed: {mode: row}}`` of the summarised runs."""
    by_seed = {}
    for r in rows:
        by_seed.setdefault(r["seed"], {})[r["mode"]] = r
    return by_seed


def verdicts(rows: list[dict]) -> None:
    """Issue 12's acceptance per seed: final training-set hypervolume search ≥ random and > frozen; held-out
    perplexity of search no worse than either at each budget and kind of configuration (when measured)."""
    by_seed = group_by_seed(rows)
    print("\nper seed: final hv_train (search / random / frozen) and held-out perplexity (search / random / frozen)")
    for seed, modes in sorted(by_seed.items()):
        if not {"search", "random", "frozen"} <= set(modes):
            continue
        hv = {m: modes[m]["hv_train"][-1] for m in ("search", "random", "frozen")}
        ok = hv["search"] >= hv["random"] and hv["search"] > hv["frozen"]
        print(f"  seed {seed}: hv {hv['search']:.4f} / {hv['random']:.4f} / {hv['frozen']:.4f} "
              f"(search − random {hv['search'] - hv['random']:+.4f}) {'met' if ok else 'NOT met'}")
        if all("ppl" in modes[m] for m in ("search", "random", "frozen")):
            for kind in common_kinds([modes]):
                for b, v in modes["search"]["ppl"][kind].items():
                    others = [modes[m]["ppl"][kind][b] for m in ("random", "frozen")]
                    print(f"    {kind} {b:g} bits: {v:.2f} / {others[0]:.2f} / {others[1]:.2f} ("
                          + ("no worse" if v <= min(others) else f"worse by {100 * (v / min(others) - 1):.1f} %")
                          + f"; vs random {100 * (v / others[0] - 1):+.1f} %, "
                            f"vs frozen {100 * (v / others[1] - 1):+.1f} %)")
    ratios(by_seed)
    same_rule(by_seed)
    deploy_choice(rows)


def same_rule(by_seed: dict) -> None:
    """Search's perplexity rule applied to every mode: per seed, the allocator budgets where the mode is worse than
    the better of the other two (a mode meets the rule on a seed with none)."""
    complete = complete_seeds(by_seed, "allocator")
    if not complete:
        return
    print("\nevery mode held to the rule (allocator configurations): budgets where it is worse than the better of the "
          "other two")
    for mode in ("search", "random", "frozen"):
        worse = {s: [b for b, v in m[mode]["ppl"]["allocator"].items()
                     if v > min(m[o]["ppl"]["allocator"][b] for o in m if o != mode)]
                 for s, m in complete.items()}
        print(f"  {mode}: " + "; ".join(f"seed {s} " + (", ".join(f"{b:g}" for b in bs) or "none")
                                       for s, bs in worse.items()))


def deploy_choice(rows: list[dict]) -> None:
    """Per run and budget where the two differ: is the allocator's configuration at the budget lower in held-out
    perplexity than the run's searched configuration within it?"""
    gaps = [100 * (r["ppl"]["searched"][b] / v - 1) for r in rows if {"allocator", "searched"} <= set(r.get("ppl", {}))
            for b, v in r["ppl"]["allocator"].items() if r["ppl"]["searched"][b] != v]
    if gaps:
        print(f"\nallocator's configuration against the searched one, in (run, budget) cells where they differ: "
              f"allocator lower in {sum(g > 0 for g in gaps)} of {len(gaps)}; searched higher by {min(gaps):+.1f} to "
              f"{max(gaps):+.1f} %")


def complete_seeds(by_seed: dict, kind: str | None = None) -> dict:
    """The seeds of ``by_seed`` whose three modes all have held-out perplexity (of configuration ``kind``, if given)."""
    return {s: m for s, m in sorted(by_seed.items())
            if all("ppl" in m.get(k, {}) and (kind is None or kind in m[k]["ppl"])
                   for k in ("search", "random", "frozen"))}


def common_kinds(seeds: list[dict]) -> list[str]:
    """The kinds of configuration whose perplexity every mode of every one of ``seeds`` has, in measured order."""
    kinds = list(seeds[0]["search"]["ppl"])
    return [k for k in kinds if all(k in m[mode]["ppl"] for m in seeds for mode in ("search", "random", "frozen"))]


def spread(seeds: list[dict], kind: str, budget: float, other: str) -> str:
    """100·ln(search / ``other``) of held-out perplexity over ``seeds``: mean ± sd, and how often search is lower."""
    import math
    import statistics

    d = [100 * math.log(m["search"]["ppl"][kind][budget] / m[other]["ppl"][kind][budget]) for m in seeds]
    return f"{statistics.mean(d):+.1f} ± {statistics.stdev(d):.1f} (lower on {sum(x < 0 for x in d)} of {len(d)})"


def ratios(by_seed: dict) -> None:
    """Across seeds: search's held-out perplexity over each ablation's, per kind and budget, as mean ± sd of the
    per-seed log ratio (shown as a percentage), so a difference can be read against the seeds' spread."""
    complete = list(complete_seeds(by_seed).values())
    if len(complete) < 2:
        return
    print(f"\nsearch's held-out perplexity against each ablation over {len(complete)} seeds: mean ± sd of "
          f"100·ln(search / ablation) (negative: search lower)")
    for kind in common_kinds(complete):
        for b in complete[0]["search"]["ppl"][kind]:
            print(f"  {kind} {b:g} bits: " + ", ".join(f"vs {o} {spread(complete, kind, b, o)}"
                                                       for o in ("random", "frozen")))


def markdown(rows: list[dict]) -> None:
    """The acceptance tables of a note or the README: final hypervolume per seed, held-out perplexity at the
    allocator's configurations per seed (search / random / frozen, ✗ with the gap to the better ablation), and
    100·ln(search / ablation) over the seeds."""
    modes = ("search", "random", "frozen")
    full = {s: m for s, m in sorted(group_by_seed(rows).items()) if set(modes) <= set(m)}
    print("\n| seed | search | random | frozen | search − random |\n|---|---|---|---|---|")
    for s, m in full.items():
        hv = [m[k]["hv_train"][-1] for k in modes]
        print(f"| {s} | {hv[0]:.4f} | {hv[1]:.4f} | {hv[2]:.4f} | {hv[0] - hv[1]:+.4f} |")
    complete = complete_seeds(full, "allocator")
    if not complete:
        return
    budgets = list(next(iter(complete.values()))["search"]["ppl"]["allocator"])
    print("\n| seed | " + " | ".join(f"{b:g} bits" for b in budgets) + " |\n|---" + "|---" * len(budgets) + "|")
    for s, m in complete.items():
        cells = []
        for b in budgets:
            v = [m[k]["ppl"]["allocator"][b] for k in modes]
            mark = "✓" if v[0] <= min(v[1:]) else f"✗ ({100 * (v[0] / min(v[1:]) - 1):+.1f} %)"
            cells.append(f"{v[0]:.2f} / {v[1]:.2f} / {v[2]:.2f} {mark}")
        print(f"| {s} | " + " | ".join(cells) + " |")
    if len(complete) < 2:
        return
    print("\n| bits | vs random | vs frozen |\n|---|---|---|")
    seeds = list(complete.values())
    for b in budgets:
        print(f"| {b:g} | " + " | ".join(spread(seeds, "allocator", b, o) for o in ("random", "frozen")) + " |")


def perplexities(runs: list[Path], budgets: list[float], windows: int, model: str, kinds: list[str]) -> dict:
    """``{run: {kind: {budget: held-out perplexity}}}`` of each run's adapter at each budget's configuration of each
    kind: ``allocator`` (the allocator's, shared by all runs) or ``searched`` (the run's deployable choice)."""
    from coa_lora import Workbench, load_trained
    from coa_lora.explorer import Explorer

    out = {}
    ex = Explorer(Workbench.load(model))  # one model: each run's adapter is wrapped around it in turn, then removed
    allocated = {b: ex.wb.grid_allocator().allocate(b).config for b in budgets}
    for run in runs:
        coa, _, _ = load_trained(ex.wb, run)
        configs = {"allocator": allocated}
        if "searched" in kinds:  # only then: a run without a search has no searched set
            view = ex.open_run(run)
            configs["searched"] = {b: ex.searched_configuration(view, b)[0] for b in budgets}
        out[str(run)] = {kind: {b: ex.evaluator.run("ppl", configs[kind][b], limit=windows, adapter=coa).perplexity
                                for b in budgets} for kind in kinds}
        coa.remove_()
        for kind in kinds:
            print(f"  ppl {kind} {run}: " + ", ".join(f"{b:g}: {v:.2f}" for b, v in out[str(run)][kind].items())
                  + ("  (searched bits " + ", ".join(f"{configs[kind][b].avg_bits:.3f}" for b in budgets) + ")"
                     if kind == "searched" else ""), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="comma-separated run folders trained with --search MODE")
    parser.add_argument("--html", type=Path, help="also write the hypervolume curves as an interactive plotly page")
    parser.add_argument("--ppl-budgets", help="comma-separated budgets for held-out perplexity (e.g. 2.5,3,3.5,4)")
    parser.add_argument("--ppl-windows", type=int, default=2, help="1024-token windows per held-out play")
    parser.add_argument("--ppl-configs", default="allocator",
                        help="comma-separated kinds of configuration per budget: allocator, searched")
    parser.add_argument("--model", default="smollm2", help="the runs' model (for --ppl-budgets and --draws)")
    parser.add_argument("--draws", action="store_true", help="also count the training draws per bit range")
    parser.add_argument("--markdown", action="store_true", help="also print the acceptance tables in markdown")
    parser.add_argument("--ppl-from", help="comma-separated outputs of earlier calls: reuse their held-out "
                                           "perplexities (e.g. seeds evaluated in separate calls), measuring none")
    args = parser.parse_args()
    rows = [summarise(Path(r)) for r in args.runs.split(",")]
    for seed in sorted({r["seed"] for r in rows}):
        if len({json.dumps(r["plane"], sort_keys=True) for r in rows if r["seed"] == seed}) != 1:
            raise SystemExit(f"The seed-{seed} runs have different hypervolume planes (other initial sets): not "
                             f"comparable.")
    if args.draws:
        counts = draws_by_bits([Path(r["run"]) for r in rows], args.model)
        for r in rows:
            r["draws"] = counts[r["run"]]
    if args.ppl_budgets:
        kinds = args.ppl_configs.split(",")
        if not set(kinds) <= {"allocator", "searched"}:
            raise SystemExit(f"--ppl-configs takes allocator and/or searched, got {args.ppl_configs!r}.")
        ppl = perplexities([Path(r["run"]) for r in rows], [float(b) for b in args.ppl_budgets.split(",")],
                           args.ppl_windows, args.model, kinds)
        for r in rows:
            r["ppl"] = ppl[r["run"]]
    elif args.ppl_from:
        # resolved run -> kind -> budget -> perplexity, merged over the files (one kind per call is fine); a relative
        # run path of an earlier call resolves against this call's working directory
        earlier = {}
        for f in args.ppl_from.split(","):
            last = (Path(f).read_text().strip().splitlines() or [""])[-1]
            if not last.startswith("["):
                raise SystemExit(f"{f} does not end in this bench's JSON line (a call still running, or another "
                                 f"file); --ppl-from takes the outputs of finished calls.")
            for e in json.loads(last):
                for kind, by_budget in e.get("ppl", {}).items():
                    earlier.setdefault(Path(e["run"]).resolve(), {})[kind] = {float(b): v for b, v in by_budget.items()}
        for r in rows:
            if (key := Path(r["run"]).resolve()) in earlier:
                r["ppl"] = earlier[key]
    for r in sorted(rows, key=lambda r: (r["seed"], r["mode"])):
        print(f"seed {r['seed']} {r['mode']:>7s}  {r['run']}  (draws {r['draw_mode']})")
        print(f"{'':>7s}  hv_train per round {r['hv_train']}  (≥ 2.5 bits {r['hv_train_2.5']})  hv_pool "
              f"{r['hv_pool']}  pool {r['n_pool']}")
        print(f"{'':>7s}  final probe losses {r['final_probe']}")
        print(f"{'':>7s}  round (fit + acquisition + q evaluations) {r['seconds_round_core']} s = "
              f"{r['round_core_in_steps']} steps of {r['seconds_step_median']:.1f} s; with the re-measurement "
              f"{r['seconds_round_with_refresh']} s = {r['round_with_refresh_in_steps']} steps")
        if "distance_bits_median" in r:
            print(f"{'':>7s}  proposals: bits to nearest pool configuration median {r['distance_bits_median']} max "
                  f"{r['distance_bits_max']}, changed matrices median {r['changed_matrices_median']}"
                  + (f", GP rmse {r['gp_rmse']} ({r['candidates']})" if "gp_rmse" in r else ""))
        for kind, by_budget in r.get("ppl", {}).items():
            print(f"{'':>7s}  held-out perplexity ({kind}) "
                  + ", ".join(f"{b:g} bits {v:.2f}" for b, v in by_budget.items()))
    verdicts(rows)
    if args.markdown:
        markdown(rows)
    if args.html:
        import plotly.graph_objects as go

        fig = go.Figure()
        for r in rows:
            name = f"{r['mode']} seed {r['seed']}"
            fig.add_scatter(y=r["hv_train"], mode="lines+markers", name=f"{name} (training set)")
            fig.add_scatter(y=r["hv_pool"], mode="lines", line={"dash": "dot"}, name=f"{name} (pool)")
        fig.update_layout(xaxis_title="round (0: initial set; last: final adapter)", yaxis_title="hypervolume")
        fig.write_html(args.html)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
