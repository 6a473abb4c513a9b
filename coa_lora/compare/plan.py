"""The plan of a comparison: which adapters are trained (method x seed, and budget for the per-configuration
methods), how, and where each is evaluated. A small frozen dataclass, saved in the comparison folder as plan.json, so
that a killed comparison resumes the same plan and a folder never mixes two.

    plan = ComparePlan.quick()                       # the tiny model, a few steps, two seeds (the test suite runs it)
    plan = ComparePlan(seeds=(0, 1, 2))               # SmolLM2, the paper's four budgets plus two unseen ones
    for spec in plan.runs(): ...                      # RunSpec(method, seed, budget, name)
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from coa_lora.lora import TrainOptions, even_budgets
from coa_lora.quant import MAX_BITS, MIN_BITS

FORMAT_VERSION = 1
# Per-configuration LoRA (QLoRA-style: one fresh adapter per configuration), one plain adapter shared across the
# configuration set (Shared-LoRA), and CoA-LoRA. LQ-LoRA is left out: its base weights Q(W - L1L2) belong to its own
# configuration, so it cannot be evaluated at the unseen budgets the comparison is about (the note says so).
METHODS = ("qlora", "shared", "coa")
PER_CONFIG = ("qlora",)
LABELS = {"qlora": "Per-configuration LoRA", "shared": "Shared-LoRA", "coa": "CoA-LoRA", "base": "Quantized base"}
# TrainOptions fields a plan may set for every run (the others follow the method, seed and budget).
TRAIN_FIELDS = ("batch_size", "seq_length", "lr", "warmup", "configs_per_step", "checkpoint_every", "eval_every",
                "probe_windows", "probe_configs", "rounds", "segments", "proposals", "objective", "draws",
                "u_lr_scale", "u_init_std")


@dataclass(frozen=True)
class RunSpec:
    """One adapter of the plan: an ordinary run folder ``runs/<name>`` made by the trainer."""

    method: str
    seed: int
    budget: float | None  # the configuration's budget for a per-configuration method; None: the configuration set
    name: str


@dataclass(frozen=True)
class ComparePlan:
    """What a comparison trains and evaluates. Every adapter gets the same optimiser steps."""

    model: str = "smollm2"
    methods: tuple[str, ...] = METHODS
    budgets: tuple[float, ...] = (2.5, 3.0, 3.5, 4.0)  # trained by the per-configuration methods (the official code's)
    unseen: tuple[float, ...] = (2.75, 3.25)  # evaluated only: no method trained on them
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    steps: int = 60
    # Rank 64 (the official code's) since #37: over 3 seeds it lowered CoA-LoRA's held-out perplexity by 37 / 21 / 10 %
    # (100·ln ratio −47 / −23 / −10) at 2.5 / 2.75 / 3 bits against rank 8 (bench/why.py, arm rank-64), and
    # per-configuration LoRA's as much.
    rank: int = 64
    search: str = "search"  # Shared-LoRA and CoA-LoRA: the Pareto search over their configuration set
    set_budgets: tuple[float, ...] = even_budgets()  # Shared-LoRA and CoA-LoRA: the initial configuration set
    ppl_length: int = 1024  # tokens per held-out window (perplexity and the KL scoreboard)
    ppl_limit: int = 1  # held-out windows per play: 3 x 1,023 scored tokens (the KL reference keeps 300 MB)
    tasks: tuple[str, ...] = ("date_understanding",)
    task_limit: int = 40  # items per task and evaluation (about a minute on SmolLM2)
    train: tuple[tuple[str, object], ...] = field(default=())  # other TrainOptions fields, as (name, value) pairs

    def __post_init__(self) -> None:
        # One spelling per plan (sorted options, float budgets), so equal plans compare and save equal.
        object.__setattr__(self, "train", tuple(sorted(dict(self.train).items())))
        for name in ("budgets", "unseen", "set_budgets"):
            object.__setattr__(self, name, tuple(float(b) if isinstance(b, (int, float)) else b
                                                 for b in getattr(self, name)))
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            named = unknown[0] if unknown else "(none)"
            raise ValueError(f"Unknown method {named!r}; choose from {', '.join(METHODS)}.")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"A method is named twice in {list(self.methods)}; name each once.")
        for name in ("budgets", "unseen", "set_budgets"):
            for b in getattr(self, name):
                if not (isinstance(b, (int, float)) and math.isfinite(b) and MIN_BITS <= b <= MAX_BITS):
                    raise ValueError(f"Budget {b!r} in {name} is outside the feasible range "
                                     f"[{MIN_BITS:.4f}, {MAX_BITS:.4f}] bits.")
        if not self.budgets:
            raise ValueError("The plan needs at least one trained budget.")
        if set(self.budgets) & set(self.unseen):
            raise ValueError(f"Budgets {sorted(set(self.budgets) & set(self.unseen))} are both trained and unseen; an "
                             "unseen budget is one no method trains on.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(int(s) < 0 for s in self.seeds):
            raise ValueError(f"Seeds must be distinct non-negative integers, got {list(self.seeds)}.")
        if int(self.ppl_limit) < 1 or int(self.task_limit) < 1 or int(self.ppl_length) < 2:
            raise ValueError("ppl_limit and task_limit must be positive integers, ppl_length at least 2.")
        bad = [k for k, _ in self.train if k not in TRAIN_FIELDS]
        if bad:
            raise ValueError(f"Training option {bad[0]!r} cannot be set by a plan; allowed: {', '.join(TRAIN_FIELDS)}.")
        for spec in self.runs():  # every run's options validate now, before anything trains
            self.train_options(spec)

    @classmethod
    def quick(cls, **changes) -> ComparePlan:
        """The whole pipeline on the tiny random model in about a minute: a few steps, two seeds."""
        base = cls(model="tiny", budgets=(2.5, 4.0), unseen=(3.25,), seeds=(0, 1), steps=6, rank=4,
                   set_budgets=(2.5, 3.0, 3.5, 4.0), task_limit=8, ppl_length=128,
                   train=(("batch_size", 2), ("seq_length", 32), ("checkpoint_every", 3), ("eval_every", 3),
                          ("probe_windows", 2), ("probe_configs", 2), ("rounds", 1), ("segments", 3),
                          ("proposals", 2), ("warmup", 2)))
        return dataclasses.replace(base, **changes)

    @property
    def eval_budgets(self) -> tuple[float, ...]:
        return tuple(sorted(set(self.budgets) | set(self.unseen)))

    def runs(self) -> list[RunSpec]:
        """Every adapter, seed-major, and in a seed the one-adapter methods (CoA-LoRA, Shared-LoRA) before the
        per-configuration ones: a comparison stopped part-way holds whole seeds first, and in a seed what the comparison
        is about first."""
        out = []
        for seed in self.seeds:
            for method in sorted(self.methods, key=lambda m: (m in PER_CONFIG, -METHODS.index(m))):
                if method in PER_CONFIG:
                    out += [RunSpec(method, seed, b, f"{method}-{b:g}bits-seed{seed}") for b in self.budgets]
                else:
                    out.append(RunSpec(method, seed, None, f"{method}-seed{seed}"))
        return out

    def train_options(self, spec: RunSpec) -> TrainOptions:
        per_config = spec.method in PER_CONFIG
        return TrainOptions(method=spec.method, steps=self.steps, seed=spec.seed, rank=self.rank,
                            alpha=2.0 * self.rank,  # scale alpha / r = 2 at every rank
                            budgets=(spec.budget,) if per_config else tuple(self.set_budgets),
                            search="off" if per_config else self.search, **dict(self.train))

    def serves(self, spec: RunSpec, budget: float) -> bool:
        """Whether ``spec``'s adapter is the one its method uses at ``budget``: a per-configuration method uses the
        adapter trained nearest to it (the lower one on a tie: it was trained on the harsher damage), as a user
        without CoA-LoRA would; the others use their one adapter everywhere."""
        if spec.method not in PER_CONFIG:
            return True
        nearest = min(self.budgets, key=lambda b: (abs(b - budget), b))
        return nearest == spec.budget

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        d["train"] = {k: v for k, v in self.train}  # JSON's own types: the saved plan reads back equal
        return {"format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: Mapping) -> ComparePlan:
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"Unsupported plan format_version {d.get('format_version')!r}; this version reads "
                             f"{FORMAT_VERSION}.")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        kwargs["train"] = tuple(sorted(dict(d.get("train", {})).items()))
        return cls(**kwargs)

    def same_plan(self, other: ComparePlan) -> bool:
        """Equal but for the seeds: a comparison may be extended by seeds, never changed otherwise."""
        return dataclasses.replace(self, seeds=(0,)).to_dict() == dataclasses.replace(other, seeds=(0,)).to_dict()
