"""The configuration search on the tiny model with a synthetic f1 of known structure.

f1(C) = log Σ_i w_i · damage_i(c_i): the allocator's squared-error damage, reweighted per matrix by sensitivities
w_i the allocator does not know (as the real loss weighs matrices unevenly). It is additive over matrices, so a good
surrogate can learn it from tens of points, and the segment-wise front is not simply the allocator's answer.
"""
import json

import pytest
import torch
from botorch.utils.multi_objective.box_decompositions.non_dominated import FastNondominatedPartitioning

from coa_lora.configs.model_config import ModelConfig
from coa_lora.lora.workbench import Workbench
from coa_lora.quant.space import ALL_OPTIONS
from coa_lora.search.candidates import allocator_grid
from coa_lora.search.pareto import HypervolumePlane
from coa_lora.search.rounds import (STEPS, SearchSettings, SearchState, acquisition, avg_bits, neighbours,
                                    random_proposals, reference_point, search_round)
from coa_lora.search.surrogate import compare_encodings

FAST = SearchSettings(segments=8, proposals=5, moves=10, mc_samples=32, seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The acquisition works on small tensors; on a shared 2-core machine intra-op threads contend and make it ~15x
    # slower (measured), so these tests run single-threaded and restore the setting afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def problem():
    wb = Workbench.load("tiny")
    layout, table = wb.layout, wb.damage_table("none").values
    weights = torch.exp(torch.randn(len(layout), generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    values = table * weights[:, None]

    def evaluate(configs):
        return [float(torch.log(values.gather(1, c.option_indices().view(-1, 1)).sum())) for c in configs]

    # Initial set: for each of 12 bit levels, the uniform configuration of least total damage within it (the
    # allocator is exact but takes seconds per budget on a busy machine; uniform configurations keep the test fast).
    total = table.sum(0)
    bits = torch.tensor([o.bits_per_weight for o in ALL_OPTIONS], dtype=torch.float64)
    initial = []
    for level in torch.linspace(2.1, 8.6, 12).tolist():
        ok = torch.nonzero(bits <= level).reshape(-1)
        initial.append(ModelConfig.uniform(layout, ALL_OPTIONS[int(ok[total[ok].argmin()])]))
    return layout, evaluate, initial


def test_neighbours_are_single_field_steps(problem):
    layout = problem[0]
    x = torch.tensor([0] * (len(layout) - 1) + [431])
    nb = neighbours(x)
    # Option 0 has every field at its first value and option 431 at its last: one step each way in 5 fields.
    assert nb.shape == (5 * len(layout), len(layout))
    diff = torch.tensor([[sum(a != b for a, b in zip(ALL_OPTIONS[int(i)].ordinals(), ALL_OPTIONS[int(j)].ordinals()))
                          for i, j in zip(x, row)] for row in nb])
    assert ((diff > 0).sum(1) == 1).all() and diff.max() == 1
    assert (STEPS >= 0).sum(1).min() == 5 and (STEPS >= 0).sum(1).max() == 10
    assert neighbours(x, max_neighbours=7, generator=torch.Generator().manual_seed(0)).shape == (7, len(layout))


def test_avg_bits_matches_config(problem):
    layout, _, initial = problem
    X = torch.stack([c.option_indices() for c in initial])
    assert torch.allclose(avg_bits(X, layout), torch.tensor([c.avg_bits for c in initial], dtype=torch.float64))


def test_acquisition_reference_measures_the_plane_hypervolume():
    # The acquisition's raw-unit front and reference must give the run's plane hypervolume (up to the axes' scale),
    # so a point beyond the plane's loss cap promises nothing, however far the observed worst lies.
    plane = HypervolumePlane((2.5, 7.0), (3.5, 7.0))
    ref = reference_point(plane)
    assert torch.allclose(-ref.flip(-1), plane.denormalise(torch.tensor([1.1, 1.1])))
    bits = torch.tensor([2.5, 3.0, 4.0, 7.0], dtype=torch.float64)
    loss = torch.tensor([15.0, 4.6, 3.9, 3.5], dtype=torch.float64)
    scale = (7.0 - 2.5) * (7.0 - 3.5)

    def raw_hv(b, l):
        Y = torch.stack([-l, -b], dim=-1)
        return float(FastNondominatedPartitioning(ref_point=ref, Y=Y).compute_hypervolume())

    assert raw_hv(bits, loss) / scale == pytest.approx(plane.hypervolume(bits, loss), rel=1e-9)
    beyond = raw_hv(torch.cat([bits, torch.tensor([2.7])]), torch.cat([loss, torch.tensor([8.5])]))
    inside = raw_hv(torch.cat([bits, torch.tensor([2.7])]), torch.cat([loss, torch.tensor([6.0])]))
    assert beyond == pytest.approx(raw_hv(bits, loss)) and inside > beyond


def test_the_acquisition_stays_on_pytorch_and_builds_no_extension(monkeypatch):
    # BoTorch would compile a fused C++ kernel with ninja on a fresh machine (48 s measured) to save ~0.1 s a round.
    import torch.utils.cpp_extension
    from botorch.acquisition.multi_objective import logei

    builds = []
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda *a, **k: builds.append(k.get("name")))
    monkeypatch.setattr(logei, "_load_attempted", False)  # as in a fresh process
    from botorch.models import ModelList, SingleTaskGP
    from botorch.models.deterministic import GenericDeterministicModel

    X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    models = ModelList(SingleTaskGP(X, -X.sum(-1, keepdim=True)), GenericDeterministicModel(lambda X: -X[..., :1]))
    Y = torch.tensor([[-1.0, -2.0], [-2.0, -1.0]], dtype=torch.float64)
    acqf = acquisition(models, Y, torch.tensor([-3.0, -3.0], dtype=torch.float64), FAST)
    assert logei._C is None and builds == []
    better, worse = acqf(torch.tensor([[[0.1, 0.1]], [[1.2, 1.2]]], dtype=torch.float64))
    assert better > worse  # (-0.2, -0.1) dominates part of the box; (-2.4, -1.2) improves nothing


def test_encodings_compared_by_held_out_quality(problem):
    layout, evaluate, initial = problem
    g = torch.Generator().manual_seed(1)
    base = torch.stack([c.option_indices() for c in initial])
    X = base[torch.randint(len(base), (40,), generator=g)].clone()
    for row in X:  # each a uniform configuration with 1-4 matrices changed at random
        k = int(torch.randint(1, 5, (1,), generator=g))
        row[torch.randperm(len(layout), generator=g)[:k]] = torch.randint(432, (k,), generator=g)
    y = -torch.tensor(evaluate([ModelConfig.from_option_indices(layout, x) for x in X]))
    rows = {r["encoding"]: r for r in compare_encodings(X, y, n_folds=4)}
    print({e: (round(r["rmse"], 3), round(r["nlpd"], 3), round(r["spearman"], 3)) for e, r in rows.items()})
    # The default (one lengthscale per option field) must beat the official code's single-lengthscale RBF.
    assert rows["field"]["rmse"] < rows["ordinal"]["rmse"]
    assert rows["field"]["spearman"] > rows["ordinal"]["spearman"]


def test_search_beats_random_with_same_evaluations(problem):
    layout, evaluate, initial = problem
    # Random proposals as training makes them: the workbench's allocator (Fisher-weighted by default) at budgets drawn
    # uniformly over the bit range, so the baseline proposes the allocations training would use, not random options.
    wb = Workbench.load("tiny")

    def allocate(budget):
        return wb.allocate(budget).config

    hv, grid = {}, None
    for mode in ("search", "random", "frozen"):
        state = SearchState.start(layout, initial, evaluate, FAST)
        grid = allocator_grid(allocate, state.plane.bits_range, 0.25) if grid is None else grid
        for _ in range(3):
            search_round(state, evaluate, mode, allocate=allocate, grid=grid,
                         damage=wb.damage_table().for_layout(layout).values)
        hv[mode] = [r["hv_pool"] for r in state.rounds]
        if mode == "search":
            searched = state
    print(hv)
    assert hv["search"][0] == hv["random"][0] == hv["frozen"][-1]  # same initial set, same plane
    assert hv["search"][-1] > hv["random"][-1] >= hv["frozen"][-1]
    assert all(b >= a for a, b in zip(hv["search"], hv["search"][1:]))  # the pool only grows

    # Every evaluation is logged once, no duplicate was proposed, and the log round-trips through JSON.
    pool = searched.pool_frame()
    assert len(pool) == len(initial_unique(initial)) + 15 and pool["id"].is_unique
    assert len({tuple(o) for o in pool["options"]}) == len(pool)
    assert (pool.groupby("source").size().to_dict()) == {"initial": len(initial_unique(initial)), "search": 15}
    lo, hi = searched.plane.bits_range  # proposals stay within the plane: below it a collapsed one wins on bits
    proposed = pool[pool["source"] == "search"]
    assert proposed["avg_bits"].between(lo - 5e-3, hi + 1e-9).all()
    assert proposed[["predicted_f1", "predicted_sd", "distance_bits", "changed_matrices"]].notna().all().all()
    history = searched.history_frame()
    assert set(history.columns) >= {"round", "id", "source", "avg_bits", "f1", "segment", "selected"}
    last = history[history["round"] == 3]
    assert len(last) == len(pool) and last["selected"].sum() == searched.rounds[-1]["n_train"]
    assert len(searched.training_set()) == searched.rounds[-1]["n_train"]
    restored = SearchState.from_dict(json.loads(json.dumps(searched.to_dict())), layout)
    assert restored.pool == searched.pool and restored.rounds == searched.rounds
    assert torch.equal(restored.selected, searched.selected) and restored.plane == searched.plane


def initial_unique(initial):
    return {tuple(c.option_indices().tolist()) for c in initial}


def test_random_proposals_through_an_allocator_are_new(problem):
    layout, evaluate, initial = problem
    state = SearchState.start(layout, initial, evaluate, FAST)
    by_budget = {c.avg_bits: c for c in [ModelConfig.uniform(layout, o) for o in ALL_OPTIONS]}

    def allocate(budget):  # a budget -> configuration map: the uniform configuration with the most bits within it
        return by_budget[max(b for b in by_budget if b <= budget)]

    X = random_proposals(state, 5, allocate)
    seen = {tuple(x) for x in state.X.tolist()}
    assert len(X) == 5 and not any(tuple(x) in seen for x in X.tolist())
    assert HypervolumePlane.from_dict(state.to_dict()["plane"]) == state.plane


def test_bad_updates_are_refused_and_change_nothing(problem):
    layout, evaluate, initial = problem
    with pytest.raises(ValueError, match="at least 2 distinct initial configurations, got 1"):
        SearchState.start(layout, [initial[3], initial[3]], evaluate, FAST)
    state = SearchState.start(layout, initial, evaluate, FAST)
    before = json.dumps(state.to_dict())
    new = neighbours(state.X[0], max_neighbours=1, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="already evaluated"):  # a new row followed by a known one: neither kept
        state.add(torch.cat([new, state.X[:1]]), torch.tensor([1.0, 2.0]), "search")
    with pytest.raises(ValueError, match="not finite"):
        state.add(new, torch.tensor([float("nan")]), "search")
    with pytest.raises(ValueError, match="not finite"):
        state.refresh(lambda configs: [float("inf")] * len(configs), "pool")
    with pytest.raises(ValueError, match="'train' .* or 'pool' .*, got 'everything'"):
        state.refresh(evaluate, "everything")
    assert json.dumps(state.to_dict()) == before


def test_refresh_of_the_training_set_moves_the_rest_by_the_shift_at_their_bits(problem):
    layout, evaluate, initial = problem
    state = SearchState.start(layout, initial, evaluate, FAST)
    state.selected[:] = False
    bits = state.bits
    order = torch.argsort(bits)
    lo, hi = int(order[0]), int(order[-1])
    state.selected[[lo, hi]] = True
    before = state.loss.clone()

    def later(configs):  # the adapter after an epoch: every loss falls by 0.1 per bit
        return [v - 0.1 * c.avg_bits for v, c in zip(evaluate(configs), configs)]

    state.refresh(later, "train", for_round=1)
    rows = state.pool
    measured = [r["id"] for r in rows if not r["f1_estimated"]]
    assert sorted(measured) == sorted([lo, hi]) and all(rows[i]["f1_round"] == 1 for i in measured)
    # Linear in bits between the two measured ends, so the estimate is exact for this adapter.
    assert torch.allclose(state.loss, before - 0.1 * bits, atol=1e-9)
    assert all(r["f1_round"] == 0 for r in rows if r["f1_estimated"])
    # limit: at most this many of the training set are measured, spread over bits (ends included).
    state.selected[:] = True
    state.refresh(later, "train", for_round=2, limit=3)
    assert sum(not r["f1_estimated"] for r in rows) == 3
    assert not rows[lo]["f1_estimated"] and not rows[hi]["f1_estimated"]


def test_a_collapsed_configuration_is_no_anchor_for_the_estimates(problem):
    layout, evaluate, initial = problem
    state = SearchState.start(layout, initial, evaluate, FAST)
    order = torch.argsort(state.bits)
    lo, hi = int(order[0]), int(order[-1])
    state.selected[:] = False
    state.selected[[lo, hi]] = True
    worst = float(state.plane.denormalise(torch.full((2,), state.plane.reference))[1])
    state.pool[lo]["f1"] = worst + 10.0  # collapsed, and about to move by -5 where the others move by -0.1
    before = state.loss.clone()

    def later(configs):
        return [worst + 5.0 if c.avg_bits == float(state.bits[lo]) else v - 0.1
                for v, c in zip(evaluate(configs), configs)]

    state.refresh(later, "train", for_round=1)
    rest = [i for i in range(len(state.pool)) if i not in (lo, hi)]
    assert torch.allclose(state.loss[rest], before[rest] - 0.1, atol=1e-9)


@pytest.mark.parametrize("bad, message", [({"swaps": -1}, "swaps must be >= 0, got -1"),
                                          ({"max_neighbours": 0}, "max_neighbours must be >= 1 or None"),
                                          ({"segments": 0}, "segments must be >= 1"),
                                          ({"refresh_limit": 1}, "refresh_limit must be >= 2 or None"),
                                          ({"empty_preference": 2.0}, "empty_preference must be in \\[0, 1\\]")])
def test_search_settings_are_validated(bad, message):
    with pytest.raises(ValueError, match=message):
        SearchSettings(**bad)
    assert SearchSettings(max_neighbours=None).max_neighbours is None
