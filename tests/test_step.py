"""A step's configuration draws: over the set's members (quasi), with the ends anchored (anchored)."""
import dataclasses

import torch

from coa_lora.step import anchored_draws, quasi_draws, step_draws
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


def test_anchored_draws_are_quasi_draws_on_the_initial_set_and_keep_the_ends_share_as_it_grows():
    for seed in range(4):
        for n in (1, 2, 3, 5, 10, 19):
            assert all(anchored_draws(seed, step, k, n, n) == quasi_draws(seed, step, k, n)
                       for k in (1, 2, 3) for step in range(300))
    # A search that adds six members between 2.5 and 3.05 bits to the default 10-budget set (positions 1-6 of 16).
    # Over all members, the lowest configuration falls from 21 of 100 steps' 200 draws to 14; anchored, it keeps its
    # 21 (and the highest its 19), and the 14 members between share the rest evenly.
    def counts(draw):
        return torch.bincount(torch.tensor([p for step in range(100) for p in draw(step)]), minlength=16).tolist()
    assert counts(lambda step: quasi_draws(1, step, 2, 10))[:10] == [21, 21, 19, 20, 20, 20, 20, 19, 21, 19]
    assert counts(lambda step: quasi_draws(1, step, 2, 16))[0] == 14
    grown = counts(lambda step: anchored_draws(1, step, 2, 16, 10))
    assert grown[0] == 21 and grown[15] == 19 and set(grown[1:15]) == {11, 12} and sum(grown) == 200
    assert all(len(set(anchored_draws(1, step, 2, 16, 10))) == 2 for step in range(100))
    # Options name the draws; the trainer passes the initial set's size, which only anchored draws use.
    o = TrainOptions(seed=1)
    assert step_draws(o, 5, 0, 16, 10, 10)[0] == anchored_draws(1, 5, 2, 16, 10)
    assert step_draws(dataclasses.replace(o, draws="quasi"), 5, 0, 16, 10, 10)[0] == quasi_draws(1, 5, 2, 16)
