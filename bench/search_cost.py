"""What one search round costs in a training on the tiny model (#35): a 4-step CoA-LoRA training with one search
round, timed per phase, with the qLogEHVI acquisition on BoTorch's PyTorch path (ours) or BoTorch's fused C++ kernel
(compiled with ninja on its first use on a machine), and with the allocator's live answers on disk or not.

    python bench/search_cost.py --kernel pytorch
    python bench/search_cost.py --kernel fused --fresh-answers    # the kernel's build and every grid solve included
"""
import argparse
import json
import tempfile
import time

from coa_lora import Workbench
from coa_lora.lora.trainer import TrainOptions, train

SMALL = {"steps": 4, "budgets": (2.5, 3.0, 4.0, 6.0), "seq_length": 32, "batch_size": 2, "checkpoint_every": 5,
         "eval_every": 6, "probe_windows": 2, "probe_configs": 2, "rounds": 1, "proposals": 3, "segments": 4,
         "search": "search"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", choices=("pytorch", "fused"), default="pytorch")
    parser.add_argument("--fresh-answers", action="store_true", help="an empty cache: every grid budget solved live")
    args = parser.parse_args()
    if args.fresh_answers:
        import os

        os.environ["COA_LORA_CACHE"] = tempfile.mkdtemp(prefix="coa_cache_")
    if args.kernel == "fused":  # let BoTorch load (or build) its kernel, as it does without coa-lora's switch
        import coa_lora.search.rounds as rounds

        rounds._pytorch_path_only = lambda: None
    wb = Workbench.load("tiny")
    phases, last = {}, [time.perf_counter()]
    start = last[0]

    def progress(done, total, message):
        now = time.perf_counter()
        phase = message.split(":")[-1].split(" 0/")[0].split(" 1/")[0].strip()
        phases[phase] = phases.get(phase, 0.0) + now - last[0]
        last[0] = now

    train(wb, TrainOptions(**SMALL), tempfile.mkdtemp(prefix="coa_search_cost_"), progress=progress)
    total = time.perf_counter() - start
    for phase, seconds in sorted(phases.items(), key=lambda kv: -kv[1])[:8]:
        print(f"{seconds:7.2f} s  before '{phase}'")
    print(json.dumps({"kernel": args.kernel, "fresh_answers": args.fresh_answers, "train_seconds": round(total, 2)}))


if __name__ == "__main__":
    main()
