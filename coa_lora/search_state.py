"""The record of a configuration search: every evaluated configuration, the training set, per-round hypervolumes.

A :class:`SearchState` is what a run keeps on disk (``search.json``) and what the dashboard reads: three flat,
pandas-ready tables (pool, history, rounds) plus the open round's pending proposals, so a run killed in the middle of
a round resumes with every configuration it had already evaluated. :mod:`coa_lora.search` runs the rounds.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from .config import ModelConfig, ModelLayout
from .pareto import HypervolumePlane, segment_select
from .surrogate import DEFAULT_ENCODING, ENCODINGS, OPTION_BITS

STATE_VERSION = 1
SOURCES = ("initial", "search", "random")
TIMINGS = ("seconds_fit", "seconds_acquisition", "seconds_evaluate", "seconds_refresh")
Evaluate = Callable[[Sequence[ModelConfig]], Sequence[float]]


@dataclass(frozen=True)
class SearchSettings:
    """How the search runs; stored with the run."""

    segments: int = 40  # U, the paper's number of bit segments for the training-set selection
    proposals: int = 5  # q new configurations per round
    encoding: str = DEFAULT_ENCODING  # GP input encoding (see coa_lora.surrogate; chosen by held-out comparison)
    # Defaults sized so one round on SmolLM2 (210 matrices, 50 initial configurations) takes ~8 s on one CPU thread
    # (bench/search_round.py); starts=4, moves=25, all neighbours and 64 samples took > 4 minutes there.
    starts: int = 2  # local searches per proposal, from the best-scoring candidates
    moves: int = 8  # T: accepted moves per local search at most
    raw_samples: int = 64  # random perturbations of the training set scored when choosing starts
    mc_samples: int = 32  # quasi-MC samples of the GP posterior in qLogEHVI
    ref_margin: float = 0.1  # reference point = worst observed value minus this fraction of the observed range
    max_neighbours: int | None = 256  # neighbours sampled per move (None: all ≤ 10·N; 2,100 on SmolLM2)
    chunk: int = 1024  # candidates per batched acquisition call (bounds memory)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"SearchSettings.encoding must be one of {ENCODINGS}, got {self.encoding!r}.")
        for name in ("segments", "proposals", "starts", "moves", "raw_samples", "mc_samples", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"SearchSettings.{name} must be >= 1, got {getattr(self, name)}.")
        if self.max_neighbours is not None and self.max_neighbours < 1:
            raise ValueError(f"SearchSettings.max_neighbours must be >= 1 or None (all), got {self.max_neighbours}.")
        if self.ref_margin <= 0:
            raise ValueError(f"SearchSettings.ref_margin must be > 0, got {self.ref_margin}.")


def _check_finite(loss: torch.Tensor) -> None:
    if not torch.isfinite(loss).all():
        raise ValueError(f"A configuration's f1 is not finite ({loss.tolist()}): the adapter has diverged.")


def avg_bits(X: torch.Tensor, layout: ModelLayout) -> torch.Tensor:
    """``(...)`` float64 average bits of ``(..., N)`` option indices (numel-weighted, as ModelConfig.avg_bits)."""
    w = layout.numels.double()
    return (OPTION_BITS.to(X.device)[X.round().long()] * (w / w.sum()).to(X.device)).sum(-1)


def keys(X: torch.Tensor) -> list[tuple[int, ...]]:
    """Hashable keys of ``(n, N)`` option indices."""
    return [tuple(r) for r in X.tolist()]


@dataclass
class SearchState:
    """Every configuration evaluated in a run, the current training set, and per-round hypervolumes and timings.

    Three stable, pandas-ready tables (lists of flat dicts; ``to_dict`` / ``from_dict`` round-trip them as JSON):

    - ``pool``: one row per distinct configuration: ``id, round`` (first evaluated), ``source`` (initial / search /
      random), ``avg_bits``, ``f1`` (latest measurement), ``f1_round`` (the round whose selection it was measured
      for), ``options`` (N indices into ALL_OPTIONS).
    - ``history``: one row per configuration per round after that round's selection: ``round, id, source, avg_bits,
      f1, f1_round, segment, selected``: what the dashboard animates.
    - ``rounds``: one row per round: ``round, mode, n_pool, n_train, n_new, hv_pool, hv_train`` and ``seconds_*``.

    Hypervolumes are in ``plane`` (fixed from the initial set); segments span ``plane.bits_range``. Round ``round`` is
    open (proposed, not all evaluated or not yet selected) while ``len(rounds) == round``; its proposals wait in
    ``pending``. ``keep_initial`` (the ``frozen`` ablation) trains on the initial set whatever the fronts say.
    """

    layout: ModelLayout
    settings: SearchSettings
    plane: HypervolumePlane
    pool: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)
    round: int = 0
    selected: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    keep_initial: bool = False
    pending: list[dict] = field(default_factory=list)  # {"options": [...], "source": ...} proposed, not evaluated
    pending_mode: str = ""
    pending_timings: dict = field(default_factory=dict)

    @classmethod
    def start(cls, layout: ModelLayout, initial: Sequence[ModelConfig], evaluate: Evaluate,
              settings: SearchSettings = SearchSettings(), plane: HypervolumePlane | None = None,
              keep_initial: bool = False) -> SearchState:
        """Evaluate the initial set (duplicates dropped), fix the hypervolume plane from it, select, log round 0."""
        import time

        t0 = time.perf_counter()
        first: dict[tuple[int, ...], torch.Tensor] = {}
        for c in initial:  # the allocator can return one configuration for neighbouring budgets: keep one copy
            first.setdefault(tuple(c.option_indices().tolist()), c.option_indices())
        if len(first) < 2:
            raise ValueError(f"The search needs at least 2 distinct initial configurations, got {len(first)} (the "
                             f"allocator can map neighbouring budgets to one configuration): give more budgets.")
        X = torch.stack(list(first.values()))
        loss = torch.as_tensor([float(v) for v in evaluate([ModelConfig.from_option_indices(layout, x) for x in X])],
                               dtype=torch.float64)
        plane = plane or HypervolumePlane.from_points(avg_bits(X, layout), loss, settings.ref_margin)
        state = cls(layout, settings, plane, keep_initial=keep_initial)
        state.add(X, loss, "initial")
        state.close_round("initial", len(X), {"seconds_evaluate": time.perf_counter() - t0})
        return state

    # ----- tensors of the pool ------------------------------------------------------------------------------------
    @property
    def X(self) -> torch.Tensor:
        """``(n, N)`` int64 option indices of every evaluated configuration, in id order."""
        if not self.pool:
            return torch.zeros(0, len(self.layout), dtype=torch.int64)
        return torch.tensor([r["options"] for r in self.pool], dtype=torch.int64)

    @property
    def loss(self) -> torch.Tensor:
        """``(n,)`` float64 latest f1 of each configuration."""
        return torch.tensor([r["f1"] for r in self.pool], dtype=torch.float64)

    @property
    def bits(self) -> torch.Tensor:
        return torch.tensor([r["avg_bits"] for r in self.pool], dtype=torch.float64)

    @property
    def round_open(self) -> bool:
        """True between a round's proposal and its selection (a run killed there finishes the round on resume)."""
        return len(self.rounds) == self.round

    def training_set(self) -> list[ModelConfig]:
        """The configurations the adapter trains on next (segment-wise Pareto selection)."""
        return [ModelConfig.from_option_indices(self.layout, r["options"])
                for r, s in zip(self.pool, self.selected.tolist()) if s]

    # ----- updates ------------------------------------------------------------------------------------------------
    def add(self, X: torch.Tensor, loss: torch.Tensor, source: str) -> None:
        """Record evaluated configurations ``(n, N)`` with their ``(n,)`` f1 in the current round."""
        if source not in SOURCES:
            raise ValueError(f"Unknown configuration source {source!r}; choose one of {SOURCES}.")
        loss = torch.as_tensor(loss, dtype=torch.float64)
        new = keys(X)
        if len(set(new)) < len(new) or set(new) & set(keys(self.X)):
            raise ValueError("This configuration was already evaluated; the search never proposes duplicates.")
        _check_finite(loss)  # before anything is recorded: a resume must not find it saved
        for x, v, b in zip(X.tolist(), loss.tolist(), avg_bits(X, self.layout).tolist()):
            self.pool.append({"id": len(self.pool), "round": self.round, "source": source, "avg_bits": b,
                              "f1": float(v), "f1_round": self.round, "options": x})
        self.selected = torch.cat([self.selected, torch.zeros(len(X), dtype=torch.bool)])

    def refresh(self, evaluate: Evaluate, which: str = "train", for_round: int | None = None) -> None:
        """Re-measure f1 of the training set (``"train"``) or of the whole pool (``"pool"``) with the current
        adapter, so the GP and the selection compare losses of the same adapter. ``for_round``: the round the new
        values are measured for (default: the current one)."""
        if which not in ("train", "pool"):
            raise ValueError(f"refresh re-measures 'train' (the training set) or 'pool' (every configuration), "
                             f"got {which!r}.")
        ids = [i for i, s in enumerate(self.selected.tolist()) if s or which == "pool"]
        losses = torch.as_tensor([float(v) for v in evaluate(
            [ModelConfig.from_option_indices(self.layout, self.pool[i]["options"]) for i in ids])])
        _check_finite(losses)
        for i, v in zip(ids, losses):
            self.pool[i]["f1"], self.pool[i]["f1_round"] = float(v), self.round if for_round is None else for_round

    def close_round(self, mode: str, n_new: int, timings: dict, select: bool = True) -> dict:
        """Segment-wise selection over the pool (``select=False``: keep the current training set, as the final
        measurement does), then log the round's history rows and hypervolumes."""
        selected, segments = segment_select(self.bits, self.loss, self.settings.segments, self.plane.bits_range)
        if self.keep_initial:
            selected = torch.tensor([r["source"] == "initial" for r in self.pool], dtype=torch.bool)
        if select:
            self.selected = selected
        selected = self.selected
        for r, s, u in zip(self.pool, selected.tolist(), segments.tolist()):
            self.history.append({"round": self.round, "id": r["id"], "source": r["source"], "avg_bits": r["avg_bits"],
                                 "f1": r["f1"], "f1_round": r["f1_round"], "segment": u, "selected": s})
        row = {"round": self.round, "mode": mode, "n_pool": len(self.pool), "n_train": int(selected.sum()),
               "n_new": n_new, "hv_pool": self.plane.hypervolume(self.bits, self.loss),
               "hv_train": self.plane.hypervolume(self.bits[selected], self.loss[selected]),
               **dict.fromkeys(TIMINGS, 0.0), **timings}  # every row has every timing column
        self.rounds.append(row)
        self.pending, self.pending_mode, self.pending_timings = [], "", {}
        return row

    # ----- tables and persistence ---------------------------------------------------------------------------------
    def pool_frame(self):
        import pandas as pd

        return pd.DataFrame(self.pool)

    def history_frame(self):
        import pandas as pd

        return pd.DataFrame(self.history)

    def rounds_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rounds)

    def to_dict(self) -> dict:
        return {"format_version": STATE_VERSION, "model": self.layout.model_id, "targets": list(self.layout.names),
                "settings": asdict(self.settings), "plane": self.plane.to_dict(), "round": self.round,
                "selected": self.selected.tolist(), "keep_initial": self.keep_initial, "pending": self.pending,
                "pending_mode": self.pending_mode, "pending_timings": self.pending_timings, "pool": self.pool,
                "history": self.history, "rounds": self.rounds}

    @classmethod
    def from_dict(cls, d: dict, layout: ModelLayout) -> SearchState:
        if d.get("format_version") != STATE_VERSION:
            raise ValueError(f"Unsupported search state format_version {d.get('format_version')!r}; this version "
                             f"reads {STATE_VERSION}.")
        if tuple(d["targets"]) != layout.names:
            raise ValueError("This search state belongs to a different model (its target matrices differ).")
        return cls(layout, SearchSettings(**d["settings"]), HypervolumePlane.from_dict(d["plane"]),
                   [dict(r) for r in d["pool"]], [dict(r) for r in d["history"]], [dict(r) for r in d["rounds"]],
                   int(d["round"]), torch.tensor(d["selected"], dtype=torch.bool), bool(d.get("keep_initial", False)),
                   [dict(p) for p in d.get("pending", [])], str(d.get("pending_mode", "")),
                   dict(d.get("pending_timings", {})))
