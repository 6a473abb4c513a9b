"""A run's options: every hyper-parameter of training and its search, as run.json stores them, and the schedule.

    options = TrainOptions(steps=20, budgets=even_budgets(2.5, 4.0, n=2), search="search")
    TrainOptions.saved(json.loads(run_json)["hyper"])   # a saved run's options, older runs included

coa_lora.lora.trainer re-exports everything here.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch

from coa_lora.lora.adapter import AdapterOptions
from coa_lora.search.in_run import SEARCH_MODES

METHODS = ("coa", "shared", "qlora", "lqlora")
OBJECTIVES = ("lm", "kd")
DRAWS = ("anchored", "stratified", "quasi", "random")
SINGLE_CONFIG_METHODS = ("qlora", "lqlora")


# The default set starts at 2.5 bits, not the paper's 2.25: on SmolLM2 the allocator's 2.25-bit configuration stays
# collapsed under any shared adapter (probe loss 11.3 after 200 steps); its loss then dominates every batch it is in
# and U_θ learns an over-amplification for 2-bit options that made the 2.5-bit configuration worse than U = 0. Without
# it CoA-LoRA's held-out perplexity at 2.5 bits went from 6.0e6 to 224 (seed 0, 60 steps), and it beat Shared-LoRA
# at 2.5–4 bits in each of seeds 0, 1, 2 (see the issue-3 note; bench/adapter_ppl.py measures it).
DEFAULT_LOW_BITS, DEFAULT_HIGH_BITS = 2.5, 7.25


def even_budgets(low: float = DEFAULT_LOW_BITS, high: float = DEFAULT_HIGH_BITS, n: int = 10) -> tuple[float, ...]:
    """``n`` budgets evenly over [low, high] (the paper uses 50 over 2.25–7.25; fewer are much faster to allocate)."""
    if n < 1:
        raise ValueError(f"The number of budgets must be positive, got {n}.")
    return (float(low),) if n == 1 else tuple(round(low + (high - low) * i / (n - 1), 6) for i in range(n))


@dataclass(frozen=True)
class TrainOptions:
    """Every hyper-parameter of a run; saved in run.json, and a resume must use the same."""

    method: str = "coa"
    # 60 steps of k = 2 configurations x 4 x 128 tokens: ~11.5 s a step on SmolLM2 with 2 CPU cores
    # (bench/train_step.py), so the default run with its allocation and probes takes about 15 minutes.
    steps: int = 60  # optimiser steps (per adapter for the per-configuration baselines)
    configs_per_step: int = 2  # k: the official code's value
    # How a step picks its k configurations: "anchored" (coa_lora.lora.step.anchored_draws: evenly over the set's
    # members, but its lowest and highest configuration keep their initial share whatever a search adds next to them),
    # "stratified" (coa_lora.lora.step.stratified_draws: every initial configuration keeps its share, shared with the
    # members a search adds near it),
    # "quasi" (coa_lora.lora.step.quasi_draws: evenly over all members, the default before) or "random" (a uniform
    # random k-subset each step, as the first runs did).
    draws: str = "anchored"
    # Rank 64 (the official code's) since #37: over 3 seeds on SmolLM2 it lowered CoA-LoRA's held-out perplexity by
    # 37 / 21 / 10 % (100·ln ratio −47 / −23 / −10) at 2.5 / 2.75 / 3 bits against rank 8 (bench/why.py, rank-64).
    rank: int = 64
    alpha: float | None = None  # None: 2 x rank (scale alpha / r = 2 at every rank); runs saved a number
    dropout: float = 0.05
    lr: float = 1e-3
    warmup: int = 6  # linear warm-up steps, then cosine decay to 0
    weight_decay: float = 0.0
    # U_θ's two levers (#37, factor 1): its learning rate as a multiple of ``lr`` (its own optimiser group when not 1)
    # and the spread of its last layer's initial weights (0: I + U = I exactly; the official code uses 1e-3).
    u_lr_scale: float = 1.0
    u_init_std: float = 0.0
    grad_clip: float = 1.0  # max global L2 norm; 0 turns clipping off
    grad_accumulation: int = 1  # micro-batches per optimiser step
    batch_size: int = 4  # windows per micro-batch
    # Data-parallel replicas of each step (global batch: replicas x grad_accumulation x batch_size windows). The CLI
    # sets it to the number of processes torchrun starts; any process count dividing it gives the same run.
    replicas: int = 1
    seq_length: int = 128
    objective: str = "lm"  # lm: next-token loss; kd: KL toward the unquantized model's next-token distribution
    seed: int = 0
    budgets: tuple[float, ...] = even_budgets()  # the initial configuration set: the allocator at these budgets
    checkpoint_every: int = 10
    eval_every: int = 20  # held-out probe loss every this many steps (and at the end)
    # Windows of the probe play (the search's f1 and the periodic probe loss). 4 x 128 tokens: configurations are
    # compared on the same windows, so their differences are far less noisy than the loss itself, and one f1 costs
    # ~1/6 of a training step on SmolLM2 (8 windows made a search round cost 5.3-8.3 steps).
    probe_windows: int = 4
    probe_configs: int = 3  # configurations of the set (lowest, middle, highest bits) the probe runs under
    # Pareto search (coa_lora.search.in_run): "search" alternates R + 1 epochs with R rounds that add ``proposals``
    # configurations each and re-select the set over ``segments`` bit segments; "random" / "frozen" are its ablations.
    search: str = "off"
    rounds: int = 3
    # U: 10 over the default 10-budget initial set gives each segment one initial configuration, so proposals compete
    # inside occupied segments and the selection has something to select (40, the paper's value for its 50 initial
    # configurations, left every configuration alone in its segment: the training set was the whole pool). Measured
    # with n (bench/segments.py, SmolLM2 at round 0): the selection keeps 100 % of n = 10 at U = 10, 85 % of n = 20,
    # 80 % of n = 50, and 98 % of n = 50 at U = 40: allocator optima rarely dominate one another, so a bigger initial
    # set buys little selection for 5x its measurement; the pressure comes from proposals that measure worse.
    segments: int = 10
    proposals: int = 5  # q

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; choose one of {METHODS}.")
        if self.draws not in DRAWS:
            raise ValueError(f"Unknown configuration draws {self.draws!r}; choose one of {DRAWS}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"Unknown objective {self.objective!r}; choose one of {OBJECTIVES}.")
        positive = ("steps", "configs_per_step", "rank", "grad_accumulation", "batch_size", "seq_length",
                    "checkpoint_every", "eval_every", "probe_windows", "probe_configs", "rounds", "segments",
                    "proposals", "replicas")
        bad = [n for n in positive if int(getattr(self, n)) < 1]
        if bad:
            raise ValueError(f"TrainOptions.{bad[0]} must be a positive integer, got {getattr(self, bad[0])}.")
        if not self.budgets:
            raise ValueError("TrainOptions.budgets needs at least one budget.")
        if not (0.0 < self.u_lr_scale < float("inf")):
            raise ValueError(f"TrainOptions.u_lr_scale must be a positive number, got {self.u_lr_scale}.")
        if not (0.0 <= self.u_init_std < float("inf")):
            raise ValueError(f"TrainOptions.u_init_std must be a finite number >= 0, got {self.u_init_std}.")
        if self.alpha is not None and not (0.0 < self.alpha < float("inf")):
            raise ValueError(f"TrainOptions.alpha must be a positive number or None (2 x rank), got {self.alpha}.")
        if self.search not in SEARCH_MODES:
            raise ValueError(f"Unknown search mode {self.search!r}; choose one of {SEARCH_MODES}.")
        if self.search != "off" and self.method in SINGLE_CONFIG_METHODS:
            raise ValueError(f"Method {self.method!r} trains on one configuration; the search needs a configuration "
                             f"set (methods coa or shared).")
        if self.search != "off" and len(set(self.budgets)) < 2:
            raise ValueError(f"The search needs a configuration set: give at least 2 budgets, got "
                             f"{list(self.budgets)}.")
        if self.search != "off" and self.rounds >= self.steps:
            raise ValueError(f"{self.rounds} search rounds need more than {self.rounds} training steps (one epoch of "
                             f"at least one step between rounds), got steps={self.steps}.")
        if self.method in SINGLE_CONFIG_METHODS and len(self.budgets) != 1:
            raise ValueError(f"Method {self.method!r} trains one adapter per configuration: give exactly one budget "
                             f"(one run per budget), got {len(self.budgets)}.")

    def adapter_options(self) -> AdapterOptions:
        alpha = 2.0 * self.rank if self.alpha is None else self.alpha
        return AdapterOptions(r=self.rank, lora_alpha=alpha, lora_dropout=self.dropout, u_init_std=self.u_init_std)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["budgets"] = list(self.budgets)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> TrainOptions:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Unknown training options {unknown}; known: {sorted(names)}.")
        return cls(**{**d, "budgets": tuple(d.get("budgets", even_budgets()))})

    @classmethod
    def saved(cls, d: Mapping) -> TrainOptions:
        """The options of a run as its run.json holds them: an option added since takes the value runs made before
        it had (``draws``: they drew their configurations uniformly at random), so they resume exactly."""
        return cls.from_dict({"draws": "random", **d})


def param_groups(params: Mapping[str, torch.nn.Parameter], options: TrainOptions) -> list[dict]:
    """The optimiser's groups: one, or U_θ's parameters (``network.*``) in a second with ``lr_scale`` =
    ``options.u_lr_scale``. One group when the scale is 1, so runs made before resume with their optimiser state."""
    if options.u_lr_scale == 1.0:
        return [{"params": list(params.values()), "lr_scale": 1.0}]
    names = list(params)
    network = [params[n] for n in names if n.startswith("network.")]
    rest = [params[n] for n in names if not n.startswith("network.")]
    # Checkpoints and the distributed broadcast map optimiser state to ``params`` by position: the two groups must
    # keep that order (U_θ's parameters come last, as CoALoRAModel.named_parameters lists them).
    if names[len(rest):] != [n for n in names if n.startswith("network.")]:
        raise ValueError("U_θ's parameters (network.*) must come after the adapter's in the parameter order.")
    return [{"params": rest, "lr_scale": 1.0}, {"params": network, "lr_scale": options.u_lr_scale}]


def lr_at(step: int, options: TrainOptions) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < options.warmup:
        return options.lr * (step + 1) / options.warmup
    span = max(1, options.steps - options.warmup)
    return options.lr * 0.5 * (1 + math.cos(math.pi * (step - options.warmup) / span))
