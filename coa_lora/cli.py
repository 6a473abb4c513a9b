"""Command line: ``python -m coa_lora {prepare,compact,allocate,show,eval,train,export,compare} ...``.

Every failure a user can cause (unknown model, bad budget, unreadable file) exits non-zero with one sentence on
stderr; long steps draw a progress bar on stderr, results go to stdout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from coa_lora import commands
from coa_lora.commands import DTYPES, CliError

MODEL_HELP = "smollm2 (embedded), tiny (random test model), a local folder, or a Hugging Face model id"


def _add_model_args(p: argparse.ArgumentParser, from_run: bool = False) -> None:
    if from_run:  # None: the --run's own model (run.json), else smollm2; resolved by _model_name
        p.add_argument("--model", help=MODEL_HELP + " (default: the model --run was trained on, else smollm2)")
    else:
        p.add_argument("--model", default="smollm2", help=MODEL_HELP)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="model dtype (default: float32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m coa_lora", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="prepare the offline assets (embedded model, Shakespeare text) and the "
                                       "embedded model's damage table and allocation grid; idempotent")
    p.add_argument("--assets-only", action="store_true", help="only the model and text, not the allocation data")

    p = sub.add_parser("compact", help="a small read-only copy of a run to ship or share (adapter in a compact "
                                       "dtype, no optimiser state)")
    p.add_argument("--run", type=Path, required=True, help="run folder written by `train`")
    p.add_argument("--out", type=Path, required=True, help="new folder for the copy")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="dtype of the adapter tensors in the copy (default float16)")

    p = sub.add_parser("allocate", help="budget -> per-matrix quantization configuration (exact MILP)")
    _add_model_args(p)
    p.add_argument("--budget", type=float, required=True, help="average bits per weight over the target matrices")
    p.add_argument("--weighting", default="fisher", choices=["none", "fisher"],
                   help="damage = squared error weighted by a diagonal Fisher estimate (default), or unweighted")
    p.add_argument("--out", type=Path, help="write the configuration JSON here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")

    p = sub.add_parser("show", help="summarise a saved configuration JSON for a model")
    _add_model_args(p)
    p.add_argument("--config", type=Path, required=True, help="configuration JSON written by `allocate --out`")
    p.add_argument("--weighting", default="fisher", choices=["none", "fisher"], help="damage weighting to report")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")

    p = sub.add_parser("eval", help="zero-shot multiple-choice accuracy and held-out perplexity of a configuration")
    _add_model_args(p, from_run=True)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--budget", type=float, help="evaluate the allocator's configuration at this many bits")
    which.add_argument("--config", type=Path, help="evaluate a configuration JSON written by `allocate --out`")
    which.add_argument("--uniform", metavar="PRESET", help="every target matrix one preset option, e.g. nf4, nf3, nf2")
    which.add_argument("--full-precision", action="store_true", help="evaluate the unquantized model (default)")
    p.add_argument("--run", type=Path, help="with a trained adapter from this run folder (`train --out`)")
    p.add_argument("--tasks", required=True,
                   help="comma-separated: embedded tasks, harness tasks (need internet), ppl, kl (KL divergence from "
                        "the unquantized model and top-1 agreement on the ppl windows), or JSONL file paths")
    p.add_argument("--limit", type=int, help="first N items per task (windows per held-out play for ppl)")
    p.add_argument("--no-cache", action="store_true", help="recompute instead of reusing ~/.cache/coa_lora/evals")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")

    p = sub.add_parser("train", help="train CoA-LoRA or a baseline adapter into a run folder (resumable)")
    _add_model_args(p)
    p.add_argument("--method", choices=["coa", "qlora", "lqlora", "shared"], help="default: coa")
    p.add_argument("--out", type=Path, required=True, help="run folder, e.g. runs/NAME")
    p.add_argument("--steps", type=int, help="optimiser steps (default 60: about 15 minutes on SmolLM2, 2 CPU cores)")
    p.add_argument("--configs-per-step", type=int, help="configurations per step, k (default 2)")
    p.add_argument("--draws", choices=["anchored", "stratified", "quasi", "random"],
                   help="how a step picks its k configurations: anchored (default; evenly over the set's members, its "
                        "lowest and highest keeping their initial share), stratified (every initial configuration "
                        "keeps its share, shared with the members added near it), quasi (evenly over all members) or "
                        "random (a uniform k-subset per step)")
    p.add_argument("--rank", type=int, help="LoRA rank r (default 64; alpha is 2 x r)")
    p.add_argument("--objective", choices=["lm", "kd"], help="lm: next-token loss; kd: distil the unquantized model")
    p.add_argument("--budgets", help="comma-separated bit budgets of the configuration set (qlora/lqlora: one); "
                                     "default: 10 evenly over 2.5-7.25")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--u-lr-scale", type=float, help="U_theta's learning rate as a multiple of --lr (default 1)")
    p.add_argument("--u-init-std", type=float, help="std of U_theta's last layer at the start (default 0: I + U = I; "
                   "the official code's 1e-3 lets every layer of U learn from the first step)")
    p.add_argument("--batch-size", type=int, help="windows per micro-batch (default 4)")
    p.add_argument("--seq-length", type=int, help="tokens per window (default 128)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 10)")
    p.add_argument("--eval-every", type=int, help="steps between held-out probe losses (default 20)")
    p.add_argument("--search", nargs="?", const="search", choices=["search", "random", "frozen", "off"],
                   help="Pareto search of the configuration set between epochs (bare --search: qLogEHVI; random / "
                        "frozen: the ablations; default off)")
    p.add_argument("--rounds", type=int, help="search rounds R; training is split into R + 1 epochs (default 3)")
    p.add_argument("--segments", type=int, help="bit segments U of the training-set selection (default 10)")
    p.add_argument("--proposals", type=int, help="new configurations q per round (default 5)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")

    p = sub.add_parser("export", help="write a packed, deployable quantized model folder for one configuration "
                                      "(with --run: and its adapter; --adapter-only: the peft adapter alone)")
    _add_model_args(p, from_run=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--budget", type=float, help="the allocator's configuration at this many average bits")
    which.add_argument("--config", type=Path, help="a configuration JSON written by `allocate --out`")
    p.add_argument("--run", type=Path, help="include this run's adapter, folded for the configuration (peft format)")
    p.add_argument("--out", type=Path, required=True, help="the folder to write (atomically: all or nothing)")
    p.add_argument("--adapter-only", action="store_true",
                   help="write only the peft adapter (adapter_model.safetensors + configs) of --run, no model")
    p.add_argument("--force", action="store_true", help="replace an existing packed folder at --out")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")

    p = sub.add_parser("compare", help="train CoA-LoRA, a LoRA per configuration and Shared-LoRA over seeds and "
                                       "compare them at trained and unseen budgets (resumable; writes a report)")
    p.add_argument("--out", type=Path, required=True, help="the comparison folder (runs, evaluations, results)")
    p.add_argument("--quick", action="store_true", help="the tiny random model, 6 steps, seeds 0,1: the whole "
                                                        "pipeline in about a minute")
    p.add_argument("--model", help="smollm2 (default), tiny, a local folder or a Hugging Face model id")
    p.add_argument("--methods", help="comma-separated, from qlora (a LoRA per configuration), shared, coa "
                                     "(default: all three)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1,2,3,4; --quick: 0,1)")
    p.add_argument("--steps", type=int, help="optimiser steps per adapter (default 60; --quick: 6)")
    p.add_argument("--rank", type=int, help="LoRA rank of every adapter, alpha = 2 x rank (default 64, the official "
                                            "code's, chosen by #37's arms; --quick: 4)")
    p.add_argument("--budgets", help="comma-separated budgets the per-configuration methods train on (default "
                                     "2.5,3,3.5,4)")
    p.add_argument("--unseen", help="comma-separated budgets only evaluated (default 2.75,3.25; '' for none)")
    p.add_argument("--task-limit", type=int, help="items per task and evaluation (default 40)")
    p.add_argument("--report", type=Path, help="also write the markdown report here, e.g. docs/RESULTS.md")
    p.add_argument("--merge", type=Path, nargs="+", metavar="FOLDER",
                   help="train nothing: merge the results of comparisons of one plan run side by side on disjoint "
                        "seeds into --out (finished seeds so far)")
    p.add_argument("--reference", type=Path, metavar="FOLDER",
                   help="an earlier comparison whose numbers the report keeps as rows (remembered in --out)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="model dtype (default: float32)")
    return parser


COMMANDS = {"prepare": commands.prepare_command, "compact": commands.compact_command,
            "allocate": commands.allocate_command, "show": commands.show_command, "eval": commands.eval_command,
            "train": commands.train_command, "export": commands.export_command,
            "compare": commands.compare_command}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (CliError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - asset errors etc. are shown as one sentence, not a traceback.
        from coa_lora.models.assets import AssetMissingError

        if isinstance(exc, AssetMissingError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
