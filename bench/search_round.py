"""Time one configuration-search round (GP fit + acquisition optimisation + q proposals) on a model's layout.

    python bench/search_round.py [--model smollm2] [--initial 50] [--rounds 1] [--threads 1] [--encoding field]
                                  [--starts 2] [--moves 8] [--mc-samples 32] [--max-neighbours 256]

f1 is synthetic (no adapter is evaluated, so the time is the search's own): f1(C) = log Σ_i w_i·numel_i·(4^-b +
0.1·4^-b0·B0/64) with random per-matrix sensitivities w_i, i.e. NF error ~ 4^-bits plus a scale-quantization term.
The initial set is ``--initial`` configurations: uniform ones over the bit range plus random perturbations of them.
Prints one line per round and, last, one JSON object. Compare ``seconds_round`` with bench/train_step.py's step time
(target: at most 5 steps).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from coa_lora.configs.model_config import ModelConfig
from coa_lora.lora.instantiate import layout_of
from coa_lora.models.loading import load_model, model_id
from coa_lora.quant.space import ALL_OPTIONS
from coa_lora.search.rounds import SearchSettings, SearchState, search_round


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--initial", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (small tensors: 1 is fastest)")
    ap.add_argument("--encoding", default="field")
    ap.add_argument("--starts", type=int, default=SearchSettings.starts)
    ap.add_argument("--moves", type=int, default=SearchSettings.moves)
    ap.add_argument("--mc-samples", type=int, default=SearchSettings.mc_samples)
    ap.add_argument("--max-neighbours", type=int, default=SearchSettings.max_neighbours)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    layout = layout_of(load_model(args.model), model_id(args.model))
    g = torch.Generator().manual_seed(0)
    w = torch.exp(torch.randn(len(layout), generator=g, dtype=torch.float64)) * layout.numels.double()
    per_option = torch.tensor([4.0 ** -o.bits + 0.1 * 4.0 ** -o.scale_bits * o.block_size / 64 for o in ALL_OPTIONS],
                              dtype=torch.float64)

    def evaluate(configs):
        return [float(torch.log((w * per_option[c.option_indices()]).sum())) for c in configs]

    order = sorted(range(len(ALL_OPTIONS)), key=lambda k: ALL_OPTIONS[k].bits_per_weight)
    levels = [order[int(i)] for i in torch.linspace(0, len(order) - 1, max(2, args.initial // 2)).round().long()]
    initial = [ModelConfig.uniform(layout, ALL_OPTIONS[k]) for k in levels]
    while len({c.key() for c in initial}) < args.initial:
        x = initial[int(torch.randint(len(levels), (1,), generator=g))].option_indices().clone()
        k = torch.randperm(len(layout), generator=g)[:8]
        x[k] = torch.randint(len(ALL_OPTIONS), (8,), generator=g)
        initial.append(ModelConfig.from_option_indices(layout, x))

    state = SearchState.start(layout, initial, evaluate, SearchSettings(
        encoding=args.encoding, starts=args.starts, moves=args.moves, mc_samples=args.mc_samples,
        max_neighbours=args.max_neighbours))
    rows = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        row = search_round(state, evaluate)
        row["seconds_round"] = time.perf_counter() - t0
        rows.append(row)
        print(f"round {row['round']}: {row['seconds_round']:.1f} s (fit {row['seconds_fit']:.1f}, acquisition "
              f"{row['seconds_acquisition']:.1f}), hv_pool {row['hv_pool']:.4f}, pool {row['n_pool']}")
    print(json.dumps({"model": args.model, "targets": len(layout), "initial": len(state.pool) - 5 * args.rounds,
                      "settings": state.to_dict()["settings"], "rounds": rows,
                      "mean_seconds_round": sum(r["seconds_round"] for r in rows) / len(rows)}))


if __name__ == "__main__":
    main()
