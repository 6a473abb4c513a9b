import itertools

import numpy as np
import pytest
import torch

from coa_lora.allocate import Allocator
from coa_lora.config import ModelConfig, ModelLayout, Target
from coa_lora.damage import matrix_damage
from coa_lora.space import ALL_OPTIONS, MAX_BITS, MIN_BITS


def make_instance(n_targets=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 64), (32, 64), (128, 64)]
    targets = tuple(Target(f"m{i}", shapes[i % 3], i // 3, f"k{i % 3}") for i in range(n_targets))
    layout = ModelLayout("toy", targets, 0)
    weights = [torch.randn(t.shape, generator=g) * (0.5 + torch.rand(1, generator=g)) for t in targets]
    damage = torch.stack([matrix_damage(w) for w in weights])
    return layout, damage


@pytest.fixture(scope="module")
def instance():
    return make_instance()


def test_never_exceeds_budget_and_damage_non_increasing(instance):
    layout, damage = instance
    alloc = Allocator(layout, damage)
    previous = np.inf
    for budget in np.linspace(MIN_BITS, MAX_BITS, 25):
        a = alloc.allocate(float(budget))
        assert a.avg_bits <= budget
        assert a.damage <= previous * (1 + 1e-6)
        previous = a.damage
        assert a.damage == pytest.approx(float(damage[torch.arange(len(layout)), a.config.option_indices()].sum()))


def test_equals_brute_force_on_a_small_instance():
    layout, damage = make_instance(n_targets=3, seed=1)
    subset = [ALL_OPTIONS.index(o) for o in ALL_OPTIONS if o.scale_dtype == "fp32" and o.scale_block_size == 256
              and o.scale_bits in (2, 8)]  # 4 bits x 2 scale bits x 3 block sizes = 24 options
    options = [ALL_OPTIONS[k] for k in subset]
    sub_damage = damage[:, subset]
    alloc = Allocator(layout, sub_damage, options)
    numel = layout.numels.double()
    bits = torch.tensor([o.bits_per_weight for o in options], dtype=torch.float64)
    for budget in (2.2, 2.9, 3.3, 4.1, 5.0, 7.7):
        best = np.inf
        for combo in itertools.product(range(len(options)), repeat=3):
            c = torch.tensor(combo)
            if float((numel * bits[c]).sum() / numel.sum()) <= budget:
                best = min(best, float(sub_damage[torch.arange(3), c].sum()))
        assert alloc.allocate(budget).damage == pytest.approx(best, rel=1e-9)


def test_budget_outside_range_names_it(instance):
    layout, damage = instance
    alloc = Allocator(layout, damage)
    assert alloc.budget_range == (pytest.approx(MIN_BITS), pytest.approx(MAX_BITS))
    for bad in (1.5, 9.0):
        with pytest.raises(ValueError, match=r"feasible range \[2\.0322, 8\.6250\]"):
            alloc.allocate(bad)


def test_uniform_budget_is_met_exactly(instance):
    layout, damage = instance
    o = ALL_OPTIONS[200]
    a = Allocator(layout, damage).allocate(o.bits_per_weight)
    assert a.avg_bits <= o.bits_per_weight
    uniform = ModelConfig.uniform(layout, o)
    assert a.damage <= float(damage[:, 200].sum()) * (1 + 1e-9)
    assert uniform.avg_bits == o.bits_per_weight
