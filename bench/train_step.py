"""Time one training step of CoA-LoRA against Shared-LoRA with the same configurations per step, and the cost of a
configuration switch against one step.

    python bench/train_step.py [--model smollm2] [--budgets 2.5,3,4] [--k 2] [--steps 4] [--batch-size 4]
                               [--seq-length 128]

Both methods run the trainer's own step (``coa_lora.lora.trainer.accumulate_gradients`` + AdamW) on the same batches and
the same sampled configurations; the first step of each is a warm-up (it fills the dequantized-weight cache) and is
not timed. The method that runs first alternates from step to step, so neither always pays for (or profits from)
going first on a batch; the table also gives each method's median split by whether it ran first. Switch cost: alternating ``set_config`` between two cached configurations, with autograd (as in training)
and without. Prints a table and, last, one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from coa_lora import AdapterOptions, CoALoRAModel, Workbench
from coa_lora.lora.trainer import accumulate_gradients, training_windows


class Stepper:
    """One method's adapter on its own copy of the model, with the trainer's step (gradients, clipping, AdamW)."""

    def __init__(self, wb, config_aware: bool):
        self.coa = CoALoRAModel(wb.qmodel, AdapterOptions(), config_aware=config_aware)
        self.params = list(self.coa.named_parameters().values())
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4)
        self.coa.train(True)

    def step(self, configs, ids) -> float:
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        accumulate_gradients(self.coa, self.coa.set_config, configs, [ids])
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        return time.perf_counter() - t0


def switch_cost(coa, a, b, repeats: int = 10) -> dict:
    out = {}
    for label, grad in (("grad", True), ("no_grad", False)):
        with torch.set_grad_enabled(grad):
            coa.set_config(a), coa.set_config(b)  # both cached
            t0 = time.perf_counter()
            for i in range(repeats):
                coa.set_config(a if i % 2 == 0 else b)
            out[label] = (time.perf_counter() - t0) / repeats
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--budgets", default="2.5,3,4")
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="timed steps (one more is the warm-up)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-length", type=int, default=128)
    args = p.parse_args()
    if args.steps < 2:
        p.error("--steps must be at least 2: each method runs first on some steps and second on others")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # A model per method (wrapping is in place); the timed steps alternate between them, so machine noise hits both.
    benches = {"shared": Workbench.load(args.model), "coa": Workbench.load(args.model)}
    configs = [benches["coa"].allocate(float(b)).config for b in args.budgets.split(",")]
    steppers = {"shared": Stepper(benches["shared"], False), "coa": Stepper(benches["coa"], True)}
    pool = training_windows(benches["coa"].tokenizer, args.seq_length)
    times: dict[str, list[float]] = {"shared": [], "coa": []}
    went_first: dict[str, list[bool]] = {"shared": [], "coa": []}
    for i in range(args.steps + 1):  # step 0 fills the dequantized-weight caches: not timed
        chosen = [configs[j] for j in torch.randperm(len(configs), generator=g)[:args.k].tolist()]
        ids = pool[torch.randint(len(pool), (args.batch_size,), generator=g)]
        order = ("shared", "coa") if i % 2 == 0 else ("coa", "shared")
        for method in order:
            t = steppers[method].step(chosen, ids)
            if i:
                times[method].append(t)
                went_first[method].append(method == order[0])
    results = {}
    for m, t in times.items():
        first = [x for x, f in zip(t, went_first[m]) if f]
        second = [x for x, f in zip(t, went_first[m]) if not f]
        results[m] = {"step_s": statistics.median(t), "steps_s": t, "first_s": statistics.median(first),
                      "second_s": statistics.median(second)}
    results["switch_s"] = switch_cost(steppers["coa"].coa, configs[0], configs[1])
    ratio = results["coa"]["step_s"] / results["shared"]["step_s"]
    switch = results["switch_s"]["grad"] / results["coa"]["step_s"]
    print(f"{'method':8s} {'median step (s)':>16s} {'ran first':>10s} {'ran second':>11s}")
    for method in ("shared", "coa"):
        r = results[method]
        print(f"{method:8s} {r['step_s']:16.3f} {r['first_s']:10.3f} {r['second_s']:11.3f}")
    print(f"CoA / Shared step time: {ratio:.3f} (target <= 1.2)")
    print(f"switch between cached configurations: {results['switch_s']['grad'] * 1e3:.1f} ms with autograd, "
          f"{results['switch_s']['no_grad'] * 1e3:.1f} ms without; {switch:.4f} of a CoA step")
    print(json.dumps({"model": args.model, "budgets": args.budgets, "k": args.k, "batch_size": args.batch_size,
                      "seq_length": args.seq_length, "threads": torch.get_num_threads(),
                      "shared_step_s": results["shared"]["step_s"], "coa_step_s": results["coa"]["step_s"],
                      "shared_steps_s": results["shared"]["steps_s"], "coa_steps_s": results["coa"]["steps_s"],
                      "first_s": {m: results[m]["first_s"] for m in times},
                      "second_s": {m: results[m]["second_s"] for m in times},
                      "coa_over_shared": ratio, "switch_grad_s": results["switch_s"]["grad"],
                      "switch_no_grad_s": results["switch_s"]["no_grad"], "switch_over_step": switch}))


if __name__ == "__main__":
    main()
