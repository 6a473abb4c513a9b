"""Command line: ``python -m coa_lora {prepare,allocate,show,eval,train,export} ...``.

Every failure a user can cause (unknown model, bad budget, unreadable file) exits non-zero with one sentence on
stderr; long steps draw a progress bar on stderr, results go to stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CliError(Exception):
    """An error whose message is shown to the user as is."""


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
                   help="comma-separated: embedded tasks, harness tasks (need internet), ppl, or JSONL file paths")
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
    p.add_argument("--rank", type=int, help="LoRA rank r (default 8)")
    p.add_argument("--objective", choices=["lm", "kd"], help="lm: next-token loss; kd: distil the unquantized model")
    p.add_argument("--budgets", help="comma-separated bit budgets of the configuration set (qlora/lqlora: one); "
                                     "default: 10 evenly over 2.5-7.25")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
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
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "prepare":
            return _prepare(args)
        if args.command == "compact":
            return _compact(args)
        if args.command == "allocate":
            return _allocate(args)
        if args.command == "show":
            return _show(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "train":
            return _train(args)
        if args.command == "export":
            return _export(args)
    except (CliError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - asset errors etc. are shown as one sentence, not a traceback.
        from .assets import AssetMissingError

        if isinstance(exc, AssetMissingError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    raise AssertionError(args.command)


def _prepare(args) -> int:
    from .assets import prepare_assets
    from .progress import tqdm_progress

    with tqdm_progress("prepare") as progress:
        prepare_assets(progress=progress)
    if not args.assets_only:
        # What the explorer's budget slider needs, shipped in data/precomputed or computed here once (~15 min on
        # 2 cores without the shipped files), never on a user's first click.
        from .explorer import Explorer

        with tqdm_progress("damage table and allocation grid (once per model)") as progress:
            Explorer.load("smollm2").allocator(progress, solve_grid=True)
    print("assets ready")
    return 0


def _compact(args) -> int:
    from .runs import compact_run

    out = compact_run(args.run, args.out, args.dtype)
    print(f"compact copy of {args.run} ({args.dtype} adapter, no optimiser state) -> {out}")
    return 0


def _workbench(args):
    from .workbench import Workbench

    return Workbench.load(_model_name(args), device=args.device, dtype=DTYPES[args.dtype])


def _model_name(args) -> str:
    """``--model`` when given; else the model ``--run`` was trained on (its run.json); else smollm2."""
    from .models import SMOLLM2, TINY, model_id
    from .runs import read_run_info

    if args.model is not None:
        return args.model
    if getattr(args, "run", None) is None:
        return SMOLLM2
    recorded = read_run_info(args.run).model_id
    # run.json keeps the display name (models.model_id): map the embedded models' names back to what load takes;
    # a folder's absolute path and a hub id load as they are.
    return next((name for name in (SMOLLM2, TINY) if model_id(name) == recorded), recorded)


def _allocate(args) -> int:
    from .progress import tqdm_progress

    if args.out is not None and args.out.is_dir():
        raise CliError(f"--out {args.out} is a folder; give a file path for the configuration JSON.")
    wb = _workbench(args)
    with tqdm_progress(f"damage table ({args.weighting})") as progress:
        allocation = wb.allocate(args.budget, weighting=args.weighting, progress=progress)
    config = allocation.config
    if args.out is not None:
        from .storage import write_json

        write_json(args.out, config.to_dict())
    _print_result(args, wb, allocation)
    return 0


def _show(args) -> int:
    from .allocate import Allocation
    from .config import ModelConfig

    try:
        text = args.config.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"Cannot read the configuration file {args.config} ({exc.__class__.__name__}).") from None
    wb = _workbench(args)
    config = ModelConfig.from_json(text, wb.layout)
    table = wb.damage_table(args.weighting)
    _print_result(args, wb, Allocation(config.avg_bits, config, table.damage(config.option_indices())))
    return 0


def _print_result(args, wb, allocation) -> None:
    config = allocation.config
    if not args.json:
        print(format_summary(allocation, wb.layout))
        return
    print(json.dumps({
        "model": wb.layout.model_id,
        "budget": allocation.budget,
        "avg_bits": config.avg_bits,
        "size_bytes": config.size_bytes,
        "full_size_bytes": wb.layout.full_size_bytes,
        "damage": allocation.damage,
        "weighting": args.weighting,
        "config": config.to_dict(),
    }))


def format_summary(allocation, layout) -> str:
    """Average bits, size against the unquantized model, and one line per block with each matrix's NF bits."""
    config = allocation.config
    mb = 1024**2
    lines = [
        f"{layout.model_id}: budget {allocation.budget:g} bits -> {config.avg_bits:.4f} average bits per weight",
        f"size {config.size_bytes / mb:.1f} MiB vs {layout.full_size_bytes / mb:.1f} MiB unquantized "
        f"({config.size_bytes / layout.full_size_bytes:.1%}); damage {allocation.damage:.4g}",
        "block  avg bits  NF bits per matrix (b/B0)",
    ]
    by_layer = config.bits_by_layer()
    rows: dict[int, list[str]] = {}
    for t, o in zip(layout.targets, config.options):
        rows.setdefault(t.layer, []).append(f"{t.kind.split('_')[0]}:{o.bits}/{o.block_size}")
    for layer, bits in by_layer.items():
        lines.append(f"{layer:5d}  {bits:8.3f}  {' '.join(rows[layer])}")
    return "\n".join(lines)


def _eval(args) -> int:
    from .config import ModelConfig
    from .evaluator import PERPLEXITY_TASK, Evaluator, default_cache_dir, results_json, results_table
    from .mc_tasks import load_task
    from .progress import tqdm_progress
    from .space import preset

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise CliError("--tasks is empty; name at least one task (an embedded task, a harness task, ppl or a file).")
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be a positive integer, got {args.limit}.")
    for task in tasks:  # unknown names, malformed files and presets fail before the model loads
        if task != PERPLEXITY_TASK:
            load_task(task, args.limit)
    uniform = preset(args.uniform) if args.uniform is not None else None
    wb = _workbench(args)
    config = None
    if args.budget is not None:
        config = wb.allocate(args.budget).config
    elif uniform is not None:
        config = ModelConfig.uniform(wb.layout, uniform)
    elif args.config is not None:
        try:
            config = ModelConfig.from_json(args.config.read_text(), wb.layout)
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"Cannot read the configuration file {args.config} ({exc.__class__.__name__}).") from None
    adapter = _trained_adapter(wb, args.run, config) if args.run is not None else None
    adapter_key = adapter.fingerprint() if adapter is not None else None  # hashed once, not per task
    evaluator = Evaluator(wb, cache_dir=None if args.no_cache else default_cache_dir())
    results = {}
    for task in tasks:
        with tqdm_progress(task) as progress:
            results[task] = evaluator.run(task, config, adapter_key, args.limit, progress, adapter=adapter)
    if args.json:
        print(json.dumps({
            "model": wb.layout.model_id,
            "config": "full-precision" if config is None else config.key(),
            "avg_bits": None if config is None else config.avg_bits,
            "run": None if args.run is None else str(args.run),
            "adapter": adapter_key,
            "limit": args.limit,
            "results": results_json(results),
        }))
    else:
        label = "unquantized reference" if config is None else f"{config.avg_bits:.3f} average bits ({config.key()})"
        if args.run is not None:
            label += f", adapter of {args.run}"
        print(f"{wb.layout.model_id}, {label}")
        print(results_table(results).to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep=""))
    return 0


def _trained_adapter(wb, run: Path, config):
    """The trained adapter of ``run`` wrapped around ``wb.model`` (refusing what it cannot evaluate)."""
    from .train import load_trained

    coa, options, _ = load_trained(wb, run)
    if options.method == "lqlora":
        raise CliError("An LQ-LoRA run has its own base weights Q(W - L1L2) per configuration; eval supports "
                       "coa, shared and qlora runs.")
    if coa.network is not None and config is None:
        raise CliError("A CoA-LoRA adapter's correction depends on the configuration: pass --budget or --config.")
    return coa


_TRAIN_FLAGS = {"method": "method", "steps": "steps", "configs_per_step": "configs_per_step", "draws": "draws",
                "rank": "rank", "objective": "objective", "lr": "lr", "batch_size": "batch_size",
                "seq_length": "seq_length", "seed": "seed", "checkpoint_every": "checkpoint_every",
                "eval_every": "eval_every", "search": "search", "rounds": "rounds", "segments": "segments",
                "proposals": "proposals"}


def _train(args) -> int:
    from . import distributed
    from .progress import tqdm_progress
    from .runs import read_run_info
    from .train import TrainOptions, train

    given = {opt: getattr(args, flag) for flag, opt in _TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    if args.budgets is not None:
        try:
            given["budgets"] = tuple(float(b) for b in args.budgets.split(",") if b.strip())
        except ValueError:
            raise CliError(f"--budgets must be comma-separated numbers, got {args.budgets!r}.") from None
    # Under torchrun / accelerate launch this process joins the job (with --device cuda: the GPU of its local rank).
    args.device = distributed.init_from_environment(args.device)
    try:
        ranks = distributed.current()
        options = None
        if ranks.is_main:
            # A resume takes the saved options; flags given explicitly must agree with them (train() checks). A new
            # run takes one data-parallel replica per process.
            base = (TrainOptions.saved(read_run_info(args.out).hyper).to_dict() if args.resume
                    else {"replicas": ranks.world_size})
            options = TrainOptions.from_dict({**base, **given})
        if ranks.world_size > 1:  # rank 0 alone reads the run folder: the others train with its options
            options = TrainOptions.from_dict(ranks.broadcast_json(options.to_dict() if ranks.is_main else None))
        wb = _workbench(args)
        with tqdm_progress(f"train {options.method}") as progress:
            result = train(wb, options, args.out, resume=args.resume, progress=progress)
    finally:
        distributed.close()
    if not ranks.is_main:
        return 0
    print(f"trained {options.method} for {result.step} steps -> {args.out}")
    if options.search != "off":
        from .runs import read_search_tables

        rounds = read_search_tables(args.out)["rounds"]
        print(rounds[["round", "mode", "n_pool", "n_train", "n_new", "hv_pool", "hv_train"]].to_string(index=False))
    return 0


def _export(args) -> int:
    from .adapter import export_peft
    from .config import ModelConfig
    from .packed import check_destination, save_packed
    from .progress import tqdm_progress
    from .train import load_trained

    if args.adapter_only and args.run is None:
        raise CliError("--adapter-only writes the adapter of a trained run: pass --run RUN too.")
    if not args.adapter_only:
        check_destination(args.out, args.force)  # before the model loads: a taken folder fails at once
    text = None
    if args.config is not None:
        try:
            text = args.config.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"Cannot read the configuration file {args.config} ({exc.__class__.__name__}).") from None
    wb = _workbench(args)
    config = ModelConfig.from_json(text, wb.layout) if text is not None else wb.allocate(args.budget).config
    coa = None
    if args.run is not None:
        coa, options, _ = load_trained(wb, args.run)
        if options.method == "lqlora":
            raise CliError("An LQ-LoRA adapter needs its own base weights Q(W - L1L2), which a peft folder cannot "
                           "carry.")
    if args.adapter_only:
        export_peft(coa, args.out, config)
        print(f"peft adapter for {config.avg_bits:.3f} bits -> {args.out}")
        return 0
    with tqdm_progress("export") as progress:
        summary = save_packed(wb, config, args.out, adapter=coa, overwrite=args.force, progress=progress)
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        print(summary.describe())
    return 0
