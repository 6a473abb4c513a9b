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
(:mod:`coa_lora.search_state`) turns them back into :class:`~coa_lora.config.ModelConfig`.
"""
from __future__ import annotations

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

from .config import ModelConfig, ModelLayout
from .progress import ProgressFn, report
from .search_state import Evaluate, SearchSettings, SearchState, avg_bits, keys
from .space import ALL_OPTIONS, FIELD_VALUES
from .surrogate import fit_surrogate

MODES = ("search", "random", "frozen")
__all__ = ["MODES", "SearchSettings", "SearchState", "avg_bits", "begin_round", "finish_round", "neighbours",
           "propose", "random_proposals", "reference_point", "search_round"]


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


def neighbours(x: torch.Tensor, max_neighbours: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
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
        vals[torch.tensor([k in excluded for k in keys(nb)], dtype=torch.bool)] = float("-inf")
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


def propose(state: SearchState, progress: ProgressFn | None = None) -> tuple[torch.Tensor, dict]:
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
    excluded = set(keys(X))
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
                progress: ProgressFn | None = None) -> None:
    """Open the next round: propose (``search``: qLogEHVI; ``random``: :func:`random_proposals`; ``frozen``:
    nothing) and park the proposals in ``state.pending``, to be saved before any of them is evaluated."""
    if mode not in MODES:
        raise ValueError(f"Unknown search mode {mode!r}; choose one of {MODES}.")
    if state.round_open:
        raise ValueError(f"Round {state.round} is still open; finish it (finish_round) before starting another.")
    state.round += 1
    timings = {"seconds_fit": 0.0, "seconds_acquisition": 0.0}
    if mode == "search":
        X, timings = propose(state, progress)
    elif mode == "random":
        X = random_proposals(state, state.settings.proposals, allocate)
    else:
        X = state.X[:0]
    source = "search" if mode == "search" else "random"
    state.pending = [{"options": x, "source": source} for x in X.tolist()]
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
        state.add(x, torch.tensor([loss], dtype=torch.float64), p["source"])
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
                 progress: ProgressFn | None = None) -> dict:
    """One whole round: :func:`begin_round` then :func:`finish_round`.

    Returns:
        The round's row of ``state.rounds``.
    """
    begin_round(state, mode, allocate, progress)
    if checkpoint is not None:
        checkpoint(state)
    return finish_round(state, evaluate, checkpoint, progress)
