"""The verdict of #37's diagnosis (bench/why.py's last entry): how much of CoA-LoRA's gap to per-configuration LoRA each
measured factor explains, from the arms' own rows (paired by seed), as numbers and as one generated sentence.
"""
from __future__ import annotations

import math


def fmt_sd(sd: float | None, digits: int) -> str:
    """A standard deviation for a table or sentence; "–" when there is none (one seed)."""
    return "–" if sd is None else f"{sd:.{digits}f}"


def gap_verdict(entries: dict) -> dict | None:
    """How much of the gap to per-configuration LoRA each measured factor explains, from the arms' own rows: the gap
    at the default settings, at equal rank 64 (both methods), and with twice CoA-LoRA's steps."""
    need = ("arm rank-64", "arm qlora-rank-64", "arm steps-2x")
    if not all(k in entries for k in need):
        return None
    rows = {k: v for e in (*need, "arm qlora-steps-2x", "arm u-lr-10x") if e in entries
            for k, v in entries[e]["measured"].items()}
    measured, text = {}, {}
    for label in ("ppl", "KL"):
        gaps = {"as compared (rank 8, 60 steps)": "default / per-config LoRA",
                "both at rank 64": "rank-64 / qlora-rank-64",
                "CoA-LoRA 120 steps, per-config 60": "steps-2x / per-config LoRA",
                "both at 120 steps": "steps-2x / qlora-steps-2x",  # once that arm is trained
                "CoA-LoRA with U_θ's learning rate 10x": "u-lr-10x / per-config LoRA"}
        for name, ratio in gaps.items():
            found = {k.split(" at ")[1]: v for k, v in rows.items() if k.startswith(f"100·ln({label} {ratio}) at ")}
            for budget, v in found.items():
                measured[f"{label} gap, {name}, at {budget}"] = v
            text[(label, name)] = ", ".join(f"{v['mean']:+.1f} ± {fmt_sd(v['sd'], 1)}" for v in found.values())
    finding = (
        "Held-out perplexity gap to per-configuration LoRA (100·ln ratio at 2.5 / 2.75 / 3 bits; above 0: CoA-LoRA "
        f"behind): {text[('ppl', 'as compared (rank 8, 60 steps)')]} at the comparison's settings; "
        f"{text[('ppl', 'both at rank 64')]} with both methods at rank 64, so capacity helps every method alike and "
        f"does not explain the gap; {text[('ppl', 'CoA-LoRA 120 steps, per-config 60')]} when CoA-LoRA gets twice "
        "the steps, i.e. the same forward-backward passes (120 x k = 2) as four per-configuration LoRAs of 60 steps "
        "each spend on the four trained budgets. ")
    if text[("ppl", "both at 120 steps")]:
        finding += (
            f"With both methods at 120 steps the gap is {text[('ppl', 'both at 120 steps')]}: more training per "
            "adapter does not close it (at 3 bits it stays where it was at 60 steps), so the gap is the training each "
            "configuration gets relative to a dedicated adapter, not under-training of CoA-LoRA alone. One CoA-LoRA "
            f"adapter {_equal_passes(measured)} only when it is given as many passes as all the per-configuration "
            "adapters together; its advantage is then the "
            "number of configurations served (any budget, from one adapter), not quality per configuration. At this "
            "scale (SmolLM2-135M, 4 x 128-token batches, 60-120 steps) the paper's claim of parity at equal cost per "
            "configuration is not reproduced; testing it needs far longer training (the paper trains on C4) and more "
            "deployed configurations than the four trained here.")
    else:
        finding += "Per-configuration LoRA at 120 steps is not measured yet (arm qlora-steps-2x)."
    lever = "CoA-LoRA with U_θ's learning rate 10x"
    if text[("ppl", lever)]:
        ahead = [k.split(" at ")[1] for k, v in measured.items() if k.startswith(f"ppl gap, {lever}, at ")
                 and v["sd"] is not None and v["mean"] + v["sd"] / v["n"] ** 0.5 < 0]
        finding += (
            " The configuration-aware part's own lever moves the gap at equal cost: with U_θ's learning rate 10x the "
            f"adapter's (same 60 steps) it is {text[('ppl', lever)]}"
            + (f", ahead of the nearest per-configuration LoRA at {' and '.join(ahead)}" if ahead else "")
            + "; U_θ was starved of training (its configuration-dependent share: spread by arm).")
    return {"question": "How much of the gap does each factor explain?", "measured": measured, "finding": finding}


def _equal_passes(measured: dict) -> str:
    """Where CoA-LoRA with the per-configuration family's passes matches per-configuration LoRA (mean + standard error
    at or below 0) and by how much it trails elsewhere, from the verdict's ppl rows."""
    prefix = "ppl gap, CoA-LoRA 120 steps, per-config 60, at "
    rows = {k.removeprefix(prefix): v for k, v in measured.items() if k.startswith(prefix)}
    even = [b for b, v in rows.items() if v["mean"] + (v["sd"] or 0.0) / v["n"] ** 0.5 <= 0]
    behind = [f"{100 * math.expm1(v['mean'] / 100):.0f} % behind at {b}" for b, v in rows.items() if b not in even]
    parts = ([f"matches or beats per-configuration LoRA at {' and '.join(even)}"] if even else []) + behind
    return ", and is ".join(parts) + ","
