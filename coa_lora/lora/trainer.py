"""Training over a configuration set (METHOD.md §5) and the three baselines (§7), with exact resume.

    result = train(Workbench.load("tiny"), TrainOptions(steps=20, budgets=(2.5, 4.0)), "runs/demo")

Methods, one trainer:

- ``coa``: one adapter + U_θ; each optimiser step draws k configurations of the set and runs the same batch under
  each, averaging the gradients of A, B and θ.
- ``shared``: the same, with a plain adapter (no θ): Shared-LoRA.
- ``qlora``: a fresh plain adapter on ONE configuration (one run per budget): per-configuration LoRA.
- ``lqlora``: as ``qlora``, initialised from an SVD of the quantization residual, W ≈ Q(W − L1L2) + L1L2.

Every step's randomness (batch, configurations, dropout) comes from a generator seeded by (seed, step), so a run
resumed from any checkpoint replays exactly the steps an uninterrupted run would have taken.

Data parallelism (``torchrun -m coa_lora train``, coa_lora.distributed): a step's global batch is ``replicas`` copies
of the micro-batches, replica j drawn by its own generator seeded by (seed, step, j), all under the same k
configurations; the processes split the replicas, their gradients are summed by one all-reduce, and only rank 0
touches the run folder. One process can run all replicas itself, with the same result to rounding.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from coa_lora import distributed
from coa_lora.configs.model_config import ModelConfig, ModelLayout
from coa_lora.lora.adapter import CoALoRAModel
from coa_lora.lora.options import (  # noqa: F401 (the options were defined here; importable as before)
    DEFAULT_HIGH_BITS,
    DEFAULT_LOW_BITS,
    DRAWS,
    METHODS,
    OBJECTIVES,
    SINGLE_CONFIG_METHODS,
    TrainOptions,
    even_budgets,
    lr_at,
    param_groups,
)
from coa_lora.lora.step import accumulate_gradients, step_draws, step_gradients  # noqa: F401 (still importable here)
from coa_lora.models.data import play_windows, plays, token_windows
from coa_lora.progress import ProgressFn, report
from coa_lora.runs import (RunInfo, append_metrics, library_versions, load_checkpoint, read_configs, read_run_info,
                           save_checkpoint, truncate_metrics, write_configs, write_run_info)
from coa_lora.search.in_run import RunSearch, round_steps

LQ_ITERATIONS = 3  # alternations of SVD and quantization in the LQ-LoRA initialisation; LQ-LoRA reports few suffice


@dataclass
class TrainResult:
    coa: CoALoRAModel
    configs: list[ModelConfig]
    folder: Path
    step: int


def training_windows(tokenizer, length: int) -> torch.Tensor:
    """``(n, length)`` every non-overlapping window of the training plays (shared: index it, never change it)."""
    return play_windows(tokenizer, length, ("train",))


def probe_windows(tokenizer, length: int, n: int) -> torch.Tensor:
    """``(≤ n, length)`` windows of the probe play(s), evenly spaced through the text (fixed for a run).

    The probe is the search's f1 text and the trainer's probe loss: a play that neither training nor any reported
    metric (held-out perplexity scores the held-out plays) uses, so selecting on it biases no comparison. Evenly
    spaced, not the first n, so the dramatis personae at a play's start do not dominate it."""
    every = torch.cat([token_windows(tokenizer, text, length) for text in plays("probe").values()])
    picks = torch.linspace(0, len(every) - 1, min(n, len(every))).round().long()
    return every[picks]


def lqlora_init_(coa: CoALoRAModel, iterations: int = LQ_ITERATIONS) -> None:
    """LQ-LoRA: per target find L = L1·L2 (rank r) with W ≈ Q(W − L) + L, by alternating SVD and quantization.

    Sets each base weight to Q(W − L) and the adapter to ``scaling · B A = L`` (B = U√S/√s, A = √S Vᵀ/√s).
    """
    from coa_lora.quant.quantizer import dequantize, quantize

    r, s = coa.options.r, coa.options.scaling
    with torch.no_grad():
        for name, option in zip(coa.layout.names, coa.config.options):
            w = coa.qmodel.original_weight(name)
            low = torch.zeros_like(w)
            for _ in range(iterations):
                q = dequantize(quantize(w - low, option), dtype=w.dtype)
                u, sv, vh = torch.linalg.svd((w - q).double(), full_matrices=False)
                root = sv[:r].sqrt()
                low = ((u[:, :r] * sv[:r]) @ vh[:r]).to(w.dtype)
            wrapper = coa.wrappers[name]
            wrapper.base_layer.weight.data = dequantize(quantize(w - low, option), dtype=w.dtype)
            wrapper.lora_B.weight.copy_(u[:, :r] * root / math.sqrt(s))
            wrapper.lora_A.weight.copy_(root[:, None] * vh[:r] / math.sqrt(s))


def _prepare_folder(folder: Path, info: RunInfo, resume: bool) -> None:
    exists = (folder / "run.json").is_file()
    if resume:
        saved = read_run_info(folder)
        if saved.weight_hash != info.weight_hash:
            raise ValueError(f"Run {folder} was trained on a different model; resume it with that model.")
        if TrainOptions.saved(saved.hyper).to_dict() != info.hyper or saved.method != info.method:
            raise ValueError(f"Run {folder} was started with other training options; resume it with the same ones.")
    elif exists:
        raise ValueError(f"Run folder {folder} already holds a run; pass resume=True (--resume) or another folder.")
    else:
        write_run_info(folder, info)


def training_configs(wb, folder: Path, budgets: tuple[float, ...], progress: ProgressFn | None) -> list[ModelConfig]:
    """The allocator's configurations at ``budgets``, cached in the run folder (allocation is slow on SmolLM2)."""
    configs = read_configs(folder, wb.layout)
    if configs is None:
        configs = []
        for i, budget in enumerate(budgets):
            configs.append(wb.allocate(budget).config)
            report(progress, i + 1, len(budgets), f"allocating {budget:g} bits")
        write_configs(folder, configs)
    return configs


def build_adapter(wb, options: TrainOptions) -> CoALoRAModel:
    """The adapter of ``options.method`` on ``wb``'s model (which it wraps in place)."""
    return CoALoRAModel(wb.qmodel, options.adapter_options(), config_aware=options.method == "coa", seed=options.seed)


def train(wb, options: TrainOptions, folder: str | Path, resume: bool = False,
          progress: ProgressFn | None = None, on_step: Callable[[dict], None] | None = None) -> TrainResult:
    """Train ``options.method`` on ``wb`` (a :class:`~coa_lora.Workbench`, wrapped in place) into run ``folder``.

    ``resume=True`` continues the run from its last checkpoint (same options required); the result equals an
    uninterrupted run's. ``progress(done, total, message)`` is called once per step, ``on_step(row)`` with each
    metrics row. In an initialised torch.distributed process group (torchrun) every process calls this with the same
    arguments and computes its share of ``options.replicas``; only rank 0 reads or writes ``folder`` and reports.
    """
    ranks = distributed.current()
    mine = ranks.replicas(options.replicas)  # refuses a replica count the processes cannot split
    if not ranks.is_main:
        progress = on_step = None
    folder = Path(folder)
    wb.qmodel.restore_()
    info = RunInfo(wb.layout.model_id, wb.weight_hash, options.method, options.to_dict(), options.seed,
                   library_versions())
    if ranks.is_main:
        _prepare_folder(folder, info, resume)
    # Anchored, stratified and quasi-random draws index the set in bits order (coa_lora.lora.step); "random" keeps the
    # order runs made before them trained in, so they resume exactly.
    order = list if options.draws == "random" else bits_sorted
    configs = order(_from_main(ranks, wb.layout, training_configs(wb, folder, options.budgets, progress)
                               if ranks.is_main else None))
    n_initial = len(configs)  # anchored draws keep the ends at their initial share
    initial_bits = [c.avg_bits for c in configs]  # stratified draws keep every initial configuration's share
    coa = build_adapter(wb, options)
    coa.set_config(configs[0])
    lq_bases = None
    if options.method == "lqlora":
        lqlora_init_(coa)
        lq_bases = {n: w.base_layer.weight.data for n, w in coa.wrappers.items()}
    params = coa.named_parameters()
    optimizer = torch.optim.AdamW(param_groups(params, options), lr=options.lr, weight_decay=options.weight_decay)
    start = (load_checkpoint(folder, params, optimizer, info.weight_hash) if resume and ranks.is_main else None) or 0
    if ranks.world_size > 1:  # rank 0 alone read the run: everyone starts from its step, adapter and optimiser state
        start = ranks.broadcast_json(start)
        ranks.broadcast_(list(params.values()))
        ranks.broadcast_optimizer_(optimizer, list(params.values()))
    if ranks.is_main:
        truncate_metrics(folder, start)

    def activate(config: ModelConfig) -> None:
        coa.set_config(config)
        if lq_bases is not None:  # LQ-LoRA's base is Q(W − L1L2), not the cached Q(W)
            for n, w in coa.wrappers.items():
                w.base_layer.weight.data = lq_bases[n]

    pool = training_windows(wb.tokenizer, options.seq_length)
    probe = probe_windows(wb.tokenizer, options.seq_length, options.probe_windows)
    by_bits = sorted(range(len(configs)), key=lambda i: configs[i].avg_bits)
    picks = torch.linspace(0, len(by_bits) - 1, min(options.probe_configs, len(by_bits))).round().long().tolist()
    probe_set = [configs[by_bits[i]] for i in dict.fromkeys(picks)]  # fixed by the initial set, whatever the search
    search, round_at = None, set()
    if options.search != "off":
        # Rounds run on rank 0 and only at these steps (a round's checkpoint is written at its step before it
        # starts, so a resume lands on it too): there the others take the new training set.
        round_at = set(round_steps(options.steps, options.rounds))
        if ranks.is_main:
            search = RunSearch(wb, coa, activate, folder, options, probe, options.batch_size, progress)
            configs = search.open(configs)
        configs = order(_from_main(ranks, wb.layout, configs))

    for step in range(start, options.steps):
        if search is not None and search.due(step):
            configs = order(search.run_round(step))
        if step in round_at:
            configs = order(_from_main(ranks, wb.layout, configs))
        t0 = time.perf_counter()
        bits = [c.avg_bits for c in configs] if options.draws == "stratified" else None
        draws = [step_draws(options, step, j, len(configs), len(pool), n_initial, bits, initial_bits) for j in mine]
        for group in optimizer.param_groups:  # a checkpoint of a run made before has no lr_scale: 1
            group["lr"] = lr_at(step, options) * group.get("lr_scale", 1.0)
        coa.train(True)
        total = step_gradients(coa, activate, list(params.values()), configs, pool, draws, options, ranks)
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), options.grad_clip or float("inf"))
        optimizer.step()
        if not ranks.is_main:
            continue
        row = {"step": step + 1, "loss": total, "lr": optimizer.param_groups[0]["lr"], "grad_norm": float(norm),
               "configs": [configs[ci].key() for ci in draws[0][0]], "seconds": time.perf_counter() - t0}
        if (step + 1) % options.eval_every == 0 or step + 1 == options.steps:
            row.update(_probe(coa, activate, probe_set, probe, options.batch_size))
        append_metrics(folder, row)
        # A round needs the adapter of its step on disk before it starts: a kill during the round resumes there.
        round_next = search is not None and search.due(step + 1)
        if (step + 1) % options.checkpoint_every == 0 or step + 1 == options.steps or round_next:
            save_checkpoint(folder, step + 1, params, optimizer, info.weight_hash)
        if on_step is not None:
            on_step(row)
        report(progress, step + 1, options.steps, f"loss {total:.3f}")
    if search is not None:
        search.finish(options.steps)
    coa.train(False)
    with torch.no_grad():
        activate(configs[0])
    return TrainResult(coa, configs, folder, options.steps)


def bits_sorted(configs: list[ModelConfig]) -> list[ModelConfig]:
    """``configs`` by average bits (ties by key): the order that :mod:`coa_lora.lora.step`'s draws index."""
    return sorted(configs, key=lambda c: (c.avg_bits, c.key()))


def _from_main(ranks: distributed.Ranks, layout: ModelLayout, configs: list[ModelConfig] | None) -> list[ModelConfig]:
    """Rank 0's configuration set on every rank (sent as option indices: the other ranks read no run folder)."""
    if ranks.world_size == 1:
        return configs
    indices = ranks.broadcast_json([c.option_indices().tolist() for c in configs] if ranks.is_main else None)
    return configs if ranks.is_main else [ModelConfig.from_option_indices(layout, i) for i in indices]


def _probe(coa: CoALoRAModel, activate, configs: list[ModelConfig], windows: torch.Tensor, batch: int) -> dict:
    """Held-out next-token loss under each probe configuration (dropout off, no grad)."""
    coa.train(False)
    losses = {}
    with torch.no_grad():
        for config in configs:
            activate(config)
            parts = [coa.model(input_ids=w, labels=w).loss.item() * len(w) for w in windows.split(batch)]
            losses[f"probe_loss@{config.avg_bits:.3f}"] = sum(parts) / len(windows)
    coa.train(True)
    return {"probe_loss": sum(losses.values()) / len(losses), **losses}


def load_trained(wb, folder: str | Path) -> tuple[CoALoRAModel, TrainOptions, list[ModelConfig]]:
    """Rebuild a run's trained adapter on ``wb`` (wrapped in place) from its last checkpoint, in eval mode."""
    folder = Path(folder)
    saved = read_run_info(folder)
    options = TrainOptions.saved(saved.hyper)
    wb.qmodel.restore_()
    # Hashed once per workbench: the explorer calls this on every switch between runs' adapters.
    if wb.weight_hash != saved.weight_hash:
        raise ValueError(f"Run {folder} was trained on a different model than {wb.layout.model_id}.")
    configs = read_configs(folder, wb.layout) or []
    coa = build_adapter(wb, options)
    if load_checkpoint(folder, coa.named_parameters(), None, saved.weight_hash) is None:
        raise ValueError(f"Run {folder} has no checkpoint yet.")
    coa.train(False)
    return coa, options, configs
