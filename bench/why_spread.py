"""Why U_θ moves so little of the correction with the configuration (#37, factor 1's follow-up), from the arms' own
adapters (no training): the configuration-dependent share of CoA-LoRA's correction (``spread`` in bench/why.py,
:func:`coa_lora.lora.diagnose.correction_spread`) in each arm, paired by seed with the default arm's. If more capacity
(rank 64) or more training (2x steps) left the share where it is, U_θ's small part is not starved of either.

    python bench/why_spread.py --arms default,rank-64,steps-2x,u-lr-10x,u-init --root runs/why --out data/compare/smollm2-rank8

Last line: one JSON object (the ``spread by arm`` entry written into ``--out``'s why.json).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from coa_lora import Workbench, load_trained
from coa_lora.compare import read_why
from coa_lora.compare.report import WHY_FILE
from coa_lora.lora.diagnose import correction_spread
from coa_lora.storage import write_json


# U_θ's own levers (bench/why.py's arms) and what each changes.
LEVERS = {"u-lr-10x": "its learning rate (u-lr-10x)", "u-init": "the initialisation of its last layer (u-init)"}


def _levers(arms: list[str]) -> str:
    """The finding's last sentence: which of U_θ's levers this entry measured, which it did not."""
    missing = [text for arm, text in LEVERS.items() if arm not in arms]
    if not missing:
        return ("its two levers, " + " and ".join(LEVERS.values()) + ", are measured above (their effect on quality: "
                "the arms' own entries).")
    return f"{' and '.join(missing)} {'is the lever' if len(missing) == 1 else 'are the levers'} not measured here."


def arm_shares(wb: Workbench, folder: Path) -> dict[int, dict[str, float]]:
    """Per finished CoA-LoRA seed of an arm's comparison folder: the mean over target matrices of the configuration-
    dependent share of the correction and of ‖Ū‖ / ‖I‖, over the run's own training set."""
    finished = json.loads((folder / "state.json").read_text())["runs"]
    out = {}
    for run in sorted((folder / "runs").glob("coa-seed*")):
        if run.name not in finished:
            print(f"{run}: not finished; skipped", flush=True)
            continue
        coa, _, configs = load_trained(wb, run)
        table = correction_spread(coa, configs)
        seed = int(run.name.removeprefix("coa-seed"))
        out[seed] = {"share": float(table["config_share"].mean()), "u_mean": float(table["u_mean"].mean())}
        coa.remove_()
        print(f"{folder.name}/{run.name}: {len(configs)} configurations, share {out[seed]['share']:.4f}, "
              f"‖Ū‖/‖I‖ {out[seed]['u_mean']:.3f}", flush=True)
    return out


def _stat(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="default,rank-64,steps-2x", help="arms under --root, the first the reference")
    parser.add_argument("--root", type=Path, default=Path("runs/why"))
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--out", type=Path, help="a comparison folder whose why.json gets the entry")
    args = parser.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    missing = [a for a in arms if not list((args.root / a / "runs").glob("coa-seed*"))]
    if len(arms) < 2 or missing:
        raise SystemExit(f"Name at least two arms with CoA-LoRA runs under {args.root} (without: "
                         f"{', '.join(missing) or 'none'}).")
    if args.out is not None:
        read_why(args.out)  # a bad why.json is refused before the long part
    wb = Workbench.load(args.model)
    shares = {arm: arm_shares(wb, args.root / arm) for arm in arms}
    if not all(shares.values()) or not all(set(shares[a]) & set(shares[arms[0]]) for a in arms[1:]):
        raise SystemExit("Every arm needs a finished CoA-LoRA seed shared with the first arm's.")
    reference, measured = arms[0], {}
    for arm in arms:
        measured[f"configuration-dependent share, {arm}"] = _stat([v["share"] for v in shares[arm].values()])
        measured[f"‖Ū‖ / ‖I‖, {arm}"] = _stat([v["u_mean"] for v in shares[arm].values()])
    for arm in arms[1:]:
        paired = sorted(set(shares[arm]) & set(shares[reference]))
        measured[f"share, {arm} − {reference} (paired by seed)"] = _stat(
            [shares[arm][s]["share"] - shares[reference][s]["share"] for s in paired])
    text = "; ".join(f"{arm} {measured[f'configuration-dependent share, {arm}']['mean']:.1%}" for arm in arms)
    grows = []
    for arm in arms[1:]:
        d = measured[f"share, {arm} − {reference} (paired by seed)"]
        se = (d["sd"] or float("inf")) / d["n"] ** 0.5
        verdict = ("clearly grows" if d["mean"] - se > 0 else "clearly shrinks" if d["mean"] + se < 0
                   else "no clear change")
        grows.append(f"{arm}: {verdict} ({100 * d['mean']:+.1f} ± {100 * (d['sd'] or 0):.1f} points)")
    entry = {
        "question": "Does U_θ's configuration-dependent part grow with capacity or training?",
        "measured": measured,
        "finding": (f"Share of the correction that moves with the configuration, over each run's training set: {text} "
                    f"(mean over seeds). Against {reference}, paired by seed: {'; '.join(grows)} (clearly: beyond "
                    "its standard error). Where more steps make it grow, U_θ's configuration-dependent part is still "
                    f"learning when training stops: it is starved of training, not idle by design; {_levers(arms)}"),
        "command": "python bench/why_spread.py " + " ".join(sys.argv[1:]),
    }
    if args.out is not None:  # read again: another script may have written its entries meanwhile
        write_json(args.out / WHY_FILE, {**read_why(args.out), "spread by arm": entry})
    print(json.dumps({"spread by arm": entry}))


if __name__ == "__main__":
    main()
