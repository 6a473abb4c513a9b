"""A step's configuration draws: over the set's members (quasi) and over the bit axis (bits)."""
import pytest
import torch

from coa_lora.step import anchor_bits_at, bits_draws, nearest_member, quasi_draws, step_draws
from coa_lora.train_options import TrainOptions


def test_quasi_draws_spread_every_stretch_of_steps_over_the_set():
    for n, k in [(19, 2), (20, 2), (7, 3), (2, 2), (1, 2)]:
        draws = [quasi_draws(5, step, k, n) for step in range(12)]
        assert all(len(d) == len(set(d)) == min(k, n) and all(0 <= p < n for p in d) for d in draws)
        counts = torch.bincount(torch.tensor([p for d in draws for p in d]), minlength=n)
        # 12·k draws over n positions: each position as often as its share, give or take one (uniform random draws
        # gave the lowest of 19 positions 1 to 5 of 24).
        assert int(counts.max() - counts.min()) <= 2 and counts.sum() == 12 * min(k, n)
    assert quasi_draws(5, 3, 2, 19) == quasi_draws(5, 3, 2, 19) != quasi_draws(6, 3, 2, 19)


def test_bits_draws_train_the_initial_set_as_quasi_draws_and_a_grown_set_by_the_bit_axis():
    anchors = [2.5 + 0.5278 * i for i in range(10)]  # the default 10-budget initial set's spacing
    for seed in range(4):
        for n in (10, 1, 2, 5):
            a = sorted(anchors[:n] if n < 10 else anchors)
            assert all(bits_draws(seed, step, 2, a, a) == quasi_draws(seed, step, 2, n) for step in range(200))
    # The end cells stop at the lowest and highest member yet own a full 1/n0 of the quantiles.
    assert anchor_bits_at(0.0, anchors) == anchors[0] and abs(anchor_bits_at(0.05, anchors) - 2.63195) < 1e-9
    assert abs(anchor_bits_at(0.999999, anchors) - anchors[-1]) < 1e-4 and anchor_bits_at(0.7, [3.0]) == 3.0
    assert [nearest_member(b, [2.5, 3.0, 4.0]) for b in (2.0, 2.74, 2.75, 3.6, 9.0)] == [0, 0, 1, 2, 2]
    # A search that adds six members between 2.5 and 3.05 bits: with draws over the members, that stretch takes 101
    # of 100 steps' 200 draws instead of 42, from the rest of the range; over the bit axis it keeps its 42, and the
    # new members split them.
    grown = sorted(anchors + [2.6, 2.7, 2.8, 2.9, 2.95, 3.0])
    def low_draws(draw, bits):
        return sum(bits[p] < 3.05 for step in range(100) for p in draw(step, bits))
    assert low_draws(lambda step, b: quasi_draws(1, step, 2, len(b)), anchors) == 42
    assert low_draws(lambda step, b: quasi_draws(1, step, 2, len(b)), grown) == 101
    assert low_draws(lambda step, b: bits_draws(1, step, 2, b, anchors), anchors) == 42
    assert low_draws(lambda step, b: bits_draws(1, step, 2, b, anchors), grown) == 42
    # Every draw trains the member nearest its point of the bit axis, distinct within a step.
    assert all(len(set(d)) == 2 for d in (bits_draws(1, step, 2, grown, anchors) for step in range(100)))
    with pytest.raises(ValueError, match="bits of all 3 configurations"):
        step_draws(TrainOptions(), 0, 0, 3, 10, [2.5, 3.0], [2.5])
