"""Does a trained CoA-LoRA adapter use the configuration? Held-out perplexity at a budget with U_θ computed for that
configuration, for the run's lowest- and highest-bit training configurations instead, and with U = 0; and the
spectral norms of I + U over the target matrices (min / median / max).

    python bench/config_dependence.py --run runs/coa60 [--budgets 2.5,3,4] [--windows 2]

If "own U" is not better than the borrowed corrections, U_θ has learned a configuration-independent correction (a
plain LoRA would do); the gap to "U = 0" is what U adds at all. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json

import torch

from coa_lora import Workbench, load_trained
from coa_lora.evaluation.perplexity import heldout_perplexity
from coa_lora.lora.adapter import config_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--run", required=True, help="a CoA-LoRA run folder")
    parser.add_argument("--budgets", default="2.5,3,4")
    parser.add_argument("--windows", type=int, default=2, help="1024-token windows per held-out play")
    args = parser.parse_args()
    wb = Workbench.load(args.model)
    coa, _, configs = load_trained(wb, args.run)
    if coa.network is None:
        raise SystemExit(f"{args.run} is not a CoA-LoRA run (it has no U_θ).")
    by_bits = sorted(configs, key=lambda c: c.avg_bits)
    borrowed = {f"U({by_bits[0].avg_bits:.2f} b)": by_bits[0], f"U({by_bits[-1].avg_bits:.2f} b)": by_bits[-1]}
    rows = {}
    with torch.no_grad():
        for budget in [float(b) for b in args.budgets.split(",")]:
            coa.set_config(wb.allocate(budget).config)
            row = {"own U": heldout_perplexity(coa.model, wb.tokenizer, limit=args.windows).perplexity}
            own = torch.stack([w.correction for w in coa.wrappers.values()])  # (matrices, r, r)
            eye = torch.eye(own.shape[-1], dtype=own.dtype)
            norms = torch.linalg.matrix_norm(eye + own, ord=2)  # how much U amplifies B·A, per matrix
            corrections = {name: coa.network(config_features(c, coa.kinds)) for name, c in borrowed.items()}
            corrections["U = 0"] = torch.zeros_like(corrections[next(iter(borrowed))])
            for name, us in corrections.items():
                for wrapper, u in zip(coa.wrappers.values(), us):
                    wrapper.correction = u
                row[name] = heldout_perplexity(coa.model, wb.tokenizer, limit=args.windows).perplexity
            spread = [round(float(v), 3) for v in (norms.min(), norms.median(), norms.max())]
            print(f"{budget:5.2f} bits: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()) + f"  ‖I+U‖₂ {spread}",
                  flush=True)
            rows[budget] = {**row, "‖I+U‖₂ min/median/max": spread}
    print(json.dumps({"run": args.run, "windows_per_play": args.windows, "rows": rows}))


if __name__ == "__main__":
    main()
