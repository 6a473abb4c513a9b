"""Pareto-based configuration search (METHOD.md §6): which configurations the adapter trains on.

Each round fits a GP to f1 (the adapter's loss under a configuration, measured on a fixed probe set) over every
configuration evaluated so far, maximises qLogEHVI over (−loss, −bits) on the discrete option lattice, evaluates the
q proposals for real, and re-selects the training set segment-wise (:func:`coa_lora.pareto.segment_select`).

    state = SearchState.start(layout, initial_configs, evaluate, SearchSettings(segments=40, proposals=5))
    for _ in range(rounds):
        train_one_epoch(state.training_set())
        search_round(state, evaluate)            # or mode="random" / "frozen" for the ablation
    state.history_frame()                         # one row per (round, configuration)

``evaluate(configs) -> losses`` is any callable: the real adapter loss, or a synthetic objective in tests.
Configurations are ``(N,)`` option indices into :data:`~coa_lora.space.ALL_OPTIONS` throughout; :class:`SearchState`
turns them back into :class:`~coa_lora.config.ModelConfig`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch
from botorch.acquisition.multi_objective.logei import qLogExpectedHypervolumeImprovement
from botorch.models import ModelList
from botorch.models.deterministic import GenericDeterministicModel
from botorch.models.model import Model
from botorch.posteriors.gpytorch import GPyTorchPosterior
from botorch.sampling import ListSampler, SobolQMCNormalSampler, StochasticSampler
from botorch.utils.multi_objective.box_decompositions.non_dominated import FastNondominatedPartitioning
from gpytorch.distributions import MultivariateNormal
from linear_operator.operators import DiagLinearOperator

from .config import ModelConfig, ModelLayout
from .pareto import HypervolumePlane, segment_select
from .progress import ProgressFn, report
from .space import ALL_OPTIONS, FIELD_VALUES
from .surrogate import DEFAULT_ENCODING, ENCODINGS, OPTION_BITS, fit_surrogate

STATE_VERSION = 1
SOURCES = ("initial", "search", "random")
MODES = ("search", "random", "frozen")
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
    max_neighbours: Optional[int] = 256  # neighbours sampled per move (None: all ≤ 10·N; 2,100 on SmolLM2)
    chunk: int = 1024  # candidates per batched acquisition call (bounds memory)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"SearchSettings.encoding must be one of {ENCODINGS}, got {self.encoding!r}.")
        for name in ("segments", "proposals", "starts", "moves", "mc_samples", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"SearchSettings.{name} must be >= 1, got {getattr(self, name)}.")
        if self.ref_margin <= 0:
            raise ValueError(f"SearchSettings.ref_margin must be > 0, got {self.ref_margin}.")


def _step_table() -> torch.Tensor:
    """``(432, 10)`` int64: the option one ordinal step down/up in each field (−1 where the field is at its end).

    Options are enumerated lexicographically over the fields, so a step in field f moves the index by that field's
    stride."""
    sizes = [len(v) for v in FIELD_VALUES.values()]
    strides = [1] * len(sizes)
    for f in range(len(sizes) - 2, -1, -1):
        strides[f] = strides[f + 1] * sizes[f + 1]
    table = torch.full((len(ALL_OPTIONS), 2 * len(sizes)), -1, dtype=torch.int64)
    for k, option in enumerate(ALL_OPTIONS):
        for f, o in enumerate(option.ordinals()):
            for s, d in enumerate((-1, 1)):
                if 0 <= o + d < sizes[f]:
                    table[k, 2 * f + s] = k + d * strides[f]
    return table


STEPS = _step_table()


def neighbours(x: torch.Tensor, max_neighbours: Optional[int] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The configurations one option-field step away from ``x`` (the paper's coordinate moves).

    Args:
        x: ``(N,)`` option indices.
        max_neighbours: keep a uniform random subset of this size (SmolLM2 has ≤ 2,100 neighbours: all fit in two
            batched acquisition calls, but SearchSettings samples 256 per move to keep a round near 8 s).

    Returns:
        ``(M, N)`` int64, M ≤ 10·N.
    """
    steps = STEPS[x]
    i, m = torch.nonzero(steps >= 0, as_tuple=True)
    if max_neighbours is not None and len(i) > max_neighbours:
        keep = torch.randperm(len(i), generator=generator)[:max_neighbours]
        i, m = i[keep], m[keep]
    out = x.repeat(len(i), 1)
    out[torch.arange(len(i)), i] = steps[i, m]
    return out


def avg_bits(X: torch.Tensor, layout: ModelLayout) -> torch.Tensor:
    """``(...)`` float64 average bits of ``(..., N)`` option indices (numel-weighted, as ModelConfig.avg_bits)."""
    w = layout.numels.double()
    return (OPTION_BITS.to(X.device)[X.round().long()] * (w / w.sum()).to(X.device)).sum(-1)


class MarginalGP(Model):
    """A fitted single-output GP seen one candidate at a time: ``b x 1 x N`` inputs → independent marginals.

    Scoring b candidates with q = 1 as a ``b``-batch makes gpytorch copy the training inputs once per batch element
    (b × n × 5N values: ~0.9 GB per call for 2,100 neighbours on SmolLM2). Asking the GP for the b points as one
    non-batched set and keeping only the variances gives the same marginals at O(b·n·5N) cost.
    """

    def __init__(self, gp: Model) -> None:
        super().__init__()
        self.gp = gp

    @property
    def num_outputs(self) -> int:
        return 1

    def posterior(self, X, output_indices=None, observation_noise=False, posterior_transform=None):
        if X.shape[-2] != 1:
            raise ValueError(f"MarginalGP scores one point per batch element (q = 1), got q = {X.shape[-2]}.")
        post = self.gp.posterior(X.reshape(-1, X.shape[-1]), observation_noise=observation_noise)
        mean, var = post.mean.reshape(*X.shape[:-2], 1), post.variance.reshape(*X.shape[:-2], 1)
        return GPyTorchPosterior(MultivariateNormal(mean, DiagLinearOperator(var.clamp_min(1e-12))))


def fit_models(X: torch.Tensor, loss: torch.Tensor, layout: ModelLayout, settings: SearchSettings) -> ModelList:
    """Two separate models over ``(..., N)`` option indices: a GP for −loss, the exact −bits (never learned)."""
    gp = fit_surrogate(X.double(), -loss.double(), settings.encoding, seed=settings.seed)
    bits_model = GenericDeterministicModel(lambda Z: -avg_bits(Z, layout).unsqueeze(-1), num_outputs=1)
    return ModelList(MarginalGP(gp), bits_model)


def reference_point(Y: torch.Tensor, margin: float) -> torch.Tensor:
    """``(2,)``: the observed worst of each objective of ``(n, 2)`` maximised ``Y`` minus ``margin`` × its range, so
    every observation dominates it (a reference dominated by nothing makes every improvement zero)."""
    span = (Y.max(0).values - Y.min(0).values).clamp_min(1e-6)
    return Y.min(0).values - margin * span


def acquisition(models: ModelList, Y: torch.Tensor, ref: torch.Tensor,
                settings: SearchSettings) -> qLogExpectedHypervolumeImprovement:
    """qLogEHVI of one new point over the front of ``(n, 2)`` maximised ``Y`` = (−loss, −bits)."""
    sampler = ListSampler(SobolQMCNormalSampler(torch.Size([settings.mc_samples]), seed=settings.seed),
                          StochasticSampler(torch.Size([settings.mc_samples])))  # the bits model has no noise
    return qLogExpectedHypervolumeImprovement(
        models, ref.tolist(), FastNondominatedPartitioning(ref_point=ref, Y=Y), sampler=sampler)


def _values(acqf, X: torch.Tensor, chunk: int) -> torch.Tensor:
    """``(M,)`` acquisition value of each of ``(M, N)`` candidates, in batched calls of ``chunk``."""
    with torch.no_grad():
        return torch.cat([acqf(c.double().unsqueeze(-2)) for c in X.split(chunk)])


def _keys(X: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(r) for r in X.tolist()]


def local_search(acqf, start: torch.Tensor, excluded: set, settings: SearchSettings,
                 generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Steepest-ascent coordinate search on the option lattice.

    Every move scores all (or ``max_neighbours``) single-field neighbours in batched calls and takes the best one only
    if it improves; configurations in ``excluded`` score −inf, so an evaluated start always moves at least once.
    Stops at a local optimum or after ``settings.moves`` moves.

    Returns:
        ``((N,) option indices, value)``; value is −inf when no admissible configuration was found.
    """
    x = start
    v = float("-inf") if tuple(x.tolist()) in excluded else float(_values(acqf, x[None], 1)[0])
    for _ in range(settings.moves):
        nb = neighbours(x, settings.max_neighbours, generator)
        vals = _values(acqf, nb, settings.chunk)
        vals[torch.tensor([k in excluded for k in _keys(nb)], dtype=torch.bool)] = float("-inf")
        j = int(vals.argmax())
        if not float(vals[j]) > v:
            break
        x, v = nb[j], float(vals[j])
    return x, v


def _start_candidates(train: torch.Tensor, settings: SearchSettings, generator: torch.Generator) -> torch.Tensor:
    """The training set plus ``raw_samples`` copies of random members with 1–3 matrices set to random options."""
    n, N = train.shape
    pick = torch.randint(n, (settings.raw_samples,), generator=generator)
    raw = train[pick].clone()
    for r in range(settings.raw_samples):
        k = int(torch.randint(1, 4, (1,), generator=generator))
        raw[r, torch.randperm(N, generator=generator)[:k]] = torch.randint(len(ALL_OPTIONS), (k,), generator=generator)
    return torch.cat([train, raw])


def propose(state: "SearchState", progress: Optional[ProgressFn] = None) -> tuple[torch.Tensor, dict]:
    """q new configurations maximising qLogEHVI, none equal to an evaluated configuration.

    The q points are chosen one after another. Joint q-point EHVI costs 2^q terms per call (measured: 20x slower at
    4 pending points on the tiny model), so each chosen point instead joins the front at its GP posterior mean
    ("kriging believer") and the next point is scored against that front, still one point per call.

    Returns:
        ``((q', N) option indices, timings)`` with q' ≤ q (fewer only if the lattice around the pool is exhausted).
    """
    s = state.settings
    g = torch.Generator().manual_seed(s.seed + 1000 * state.round)
    t0 = time.perf_counter()
    X = state.X
    models = fit_models(X, state.loss, state.layout, s)
    t1 = time.perf_counter()
    Y = torch.stack([-state.loss, -avg_bits(X, state.layout)], dim=-1)
    ref = reference_point(Y, s.ref_margin)
    excluded = set(_keys(X))
    candidates = _start_candidates(X[state.selected], s, g)
    chosen: list[torch.Tensor] = []
    for j in range(s.proposals):
        acqf = acquisition(models, Y, ref, s)
        scores = _values(acqf, candidates, s.chunk)
        best, best_v = None, float("-inf")
        for k in torch.argsort(scores, descending=True)[: s.starts].tolist():
            x, v = local_search(acqf, candidates[k], excluded, s, g)
            if v > best_v:
                best, best_v = x, v
        report(progress, j + 1, s.proposals, "acquisition")
        if best is None:
            break
        chosen.append(best)
        excluded.add(tuple(best.tolist()))
        with torch.no_grad():
            Y = torch.cat([Y, models.posterior(best.double()[None]).mean.reshape(1, 2)])
    timings = {"seconds_fit": t1 - t0, "seconds_acquisition": time.perf_counter() - t1}
    return (torch.stack(chosen) if chosen else X[:0]), timings


def random_proposals(state: "SearchState", n: int, allocate: Optional[Callable[[float], ModelConfig]] = None,
                     max_tries: int = 20) -> torch.Tensor:
    """The ``random`` baseline: ``n`` new configurations not yet evaluated.

    With ``allocate`` (budget → configuration, e.g. ``Allocator.allocate(b).config``) budgets are drawn uniformly over
    the plane's bit range; without it every matrix gets a uniformly random option (average bits then concentrate
    near the middle of the range, so prefer the allocator for the ablation).

    Returns:
        ``(n', N)`` option indices, n' ≤ n (fewer only if ``max_tries`` draws per slot all hit evaluated ones).
    """
    g = torch.Generator().manual_seed(state.settings.seed + 1000 * state.round + 7)
    lo, hi = state.plane.bits_range
    seen, out = set(_keys(state.X)), []
    for _ in range(n):
        for _ in range(max_tries):
            if allocate is not None:
                budget = lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))
                x = allocate(budget).option_indices()
            else:
                x = torch.randint(len(ALL_OPTIONS), (len(state.layout),), generator=g)
            if tuple(x.tolist()) not in seen:
                seen.add(tuple(x.tolist()))
                out.append(x)
                break
    return torch.stack(out) if out else state.X[:0]


@dataclass
class SearchState:
    """Every configuration evaluated in a run, the current training set, and per-round hypervolumes and timings.

    Three stable, pandas-ready tables (lists of flat dicts; ``to_dict`` / ``from_dict`` round-trip them as JSON):

    - ``pool``: one row per distinct configuration: ``id, round`` (first evaluated), ``source`` (initial / search /
      random), ``avg_bits``, ``f1`` (latest measurement), ``f1_round``, ``options`` (N indices into ALL_OPTIONS).
    - ``history``: one row per configuration per round after that round's selection: ``round, id, source, avg_bits,
      f1, segment, selected``: what the dashboard animates.
    - ``rounds``: one row per round: ``round, mode, n_pool, n_train, n_new, hv_pool, hv_train`` and ``seconds_*``.

    Hypervolumes are in ``plane`` (fixed from the initial set); segments span ``plane.bits_range``.
    """

    layout: ModelLayout
    settings: SearchSettings
    plane: HypervolumePlane
    pool: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)
    round: int = 0
    selected: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))

    @classmethod
    def start(cls, layout: ModelLayout, initial: Sequence[ModelConfig], evaluate: Evaluate,
              settings: SearchSettings = SearchSettings(), plane: Optional[HypervolumePlane] = None) -> "SearchState":
        """Evaluate the initial set (duplicates dropped), fix the hypervolume plane from it, select, log round 0."""
        t0 = time.perf_counter()
        first: dict[tuple[int, ...], torch.Tensor] = {}
        for c in initial:  # the allocator can return one configuration for neighbouring budgets: keep one copy
            first.setdefault(tuple(c.option_indices().tolist()), c.option_indices())
        X = torch.stack(list(first.values()))
        loss = torch.as_tensor([float(v) for v in evaluate([ModelConfig.from_option_indices(layout, x) for x in X])],
                               dtype=torch.float64)
        plane = plane or HypervolumePlane.from_points(avg_bits(X, layout), loss, settings.ref_margin)
        state = cls(layout, settings, plane)
        state.add(X, loss, "initial")
        state.close_round("initial", len(X), {"seconds_fit": 0.0, "seconds_acquisition": 0.0,
                                             "seconds_evaluate": time.perf_counter() - t0})
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

    def training_set(self) -> list[ModelConfig]:
        """The configurations the adapter trains on next (segment-wise Pareto selection)."""
        return [ModelConfig.from_option_indices(self.layout, r["options"])
                for r, s in zip(self.pool, self.selected.tolist()) if s]

    # ----- updates ------------------------------------------------------------------------------------------------
    def add(self, X: torch.Tensor, loss: torch.Tensor, source: str) -> None:
        """Record evaluated configurations ``(n, N)`` with their ``(n,)`` f1 in the current round."""
        if source not in SOURCES:
            raise ValueError(f"Unknown configuration source {source!r}; choose one of {SOURCES}.")
        seen = set(_keys(self.X))
        for x, v, b in zip(X.tolist(), torch.as_tensor(loss).tolist(), avg_bits(X, self.layout).tolist()):
            if tuple(x) in seen:
                raise ValueError("This configuration was already evaluated; the search never proposes duplicates.")
            seen.add(tuple(x))
            self.pool.append({"id": len(self.pool), "round": self.round, "source": source, "avg_bits": b,
                              "f1": float(v), "f1_round": self.round, "options": x})
        self.selected = torch.cat([self.selected, torch.zeros(len(X), dtype=torch.bool)])

    def refresh(self, evaluate: Evaluate, which: str = "train") -> None:
        """Re-measure f1 of the training set (``"train"``) or of the whole pool (``"pool"``) with the current
        adapter, so the GP and the selection compare losses of the same adapter."""
        ids = [i for i, s in enumerate(self.selected.tolist()) if s or which == "pool"]
        losses = evaluate([ModelConfig.from_option_indices(self.layout, self.pool[i]["options"]) for i in ids])
        for i, v in zip(ids, losses):
            self.pool[i]["f1"], self.pool[i]["f1_round"] = float(v), self.round

    def close_round(self, mode: str, n_new: int, timings: dict) -> dict:
        """Segment-wise selection over the pool, then log the round's history rows and hypervolumes."""
        selected, segments = segment_select(self.bits, self.loss, self.settings.segments, self.plane.bits_range)
        self.selected = selected
        for r, s, u in zip(self.pool, selected.tolist(), segments.tolist()):
            self.history.append({"round": self.round, "id": r["id"], "source": r["source"], "avg_bits": r["avg_bits"],
                                 "f1": r["f1"], "segment": u, "selected": s})
        row = {"round": self.round, "mode": mode, "n_pool": len(self.pool), "n_train": int(selected.sum()),
               "n_new": n_new, "hv_pool": self.plane.hypervolume(self.bits, self.loss),
               "hv_train": self.plane.hypervolume(self.bits[selected], self.loss[selected]), **timings}
        self.rounds.append(row)
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
                "selected": self.selected.tolist(), "pool": self.pool, "history": self.history, "rounds": self.rounds}

    @classmethod
    def from_dict(cls, d: dict, layout: ModelLayout) -> "SearchState":
        if d.get("format_version") != STATE_VERSION:
            raise ValueError(f"Unsupported search state format_version {d.get('format_version')!r}; this version "
                             f"reads {STATE_VERSION}.")
        if tuple(d["targets"]) != layout.names:
            raise ValueError("This search state belongs to a different model (its target matrices differ).")
        return cls(layout, SearchSettings(**d["settings"]), HypervolumePlane.from_dict(d["plane"]),
                   [dict(r) for r in d["pool"]], [dict(r) for r in d["history"]], [dict(r) for r in d["rounds"]],
                   int(d["round"]), torch.tensor(d["selected"], dtype=torch.bool))


def search_round(state: SearchState, evaluate: Evaluate, mode: str = "search",
                 allocate: Optional[Callable[[float], ModelConfig]] = None,
                 checkpoint: Optional[Callable[[SearchState], None]] = None,
                 progress: Optional[ProgressFn] = None) -> dict:
    """One round: propose (``search``: qLogEHVI; ``random``: :func:`random_proposals`; ``frozen``: nothing), evaluate
    f1 for real, add to the pool, call ``checkpoint`` (so a kill after this point loses no evaluation), re-select.

    Returns:
        The round's row of ``state.rounds``.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown search mode {mode!r}; choose one of {MODES}.")
    state.round += 1
    timings = {"seconds_fit": 0.0, "seconds_acquisition": 0.0}
    if mode == "search":
        X, timings = propose(state, progress)
    elif mode == "random":
        X = random_proposals(state, state.settings.proposals, allocate)
    else:
        X = state.X[:0]
    t0 = time.perf_counter()
    if len(X):
        losses = evaluate([ModelConfig.from_option_indices(state.layout, x) for x in X])
        state.add(X, torch.as_tensor([float(v) for v in losses], dtype=torch.float64), "search" if mode == "search"
                  else "random")
        if checkpoint is not None:
            checkpoint(state)
    timings["seconds_evaluate"] = time.perf_counter() - t0
    return state.close_round(mode, len(X), timings)
