"""Candidate generation and local moves of the search (coa_lora.search.candidates), on the tiny model's layout."""
import pytest
import torch

from coa_lora.configs.model_config import ModelConfig
from coa_lora.lora.instantiate import layout_of
from coa_lora.models.loading import load_model
from coa_lora.quant.space import ALL_OPTIONS
from coa_lora.search.candidates import (allocator_grid, group_moves, groups, local_moves, perturbations, recombinations,
                                        swaps)
from coa_lora.search.state import avg_bits

BITS = torch.tensor([o.bits_per_weight for o in ALL_OPTIONS], dtype=torch.float64)


@pytest.fixture(scope="module")
def layout():
    return layout_of(load_model("tiny"), "tiny")


def one_field_step(a: int, b: int) -> bool:
    return sum(x != y for x, y in zip(ALL_OPTIONS[a].ordinals(), ALL_OPTIONS[b].ordinals())) == 1 and \
        all(abs(x - y) <= 1 for x, y in zip(ALL_OPTIONS[a].ordinals(), ALL_OPTIONS[b].ordinals()))


def test_perturbations_move_few_matrices_one_field_step(layout):
    g = torch.Generator().manual_seed(0)
    X = torch.randint(len(ALL_OPTIONS), (3, len(layout)), generator=g)
    P = perturbations(X, 4, 3, g)
    assert P.shape == (12, len(layout))
    for parent, child in zip(X.repeat_interleave(4, 0), P):
        changed = torch.nonzero(parent != child).flatten().tolist()
        assert 1 <= len(changed) <= 3
        assert all(one_field_step(int(parent[i]), int(child[i])) for i in changed)


def test_recombinations_mix_neighbouring_parents_and_land_between_them(layout):
    g = torch.Generator().manual_seed(1)
    low = torch.full((len(layout),), 0)  # every field at its first value: the fewest bits
    high = torch.full((len(layout),), len(ALL_OPTIONS) - 1)
    mid = torch.full((len(layout),), 200)
    X = torch.stack([high, low, mid])
    bits = avg_bits(X, layout)
    C = recombinations(X, bits, 50, g)
    assert C.shape == (50, len(layout))
    for child in C:  # each child is a per-matrix mixture of two parents adjacent in bits (low+mid or mid+high)
        parents = {int(v) for v in child.unique()}
        assert parents in ({0}, {200}, {431}, {0, 200}, {200, 431})
    b = avg_bits(C, layout)
    assert (b >= bits.min() - 1e-12).all() and (b <= bits.max() + 1e-12).all()
    assert recombinations(X[:1], bits[:1], 5, g).shape == (0, len(layout))


def test_swaps_raise_one_matrix_and_lower_another(layout):
    g = torch.Generator().manual_seed(2)
    x = torch.full((len(layout),), 150)
    S = swaps(x, 40, g)
    assert 0 < len(S) <= 40
    for y in S:
        changed = torch.nonzero(y != x).flatten()
        assert len(changed) == 2
        gains = BITS[y[changed]] - BITS[x[changed]]
        assert (gains > 0).sum() == 1 and (gains < 0).sum() == 1
        assert all(one_field_step(int(x[i]), int(y[i])) for i in changed)


def test_group_moves_step_every_matrix_of_a_block_or_kind(layout):
    gs = groups(layout)
    by_layer = {t.layer for t in layout.targets}
    by_kind = {t.kind for t in layout.targets}
    assert len(gs) == sum(1 for v in by_layer if sum(t.layer == v for t in layout.targets) > 1) + \
        sum(1 for v in by_kind if sum(t.kind == v for t in layout.targets) > 1)
    x = torch.full((len(layout),), 150)
    M = group_moves(x, gs)
    members = [set(g.tolist()) for g in gs]
    for y in M:
        changed = set(torch.nonzero(y != x).flatten().tolist())
        assert changed and any(changed <= m for m in members)
        assert all(one_field_step(int(x[i]), int(y[i])) for i in changed)
        # one field, one direction for the whole group: every changed matrix got the same new option
        assert len({int(y[i]) for i in changed}) == 1
    L = local_moves(x, gs, 16, 8, torch.Generator().manual_seed(3))
    assert {tuple(r) for r in M.tolist()} <= {tuple(r) for r in L.tolist()} and len(L) > len(M) + 16
    assert all(bool((row != x).any()) for row in L)


def test_allocator_grid_is_distinct_and_within_budget(layout):
    uniform = {o.bits_per_weight: ModelConfig.uniform(layout, o) for o in ALL_OPTIONS}

    def allocate(budget):
        return uniform[max(b for b in uniform if b <= budget + 1e-12)]

    G = allocator_grid(allocate, (2.5, 4.0), 0.1)
    assert len({tuple(x.tolist()) for x in G}) == len(G)
    b = avg_bits(G, layout)
    assert (b <= 4.0 + 1e-12).all() and float(b.max()) == pytest.approx(allocate(4.0).avg_bits)
    expected = {tuple(allocate(2.5 + 0.1 * k).option_indices().tolist()) for k in range(16)}
    assert {tuple(x.tolist()) for x in G} == expected
