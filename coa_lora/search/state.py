"""The record of a configuration search: every evaluated configuration, the training set, per-round hypervolumes.

A :class:`SearchState` is what a run keeps on disk (``search.json``) and what the dashboard reads: three flat,
pandas-ready tables (pool, history, rounds) plus the open round's pending proposals, so a run killed in the middle of
a round resumes with every configuration it had already evaluated. :mod:`coa_lora.search.rounds` runs the rounds.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields

import torch

from coa_lora.configs.model_config import ModelConfig, ModelLayout
from coa_lora.search.pareto import HypervolumePlane, segment_select
from coa_lora.search.surrogate import DEFAULT_ENCODING, ENCODINGS, OPTION_BITS

STATE_VERSION = 1
SOURCES = ("initial", "search", "random")
# Hypervolume is also reported over configurations of at least this many bits: an initial set that reaches lower
# (the paper's 2.25) would otherwise let one collapsed low-bit configuration move the headline number.
REPORT_MIN_BITS = 2.5
# An allocation at budget b sits a hair below b (2.4999989 for 2.5): bit-range checks allow this much below
# their low end.
BUDGET_SLACK = 5e-3
TIMINGS = ("seconds_fit", "seconds_acquisition", "seconds_evaluate", "seconds_refresh")
Evaluate = Callable[[Sequence[ModelConfig]], Sequence[float]]


@dataclass(frozen=True)
class SearchSettings:
    """How the search runs; stored with the run."""

    segments: int = 10  # U, bit segments of the training-set selection (the paper: 40 for 50 initial configurations)
    proposals: int = 5  # q new configurations per round, each in its own segment (empty segments first)
    encoding: str = DEFAULT_ENCODING  # GP input encoding (see coa_lora.search.surrogate; chosen on real SmolLM2 pools)
    # Candidates (coa_lora.search.candidates): the allocator grid over the plane at ``grid_step`` bits,
    # ``perturbations`` perturbed copies of each grid configuration, ``recombinations`` children of neighbouring pool
    # configurations.
    grid_step: float = 0.05
    perturbations: int = 1
    recombinations: int = 64
    max_changes: int = 4  # matrices a perturbation moves, at most
    # Local search around each chosen candidate, inside its segment: at most ``moves`` accepted moves, each scoring
    # ``max_neighbours`` single-field steps, ``swaps`` bits-neutral swaps and every group move (block or kind).
    moves: int = 8
    max_neighbours: int | None = 256  # None: all ≤ 10·N (2,100 on SmolLM2)
    swaps: int = 64
    # An empty segment's best candidate is preferred while its EHVI is at least this fraction of the best allowed.
    empty_preference: float = 0.1
    mc_samples: int = 32  # quasi-MC samples of the GP posterior in qLogEHVI
    # Training-set configurations re-measured before a round, at most (see SearchState.refresh): with 4 probe
    # windows one measurement costs ~1/6 of a training step on SmolLM2, so 12 + q = 5 proposals stay under 5 steps.
    refresh_limit: int | None = 12
    # The plane's reference corner lies this fraction of each axis's range beyond the initial set's worst point; the
    # acquisition measures improvement against the same corner (search.reference_point).
    ref_margin: float = 0.1
    chunk: int = 1024  # candidates per batched acquisition call (bounds memory)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"SearchSettings.encoding must be one of {ENCODINGS}, got {self.encoding!r}.")
        for name in ("segments", "proposals", "moves", "mc_samples", "chunk", "max_changes"):
            if getattr(self, name) < 1:
                raise ValueError(f"SearchSettings.{name} must be >= 1, got {getattr(self, name)}.")
        if self.refresh_limit is not None and self.refresh_limit < 2:
            raise ValueError(f"SearchSettings.refresh_limit must be >= 2 or None (all), got {self.refresh_limit}.")
        if self.max_neighbours is not None and self.max_neighbours < 1:
            raise ValueError(f"SearchSettings.max_neighbours must be >= 1 or None (all), got {self.max_neighbours}.")
        for name in ("perturbations", "recombinations", "swaps"):
            if getattr(self, name) < 0:
                raise ValueError(f"SearchSettings.{name} must be >= 0, got {getattr(self, name)}.")
        if not self.grid_step > 0:
            raise ValueError(f"SearchSettings.grid_step must be > 0 bits, got {self.grid_step}.")
        if not 0 <= self.empty_preference <= 1:
            raise ValueError(f"SearchSettings.empty_preference must be in [0, 1], got {self.empty_preference}.")
        if self.ref_margin <= 0:
            raise ValueError(f"SearchSettings.ref_margin must be > 0, got {self.ref_margin}.")


def _check_finite(loss: torch.Tensor) -> None:
    if not torch.isfinite(loss).all():
        raise ValueError(f"A configuration's f1 is not finite ({loss.tolist()}): the adapter has diverged.")


def avg_bits(X: torch.Tensor, layout: ModelLayout) -> torch.Tensor:
    """``(...)`` float64 average bits of ``(..., N)`` option indices (numel-weighted, as ModelConfig.avg_bits)."""
    w = layout.numels.double()
    return (OPTION_BITS.to(X.device)[X.round().long()] * (w / w.sum()).to(X.device)).sum(-1)


def shift_at(bits: torch.Tensor, known_bits: torch.Tensor, known_shift: torch.Tensor) -> torch.Tensor:
    """``(m,)`` f1 change at ``(m,)`` average bits, interpolated linearly from ``(k,)`` measured changes at
    ``known_bits`` (flat beyond the ends; the mean of configurations measured at equal bits)."""
    import numpy as np

    kb, ks = known_bits.double().numpy(), known_shift.double().numpy()
    uniq, inverse = np.unique(kb, return_inverse=True)
    mean = np.bincount(inverse, weights=ks) / np.bincount(inverse)
    return torch.from_numpy(np.interp(bits.double().numpy(), uniq, mean))


def within(bits: torch.Tensor, bits_range: tuple[float, float]) -> torch.Tensor:
    """``(n,)`` bool: which of ``(n,)`` average bits lie in ``bits_range`` (with :data:`BUDGET_SLACK` below it)."""
    lo, hi = bits_range
    return (bits >= lo - BUDGET_SLACK) & (bits <= hi + 1e-9)


def keys(X: torch.Tensor) -> list[tuple[int, ...]]:
    """Hashable keys of ``(n, N)`` option indices."""
    return [tuple(r) for r in X.tolist()]


@dataclass
class SearchState:
    """Every configuration evaluated in a run, the current training set, and per-round hypervolumes and timings.

    Three stable, pandas-ready tables (lists of flat dicts; ``to_dict`` / ``from_dict`` round-trip them as JSON):

    - ``pool``: one row per distinct configuration: ``id, round`` (first evaluated), ``source`` (initial / search /
      random), ``avg_bits``, ``f1`` (latest value), ``f1_round`` (the round whose selection it was last measured
      for), ``f1_estimated`` (moved by the training set's measured change since, see :meth:`refresh`), ``options``
      (N indices into ALL_OPTIONS); proposals of the search also ``candidate`` (grid / perturbation / recombination /
      start), ``predicted_f1`` and ``predicted_sd`` (the GP's posterior when proposed), ``measured_f1`` (f1 when
      first measured), ``distance_bits`` (average-bits distance to the nearest configuration in the pool then) and
      ``changed_matrices`` (matrices differing from the nearest pool configuration).
    - ``history``: one row per configuration per round after that round's selection: ``round, id, source, avg_bits,
      f1, f1_round, f1_estimated, segment, selected``: what the dashboard animates.
    - ``rounds``: one row per round: ``round, mode, n_pool, n_train, n_new, hv_pool, hv_train, hv_train_2.5``
      (training set restricted to ≥ 2.5 bits), ``seconds_*`` and, for search rounds, ``gp`` (fitted hyperparameters).

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
    def add(self, X: torch.Tensor, loss: torch.Tensor, source: str, info: Sequence[dict] | None = None) -> None:
        """Record evaluated configurations ``(n, N)`` with their ``(n,)`` f1 in the current round; ``info``: one dict
        per configuration of extra pool columns (a proposal's prediction, distance to the pool, candidate kind)."""
        if source not in SOURCES:
            raise ValueError(f"Unknown configuration source {source!r}; choose one of {SOURCES}.")
        loss = torch.as_tensor(loss, dtype=torch.float64)
        new = keys(X)
        if len(set(new)) < len(new) or set(new) & set(keys(self.X)):
            raise ValueError("This configuration was already evaluated; the search never proposes duplicates.")
        _check_finite(loss)  # before anything is recorded: a resume must not find it saved
        info = info or [{}] * len(new)
        for x, v, b, extra in zip(X.tolist(), loss.tolist(), avg_bits(X, self.layout).tolist(), info):
            self.pool.append({"id": len(self.pool), "round": self.round, "source": source, "avg_bits": b,
                              "f1": float(v), "f1_round": self.round, "f1_estimated": False, "options": x, **extra})
        self.selected = torch.cat([self.selected, torch.zeros(len(X), dtype=torch.bool)])

    def refresh(self, evaluate: Evaluate, which: str = "train", for_round: int | None = None,
                limit: int | None = None) -> None:
        """Re-measure f1 with the current adapter, so the GP, the selection and the hypervolumes compare losses of
        one adapter. ``which="pool"``: every configuration. ``which="train"``: the training set only; every other
        configuration's f1 moves by the change measured on the training set at its average bits (linear in bits
        between re-measured configurations, flat beyond them; configurations beyond the plane's reference loss are
        no anchors) and is flagged ``f1_estimated``.

        Why "train" is enough: between rounds the adapter's effect is a smooth function of bits. On the SmolLM2
        reference run (24 steps, 3 rounds), the change of f1 of configurations within 0.1 bits of each other agreed
        to ~0.005 while rounds moved f1 by 0.02–0.2 (6 at 2.5 bits), and in 17 cases no configuration outside the
        training set re-entered it after a full re-measurement. The training set is what the next epoch trains on
        and what the hypervolume reports, so it is always measured; the rest only informs the GP.

        ``for_round``: the round the new values are measured for (default: the current one). ``limit``: measure at
        most this many configurations of the training set, evenly spread over its bits (the rest are estimated like
        the pool), which bounds a round's cost however large the training set grows."""
        if which not in ("train", "pool"):
            raise ValueError(f"refresh re-measures 'train' (the training set) or 'pool' (every configuration), "
                             f"got {which!r}.")
        ids = [i for i, s in enumerate(self.selected.tolist()) if s or which == "pool"]
        if limit is not None and len(ids) > limit:
            by_bits = sorted(ids, key=lambda i: self.pool[i]["avg_bits"])
            ids = sorted({by_bits[k] for k in torch.linspace(0, len(ids) - 1, limit).round().long().tolist()})
        losses = torch.as_tensor([float(v) for v in evaluate(
            [ModelConfig.from_option_indices(self.layout, self.pool[i]["options"]) for i in ids])],
            dtype=torch.float64)
        _check_finite(losses)
        before = torch.tensor([self.pool[i]["f1"] for i in ids], dtype=torch.float64)
        for i, v in zip(ids, losses.tolist()):
            r = self.pool[i]
            r["f1"], r["f1_round"], r["f1_estimated"] = v, self.round if for_round is None else for_round, False
        rest = sorted(set(range(len(self.pool))) - set(ids))
        if rest and ids:
            # A configuration beyond the plane's reference loss (collapsed) moves by amounts its neighbours never do
            # (13.0 -> 8.3 at 2.5 bits while 3.03 bits moved by -0.2): interpolated, its change once put a 2.73-bit
            # configuration at 2.95, far below every measured loss. Only usable configurations are anchors.
            usable = torch.maximum(losses, before) <= self.plane.corner()[1]
            anchors = usable if bool(usable.any()) else torch.ones_like(usable)
            shift = shift_at(self.bits[rest], self.bits[ids][anchors], (losses - before)[anchors])
            for i, d in zip(rest, shift.tolist()):
                self.pool[i]["f1"] += d
                self.pool[i]["f1_estimated"] = True

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
                                 "f1": r["f1"], "f1_round": r["f1_round"], "f1_estimated": r.get("f1_estimated", False),
                                 "segment": u, "selected": s})
        above = self.bits >= REPORT_MIN_BITS - BUDGET_SLACK
        row = {"round": self.round, "mode": mode, "n_pool": len(self.pool), "n_train": int(selected.sum()),
               "n_new": n_new, "hv_pool": self.plane.hypervolume(self.bits, self.loss),
               "hv_train": self.plane.hypervolume(self.bits[selected], self.loss[selected]),
               f"hv_train_{REPORT_MIN_BITS:g}": self.plane.hypervolume(self.bits[selected & above],
                                                                       self.loss[selected & above]),
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
        known = {f.name for f in fields(SearchSettings)}  # settings retired since (starts, raw_samples) are dropped
        settings = SearchSettings(**{k: v for k, v in d["settings"].items() if k in known})
        return cls(layout, settings, HypervolumePlane.from_dict(d["plane"]),
                   [dict(r) for r in d["pool"]], [dict(r) for r in d["history"]], [dict(r) for r in d["rounds"]],
                   int(d["round"]), torch.tensor(d["selected"], dtype=torch.bool), bool(d.get("keep_initial", False)),
                   [dict(p) for p in d.get("pending", [])], str(d.get("pending_mode", "")),
                   dict(d.get("pending_timings", {})))
