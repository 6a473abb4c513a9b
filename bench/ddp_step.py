"""Step time of data-parallel training, one process against two (gloo, CPU), and the adapter difference between them.

    python bench/ddp_step.py [--model smollm2] [--budgets 2.5,3,4] [--k 2] [--steps 3] [--batch-size 4]
                             [--seq-length 128] [--train-steps 3]

Step time, the same global batch in every mode (``batch-size`` windows under k configurations per step), each mode
running the trainer's step (coa_lora.lora.step.accumulate_gradients, then the gradient all-reduce of
coa_lora.distributed, clipping, AdamW):

- ``one_1t`` / ``one_2t``: one process with 1 / 2 torch threads (the other process waits at a barrier);
- ``two_data``: two processes of 1 thread, each half the windows under all k configurations (what the trainer does);
- ``two_split``: two processes of 1 thread, each all the windows under k/2 of the configurations (the alternative).

The first step is a warm-up (it fills the dequantized-weight caches) and is not timed; the modes alternate within
each step so machine noise hits them alike. ``allreduce_s``: one all-reduce of every gradient, alone.

Adapter difference: the real trainer (coa_lora.lora.trainer.train) for ``--train-steps`` steps with 2 replicas of
``batch-size / 2`` windows, once in the two gloo processes and once in one process with 2 threads; max |Δ| over the
adapter's parameters, and the trainer's own step times. Prints a table and, last, one JSON object.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from coa_lora import AdapterOptions, CoALoRAModel, ModelConfig, Workbench, distributed
from coa_lora.lora.step import accumulate_gradients
from coa_lora.lora.trainer import TrainOptions, train, training_windows
from coa_lora.runs import CHECKPOINT_FILE, read_metrics
from coa_lora.storage import read_safetensors, write_json

MODES = ("one_1t", "one_2t", "two_data", "two_split")


def timed_step(mode: str, coa, params, optimizer, ranks, chosen, ids) -> float | None:
    """One optimiser step in ``mode``; the seconds rank 0 saw (None on a rank that sat it out)."""
    alone = mode.startswith("one")
    if alone and not ranks.is_main:
        dist.barrier()
        return None
    shares = {"two_data": (chosen, ids[ranks.rank::2]), "two_split": (chosen[ranks.rank::2], ids)}
    mine = shares.get(mode, (chosen, ids))
    torch.set_num_threads(2 if mode == "one_2t" else 1)
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    accumulate_gradients(coa, coa.set_config, mine[0], [mine[1]])
    if not alone:
        grads = [p.grad for p in params]
        ranks.all_reduce_sum_(grads)
        for g in grads:
            g /= ranks.world_size
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    seconds = time.perf_counter() - t0
    torch.set_num_threads(1)
    if alone:
        dist.barrier()
    return seconds


def time_modes(args, ranks) -> dict:
    wb = Workbench.load(args.model)
    budgets = [float(b) for b in args.budgets.split(",")]
    indices = ranks.broadcast_json([wb.allocate(b).config.option_indices().tolist() for b in budgets]
                                   if ranks.is_main else None)
    configs = [ModelConfig.from_option_indices(wb.layout, i) for i in indices]
    coa = CoALoRAModel(wb.qmodel, AdapterOptions(), config_aware=True)
    params = list(coa.named_parameters().values())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    coa.train(True)
    pool = training_windows(wb.tokenizer, args.seq_length)
    g = torch.Generator().manual_seed(0)  # the same draws on both ranks
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(args.steps + 1):
        chosen = [configs[j] for j in torch.randperm(len(configs), generator=g)[:args.k].tolist()]
        ids = pool[torch.randint(len(pool), (args.batch_size,), generator=g)]
        for mode in MODES:
            dist.barrier()
            t = timed_step(mode, coa, params, optimizer, ranks, chosen, ids)
            if i and t is not None:
                times[mode].append(t)
    reduce_times = []
    for _ in range(5):
        dist.barrier()
        t0 = time.perf_counter()
        ranks.all_reduce_sum_([p.detach().clone() for p in params])
        reduce_times.append(time.perf_counter() - t0)
    return {"steps_s": times, "allreduce_s": statistics.median(reduce_times),
            "grad_bytes": sum(p.numel() * p.element_size() for p in params)}


def train_options(args) -> TrainOptions:
    return TrainOptions(steps=args.train_steps, budgets=tuple(float(b) for b in args.budgets.split(",")),
                        configs_per_step=args.k, batch_size=args.batch_size // 2, replicas=2,
                        seq_length=args.seq_length, checkpoint_every=args.train_steps, eval_every=args.train_steps,
                        probe_windows=2, probe_configs=1)


def worker(rank: int, args, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    distributed.init_from_environment("cpu")  # the library's own entry, as `torchrun -m coa_lora train` uses it
    try:
        ranks = distributed.current()
        timings = time_modes(args, ranks)
        gc.collect()
        train(Workbench.load(args.model), train_options(args), Path(out) / "two")
        if ranks.is_main:
            write_json(Path(out) / "timings.json", timings)
    finally:
        distributed.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--budgets", default="2.5,3,4")
    p.add_argument("--k", type=int, default=2, help="configurations per step (even: the split mode halves them)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (one more is the warm-up)")
    p.add_argument("--batch-size", type=int, default=4, help="global windows per step (even)")
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=3, help="trainer steps of the adapter comparison")
    args = p.parse_args()
    if args.k % 2 or args.batch_size % 2:
        p.error("--k and --batch-size must be even: two processes split them.")
    with tempfile.TemporaryDirectory(prefix="ddp_step_") as tmp:
        out = Path(tmp)
        mp.spawn(worker, args=(args, free_port(), str(out)), nprocs=2)
        timings = json.loads((out / "timings.json").read_text())
        torch.set_num_threads(2)
        train(Workbench.load(args.model), train_options(args), out / "one")
        a, b = (read_safetensors(out / run / CHECKPOINT_FILE)[0] for run in ("one", "two"))
        trainer = {run: statistics.median(read_metrics(out / run)["seconds"].tolist()[1:] or [float("nan")])
                   for run in ("one", "two")}
    names = [n for n in a if not n.startswith("optim.")]
    diff = max((a[n] - b[n]).abs().max().item() for n in names)
    scale = max(a[n].abs().max().item() for n in names)
    step = {m: statistics.median(t) for m, t in timings["steps_s"].items()}
    print(f"{args.model}: global batch {args.batch_size} windows x {args.seq_length} tokens x k={args.k}, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'mode':10s} {'median step (s)':>16s} {'vs one_2t':>10s}")
    for m in MODES:
        print(f"{m:10s} {step[m]:16.3f} {step[m] / step['one_2t']:10.3f}")
    print(f"all-reduce of {timings['grad_bytes'] / 1e6:.2f} MB of gradients: {timings['allreduce_s'] * 1e3:.1f} ms "
          f"({timings['allreduce_s'] / step['two_data']:.3f} of a two_data step)")
    print(f"trainer, {args.train_steps} steps: one process {trainer['one']:.3f} s/step, two {trainer['two']:.3f} "
          f"s/step; adapter max |diff| {diff:.3g} (largest |parameter| {scale:.3g})")
    print(json.dumps({"model": args.model, "budgets": args.budgets, "k": args.k, "batch_size": args.batch_size,
                      "seq_length": args.seq_length, "cores": os.cpu_count(), **{f"{m}_step_s": step[m] for m in MODES},
                      "two_data_over_one_1t": step["two_data"] / step["one_1t"],
                      "two_data_over_one_2t": step["two_data"] / step["one_2t"],
                      "two_split_over_two_data": step["two_split"] / step["two_data"],
                      "allreduce_s": timings["allreduce_s"], "allreduce_over_step": timings["allreduce_s"] /
                      step["two_data"], "trainer_one_step_s": trainer["one"], "trainer_two_step_s": trainer["two"],
                      "trainer_two_over_one": trainer["two"] / trainer["one"], "adapter_max_abs_diff": diff,
                      "adapter_max_abs": scale}))


if __name__ == "__main__":
    main()
