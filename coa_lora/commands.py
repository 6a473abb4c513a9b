"""One function per command of ``python -m coa_lora`` (:mod:`coa_lora.cli` parses the arguments and calls it).

Each takes the parsed arguments, prints its results on stdout and returns the exit status; an error a user can cause
raises :class:`CliError` or ValueError with one sentence, which the CLI prints.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CliError(Exception):
    """An error whose message is shown to the user as is."""


def prepare_command(args) -> int:
    from coa_lora.models.assets import prepare_assets
    from coa_lora.progress import tqdm_progress

    with tqdm_progress("prepare") as progress:
        prepare_assets(progress=progress)
    if not args.assets_only:
        # What the explorer's budget slider needs, shipped in data/precomputed or computed here once (~15 min on
        # 2 cores without the shipped files), never on a user's first click.
        from coa_lora.explorer import Explorer

        with tqdm_progress("damage table and allocation grid (once per model)") as progress:
            Explorer.load("smollm2").allocator(progress, solve_grid=True)
    print("assets ready")
    return 0


def compact_command(args) -> int:
    from coa_lora.runs import compact_run

    out = compact_run(args.run, args.out, args.dtype)
    print(f"compact copy of {args.run} ({args.dtype} adapter, no optimiser state) -> {out}")
    return 0


def _workbench(args):
    from coa_lora.lora.workbench import Workbench

    return Workbench.load(_model_name(args), device=args.device, dtype=DTYPES[args.dtype])


def _model_name(args) -> str:
    """``--model`` when given; else the model ``--run`` was trained on (its run.json); else smollm2."""
    from coa_lora.models.loading import SMOLLM2, TINY, model_id
    from coa_lora.runs import read_run_info

    if args.model is not None:
        return args.model
    if getattr(args, "run", None) is None:
        return SMOLLM2
    recorded = read_run_info(args.run).model_id
    # run.json keeps the display name (models.model_id): map the embedded models' names back to what load takes;
    # a folder's absolute path and a hub id load as they are.
    return next((name for name in (SMOLLM2, TINY) if model_id(name) == recorded), recorded)


def _check_budget(budget: float | None) -> None:
    """Every model's feasible range is the option space's (bits per weight do not depend on a matrix's shape)."""
    from coa_lora.quant import MAX_BITS, MIN_BITS

    if budget is not None and not MIN_BITS <= budget <= MAX_BITS:
        raise CliError(f"Budget {budget} bits is outside the feasible range [{MIN_BITS:.4f}, {MAX_BITS:.4f}] bits "
                       "per weight.")


def allocate_command(args) -> int:
    from coa_lora.progress import tqdm_progress

    if args.out is not None and args.out.is_dir():
        raise CliError(f"--out {args.out} is a folder; give a file path for the configuration JSON.")
    _check_budget(args.budget)  # before the model loads and a damage table is computed for nothing
    wb = _workbench(args)
    with tqdm_progress(f"damage table ({args.weighting})") as progress:
        allocation = wb.allocate(args.budget, weighting=args.weighting, progress=progress)
    config = allocation.config
    if args.out is not None:
        from coa_lora.storage import write_json

        write_json(args.out, config.to_dict())
    _print_result(args, wb, allocation)
    return 0


def show_command(args) -> int:
    from coa_lora.configs.allocate import Allocation
    from coa_lora.configs.model_config import ModelConfig

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


def eval_command(args) -> int:
    from coa_lora.configs.model_config import ModelConfig
    from coa_lora.evaluation.evaluator import WINDOW_TASKS, Evaluator, default_cache_dir, results_json, results_table
    from coa_lora.evaluation.tasks import load_task
    from coa_lora.progress import tqdm_progress
    from coa_lora.quant.space import preset

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise CliError("--tasks is empty; name at least one task (an embedded task, a harness task, ppl, kl or a "
                       "file).")
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be a positive integer, got {args.limit}.")
    for task in tasks:  # unknown names, malformed files and presets fail before the model loads
        if task not in WINDOW_TASKS:
            load_task(task, args.limit)
    uniform = preset(args.uniform) if args.uniform is not None else None
    _check_budget(args.budget)
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
    from coa_lora.lora.trainer import load_trained

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
                "proposals": "proposals", "u_lr_scale": "u_lr_scale", "u_init_std": "u_init_std"}


def train_command(args) -> int:
    from coa_lora import distributed
    from coa_lora.lora.trainer import TrainOptions, train
    from coa_lora.progress import tqdm_progress
    from coa_lora.runs import read_run_info

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
        from coa_lora.runs import read_search_tables

        rounds = read_search_tables(args.out)["rounds"]
        print(rounds[["round", "mode", "n_pool", "n_train", "n_new", "hv_pool", "hv_train"]].to_string(index=False))
    return 0


def export_command(args) -> int:
    from coa_lora.configs.model_config import ModelConfig
    from coa_lora.deploy.packed import check_destination, save_packed
    from coa_lora.lora.adapter import export_peft
    from coa_lora.lora.trainer import load_trained
    from coa_lora.progress import tqdm_progress

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


def _numbers(text: str | None, flag: str, kind=float) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise CliError(f"{flag} must be comma-separated numbers, got {text!r}.") from None


def compare_command(args) -> int:
    import dataclasses
    import shlex
    import sys

    from coa_lora.compare import (ComparePlan, check_folder, merge_results, read_reference, read_why,
                                  results_markdown, run_comparison, write_reference, write_results)
    from coa_lora.compare.reference import check_reference, stored_reference
    from coa_lora.lora.workbench import Workbench
    from coa_lora.progress import tqdm_progress
    from coa_lora.storage import atomic_write_bytes

    command = "python -m coa_lora " + shlex.join(sys.argv[1:] if sys.argv[1:2] == ["compare"] else ["compare"])
    # A bad reference, given or stored, is refused before anything runs or is written.
    if args.reference is not None:
        check_reference(args.reference, args.out)
    else:
        stored_reference(args.out)
    if args.merge:
        comparison = merge_results(args.merge, args.out, command)
    else:
        changes = {"model": args.model, "steps": args.steps, "rank": args.rank, "task_limit": args.task_limit,
                   "methods": tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods else None,
                   "seeds": _numbers(args.seeds, "--seeds", int), "budgets": _numbers(args.budgets, "--budgets"),
                   "unseen": _numbers(args.unseen, "--unseen")}
        changes = {k: v for k, v in changes.items() if v is not None}
        plan = ComparePlan.quick(**changes) if args.quick else dataclasses.replace(ComparePlan(), **changes)
        check_folder(plan, args.out)  # another plan's folder is refused before the model loads
        wb = Workbench.load(plan.model, device=args.device, dtype=DTYPES[args.dtype])
        with tqdm_progress("compare") as progress:
            comparison = run_comparison(plan, args.out, wb=wb, progress=progress, command=command,
                                        echo=lambda text: print(text, file=sys.stderr, flush=True))
    summary = write_results(comparison, command)
    if args.reference is not None:
        write_reference(args.out, args.reference)
    markdown = results_markdown(summary, read_why(args.out), read_reference(args.out, summary["plan"]))
    atomic_write_bytes(Path(args.out) / "RESULTS.md", markdown.encode())
    if args.report is not None:
        atomic_write_bytes(args.report, markdown.encode())
    print(markdown)
    return 0
