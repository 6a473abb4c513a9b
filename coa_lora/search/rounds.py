"""Pareto-based configuration search (METHOD.md §6): which configurations the adapter trains on.

Each round fits a GP to f1 (the adapter's loss under a configuration, measured on a fixed probe set) over every
configuration evaluated so far, scores candidates that span the plane's bit range (:mod:`coa_lora.search.candidates`:
the allocator's grid, perturbations, recombinations, training-set members) by qLogEHVI over (−loss, −bits), takes q of
them in distinct bit segments (empty segments first), improves each by a local search inside its segment, evaluates
the q proposals for real, and re-selects the training set segment-wise (:func:`coa_lora.search.pareto.segment_select`).

    state = SearchState.start(layout, initial_configs, evaluate, SearchSettings(segments=40, proposals=5))
    for _ in range(rounds):
        train_one_epoch(state.training_set())
        search_round(state, evaluate)            # or mode="random" / "frozen" for the ablation
    state.history_frame()                         # one row per (round, configuration)

``evaluate(configs) -> losses`` is any callable: the real adapter loss, or a synthetic objective in tests.
Configurations are ``(N,)`` option indices into :data:`~coa_lora.quant.space.ALL_OPTIONS` throughout;
:class:`SearchState` (:mod:`coa_lora.search.state`) turns them back into
:class:`~coa_lora.configs.model_config.ModelConfig`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

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

from coa_lora.configs.model_config import ModelConfig, ModelLayout
from coa_lora.progress import ProgressFn, report
from coa_lora.quant.space import ALL_OPTIONS
from coa_lora.search.candidates import STEPS, groups, local_moves, neighbours, perturbations, recombinations
from coa_lora.search.pareto import HypervolumePlane, segment_ids
from coa_lora.search.state import Evaluate, SearchSettings, SearchState, avg_bits, keys, within
from coa_lora.search.surrogate import fit_surrogate, hyperparameters

MODES = ("search", "random", "frozen")
__all__ = ["MODES", "STEPS", "SearchSettings", "SearchState", "avg_bits", "begin_round", "candidate_set",
           "finish_round", "nearest", "neighbours", "propose", "random_proposals", "reference_point", "search_round"]


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


def fit_models(X: torch.Tensor, loss: torch.Tensor, layout: ModelLayout, settings: SearchSettings,
               damage: torch.Tensor | None = None) -> ModelList:
    """Two separate models over ``(..., N)`` option indices: a GP for −loss, the exact −bits (never learned).
    ``damage``: the ``(N, 432)`` damage table, for the ``damage`` encoding."""
    gp = fit_surrogate(X.double(), -loss.double(), settings.encoding, seed=settings.seed, damage=damage,
                       numels=layout.numels)
    bits_model = GenericDeterministicModel(lambda Z: -avg_bits(Z, layout).unsqueeze(-1), num_outputs=1)
    return ModelList(MarginalGP(gp), bits_model)


def reference_point(plane: HypervolumePlane) -> torch.Tensor:
    """``(2,)`` the run's hypervolume reference in the acquisition's maximised ``(−loss, −bits)`` units.

    The search is judged by hypervolume in the run's plane, so it maximises exactly that: improvements are measured
    against the plane's reference corner, beyond its loss cap nothing counts, and observations past the reference drop
    out of the front (BoTorch filters them). With the observed worst as reference (before), a collapsed 2.5-bit
    configuration at loss 15 stretched the acquisition's loss axis to twice the plane's: on SmolLM2 seed 1 it proposed
    a 2.64-bit allocation predicted at loss 8.9, beyond the cap of 7.7, which added nothing to the measured hypervolume.
    """
    bits, loss = plane.corner()
    return torch.tensor([-loss, -bits], dtype=torch.float64)


def _pytorch_path_only() -> None:
    """Keep BoTorch's qLogEHVI on its PyTorch path.

    BoTorch 0.18 compiles a fused C++ kernel with ninja the first time a machine builds the acquisition (48 s measured
    on 2 busy cores, and a compiler needed) to save about 0.1 s per acquisition at our sizes (tiny model: 0.26-0.34 s
    fused, 0.41-0.45 s on the PyTorch path); which path ran would also decide the last digits of every acquisition
    value, so proposals would depend on whether the machine has a compiler. BoTorch has no switch for it: its
    load-once flag is set as if the load had been tried and failed, which is what BoTorch itself does then."""
    from botorch.acquisition.multi_objective import logei

    if getattr(logei, "_C", None) is None:
        logei._load_attempted = True


def acquisition(models: ModelList, Y: torch.Tensor, ref: torch.Tensor,
                settings: SearchSettings) -> qLogExpectedHypervolumeImprovement:
    """qLogEHVI of one new point over the front of ``(n, 2)`` maximised ``Y`` = (−loss, −bits)."""
    _pytorch_path_only()
    sampler = ListSampler(SobolQMCNormalSampler(torch.Size([settings.mc_samples]), seed=settings.seed),
                          StochasticSampler(torch.Size([settings.mc_samples])))  # the bits model has no noise
    return qLogExpectedHypervolumeImprovement(
        models, ref.tolist(), FastNondominatedPartitioning(ref_point=ref, Y=Y), sampler=sampler)


def _values(acqf, X: torch.Tensor, chunk: int) -> torch.Tensor:
    """``(M,)`` acquisition value of each of ``(M, N)`` candidates, in batched calls of ``chunk``."""
    with torch.no_grad():
        return torch.cat([acqf(c.double().unsqueeze(-2)) for c in X.split(chunk)])


def _local_search(acqf, start: torch.Tensor, value: float, segment: int, excluded: set, state: SearchState,
                  groups: list, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Steepest ascent from ``start`` over :func:`~coa_lora.search.candidates.local_moves` that stay in ``segment``.

    Each move scores every sampled single-field step, bits-neutral swap and group move in batched calls and takes
    the best only if it improves; evaluated configurations score −inf. At most ``settings.moves`` moves.

    Returns:
        ``((N,) option indices, value)``.
    """
    s = state.settings
    x, v = start, value
    for _ in range(s.moves):
        nb = local_moves(x, groups, s.max_neighbours, s.swaps, generator)
        nb = nb[in_plane(nb, state) & (segment_ids(avg_bits(nb, state.layout), s.segments,
                                                    state.plane.bits_range) == segment)]
        if len(nb) == 0:
            break
        vals = _values(acqf, nb, s.chunk)
        vals[torch.tensor([k in excluded for k in keys(nb)], dtype=torch.bool)] = float("-inf")
        j = int(vals.argmax())
        if not float(vals[j]) > v:
            break
        x, v = nb[j], float(vals[j])
    return x, v


def candidate_set(state: SearchState, grid: torch.Tensor | None, generator: torch.Generator
                  ) -> tuple[torch.Tensor, list[str]]:
    """The round's candidates (:mod:`coa_lora.search.candidates`), deduplicated, none already evaluated.

    Args:
        grid: ``(G, N)`` the allocator's configurations over the plane (None: no grid candidates).

    Returns:
        ``((M, N) option indices, M candidate kinds)``.
    """
    s = state.settings
    train = state.X[state.selected]
    parts = [("start", perturbations(train, 1, s.max_changes, generator)),
             ("recombination", recombinations(train, avg_bits(train, state.layout), s.recombinations, generator))]
    if grid is not None and len(grid):
        parts = [("grid", grid), ("perturbation", perturbations(grid, s.perturbations, s.max_changes, generator)),
                 *parts]
    seen, rows, kinds = set(keys(state.X)), [], []
    for kind, X in parts:
        X = X[in_plane(X, state)]
        for k, x in zip(keys(X), X):
            if k not in seen:
                seen.add(k)
                rows.append(x)
                kinds.append(kind)
    return (torch.stack(rows) if rows else state.X[:0]), kinds


def in_plane(X: torch.Tensor, state: SearchState) -> torch.Tensor:
    """``(M,)`` bool: which of ``(M, N)`` configurations lie within the plane's bit range. Segments clamp points
    outside it into the end segments, where a configuration below the lowest initial budget wins its segment on bits
    alone: on SmolLM2 such proposals (2.3-2.4 bits) collapsed (probe loss ~21) and still entered the training set."""
    return within(avg_bits(X, state.layout), state.plane.bits_range)


def _choose(values: torch.Tensor, segment: torch.Tensor, used: set, occupied: set, preference: float) -> int | None:
    """Index of the next proposal's candidate: the best in a segment no proposal of this round took, from an empty
    segment while its EHVI is at least ``preference`` × the best allowed one; None if nothing is allowed."""
    allowed = torch.tensor([u not in used for u in segment.tolist()], dtype=torch.bool) & torch.isfinite(values)
    if not bool(allowed.any()):
        return None
    best = float(values[allowed].max())
    empty = allowed & torch.tensor([u not in occupied for u in segment.tolist()], dtype=torch.bool)
    if bool(empty.any()) and float(values[empty].max()) >= best + math.log(max(preference, 1e-300)):
        allowed = empty
    return int(torch.where(allowed, values, torch.tensor(float("-inf"), dtype=values.dtype)).argmax())


def propose(state: SearchState, grid: torch.Tensor | None = None, progress: ProgressFn | None = None,
            damage: torch.Tensor | None = None) -> tuple[torch.Tensor, list[dict], dict]:
    """q new configurations maximising qLogEHVI, each in its own bit segment, none equal to an evaluated one.

    All candidates of :func:`candidate_set` are scored in batched acquisition calls; the best one (empty segments
    first, see :func:`_choose`) is improved by a local search confined to its segment. The q points are chosen one
    after another: joint q-point EHVI costs 2^q terms per call (measured: 20x slower at 4 pending points on the tiny
    model), so each chosen point joins the front at its GP posterior mean ("kriging believer") and the next point is
    scored against that front, still one point per call.

    Returns:
        ``((q', N) option indices, q' info dicts, round log)`` with q' ≤ q (fewer only when every segment is taken
        or no candidate is left). Info: candidate kind, predicted f1 (censored at the plane's reference loss) and its
        sd, bit distance and changed matrices to the nearest pool configuration. Round log: ``seconds_fit``,
        ``seconds_acquisition``, ``gp`` (hyperparameters), ``n_candidates``.
    """
    s = state.settings
    g = torch.Generator().manual_seed(s.seed + 1000 * state.round)
    t0 = time.perf_counter()
    X = state.X
    ref = reference_point(state.plane)
    # The GP learns f1 censored at the reference loss: beyond it every value is worth the same (no area), and one
    # collapsed configuration at 3-4x the others otherwise bends the whole fit (SmolLM2 round 1, the 2.5-bit
    # allocation at 14-16 among nine at 3.8-4.7: its proposals were predicted with RMSE 1.2-1.5, Spearman 0.28-0.55;
    # censored, RMSE 0.10-0.18 and Spearman 0.98 on seeds 0 and 1).
    loss = state.loss.clamp(max=-float(ref[0]))
    models = fit_models(X, loss, state.layout, s, damage)
    t1 = time.perf_counter()
    Y = torch.stack([-loss, -avg_bits(X, state.layout)], dim=-1)
    excluded = set(keys(X))
    candidates, kinds = candidate_set(state, grid, g)
    seg_of = segment_ids(avg_bits(candidates, state.layout), s.segments, state.plane.bits_range)
    occupied = set(segment_ids(state.bits, s.segments, state.plane.bits_range).tolist())
    groups_ = groups(state.layout)
    chosen, info, used = [], [], set()
    for j in range(s.proposals):
        if len(candidates) == 0:
            break
        acqf = acquisition(models, Y, ref, s)
        values = _values(acqf, candidates, s.chunk)
        k = _choose(values, seg_of, used, occupied | used, s.empty_preference)
        if k is None:
            break
        segment, kind = int(seg_of[k]), kinds[k]
        x, _ = _local_search(acqf, candidates[k], float(values[k]), segment, excluded, state, groups_, g)
        report(progress, j + 1, s.proposals, "acquisition")
        with torch.no_grad():
            post = models.models[0].gp.posterior(x.double()[None])
            Y = torch.cat([Y, models.posterior(x.double()[None]).mean.reshape(1, 2)])
        info.append({"candidate": kind, "local_moves": int((x != candidates[k]).sum()),
                     "predicted_f1": -float(post.mean.reshape(-1)[0]),
                     "predicted_sd": float(post.variance.reshape(-1)[0].sqrt()), **nearest(x, X, state.layout)})
        chosen.append(x)
        excluded.add(tuple(x.tolist()))
        used.add(segment)
        keep = torch.tensor([c != tuple(x.tolist()) for c in keys(candidates)], dtype=torch.bool)
        candidates, seg_of, kinds = candidates[keep], seg_of[keep], [c for c, m in zip(kinds, keep.tolist()) if m]
    log = {"seconds_fit": t1 - t0, "seconds_acquisition": time.perf_counter() - t1,
           "gp": hyperparameters(models.models[0].gp), "n_candidates": len(candidates) + len(chosen)}
    return (torch.stack(chosen) if chosen else X[:0]), info, log


def nearest(x: torch.Tensor, X: torch.Tensor, layout: ModelLayout) -> dict:
    """How far ``(N,)`` ``x`` is from the ``(n, N)`` pool: ``distance_bits`` (average-bits distance to the nearest
    configuration) and ``changed_matrices`` (matrices differing from the configuration that differs least)."""
    if len(X) == 0:
        return {"distance_bits": float("nan"), "changed_matrices": len(x)}
    distance = (avg_bits(X, layout) - float(avg_bits(x[None], layout)[0])).abs()
    return {"distance_bits": float(distance.min()), "changed_matrices": int((X != x).sum(-1).min())}


def random_proposals(state: SearchState, n: int, allocate: Callable[[float], ModelConfig] | None = None,
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
    seen, out = set(keys(state.X)), []
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


def begin_round(state: SearchState, mode: str = "search",
                allocate: Callable[[float], ModelConfig] | None = None,
                progress: ProgressFn | None = None, grid: torch.Tensor | None = None,
                damage: torch.Tensor | None = None) -> None:
    """Open the next round: propose (``search``: qLogEHVI over :func:`candidate_set`, with ``grid`` the allocator's
    ``(G, N)`` configurations over the plane and ``damage`` the ``(N, 432)`` damage table the ``damage`` GP encoding
    reads; ``random``: :func:`random_proposals`; ``frozen``: nothing) and park the proposals in ``state.pending``, to
    be saved before any of them is evaluated."""
    if mode not in MODES:
        raise ValueError(f"Unknown search mode {mode!r}; choose one of {MODES}.")
    if state.round_open:
        raise ValueError(f"Round {state.round} is still open; finish it (finish_round) before starting another.")
    state.round += 1
    timings = {"seconds_fit": 0.0, "seconds_acquisition": 0.0}
    if mode == "search":
        X, info, timings = propose(state, grid, progress, damage)
    else:
        X = random_proposals(state, state.settings.proposals, allocate) if mode == "random" else state.X[:0]
        info = [nearest(x, state.X, state.layout) for x in X]
    source = "search" if mode == "search" else "random"
    state.pending = [{"options": x, "source": source, "info": i} for x, i in zip(X.tolist(), info)]
    state.pending_mode, state.pending_timings = mode, timings


def finish_round(state: SearchState, evaluate: Evaluate, checkpoint: Callable[[SearchState], None] | None = None,
                 progress: ProgressFn | None = None) -> dict:
    """Evaluate the open round's pending proposals one by one for real, adding each to the pool and calling
    ``checkpoint`` after each (a kill loses at most the evaluation in flight), then re-select the training set.

    Returns:
        The round's row of ``state.rounds``.
    """
    if not state.round_open:
        raise ValueError("No search round is open; begin_round first.")
    t0 = time.perf_counter()
    before = state.pending_timings.get("seconds_evaluate", 0.0)  # evaluation time spent before a kill
    seen = set(keys(state.X))
    todo = [p for p in state.pending if tuple(p["options"]) not in seen]  # a resumed round skips what it has
    done = len(state.pending) - len(todo)
    for i, p in enumerate(todo):
        x = torch.tensor([p["options"]], dtype=torch.int64)
        loss = float(evaluate([ModelConfig.from_option_indices(state.layout, x[0])])[0])
        state.add(x, torch.tensor([loss], dtype=torch.float64), p["source"],
                  [{**p.get("info", {}), "measured_f1": loss}])
        state.pending_timings["seconds_evaluate"] = before + time.perf_counter() - t0
        if checkpoint is not None:
            checkpoint(state)
        report(progress, done + i + 1, len(state.pending), "evaluating proposals")
    timings = {**state.pending_timings, "seconds_evaluate": before + time.perf_counter() - t0}
    row = state.close_round(state.pending_mode, len(state.pending), timings)
    if checkpoint is not None:
        checkpoint(state)
    return row


def search_round(state: SearchState, evaluate: Evaluate, mode: str = "search",
                 allocate: Callable[[float], ModelConfig] | None = None,
                 checkpoint: Callable[[SearchState], None] | None = None,
                 progress: ProgressFn | None = None, grid: torch.Tensor | None = None,
                 damage: torch.Tensor | None = None) -> dict:
    """One whole round: :func:`begin_round` then :func:`finish_round`.

    Returns:
        The round's row of ``state.rounds``.
    """
    begin_round(state, mode, allocate, progress, grid, damage)
    if checkpoint is not None:
        checkpoint(state)
    return finish_round(state, evaluate, checkpoint, progress)
