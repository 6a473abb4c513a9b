"""A step's configuration draws: over the set's members (quasi), with the ends anchored (anchored), per initial
configuration (stratified)."""
import dataclasses

import pytest
import torch

from coa_lora.lora.options import TrainOptions
from coa_lora.lora.step import anchored_draws, quasi_draws, step_draws, stratified_draws


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


def test_stratified_draws_keep_every_initial_configurations_share():
    initial = [2.5 + 0.5 * i for i in range(10)]  # 2.5 .. 7.0 bits
    for seed in range(4):
        for n in (2, 3, 5, 10):
            b = initial[:n]
            assert all(stratified_draws(seed, step, k, b, b) == anchored_draws(seed, step, k, n, n)
                       for k in (1, 2, 3, 4) for step in range(300))
    # Two initial configurations of equal bits cannot be told apart by bits: such a set keeps anchored draws.
    tied = [2.5, 3.0, 3.5, 3.5, 4.0, 4.5]
    assert all(stratified_draws(0, step, 2, tied, tied) == anchored_draws(0, step, 2, 6, 6) for step in range(300))
    # A search adds four members under 3.25 bits and one at 6.1: 15 members. Every initial configuration's stratum
    # (the members nearer to it than to its initial neighbours) is drawn exactly as often as the configuration was
    # alone, while anchored draws cut the 4.0- and 4.5-bit configurations' 40 draws to 25.
    grown = sorted(initial + [2.6, 2.8, 2.9, 3.2, 6.1])
    stratum = [0, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7, 7, 8, 9]  # of each grown member, by bits
    def counts(draw):
        return torch.bincount(torch.tensor([p for step in range(100) for p in draw(step)]), minlength=15)
    alone = counts(lambda step: stratified_draws(1, step, 2, initial, initial))[:10]
    strat = counts(lambda step: stratified_draws(1, step, 2, grown, initial))
    per_stratum = torch.zeros(10, dtype=torch.long).index_add_(0, torch.tensor(stratum), strat)
    assert per_stratum.tolist() == alone.tolist() and strat.sum() == 200
    assert strat[1:6].min() >= 1  # the members added share their stratum's draws
    anchored = counts(lambda step: anchored_draws(1, step, 2, 15, 10))
    assert int(anchored[7] + anchored[8]) == 25 and int(strat[7] + strat[8]) == int(alone[3] + alone[4]) == 40
    # An initial configuration dropped from the set (4.0 bits) with nothing added near it: its draws go to the
    # interior member nearest to it.
    dropped = [b for b in initial if b != 4.0]
    got = counts(lambda step: stratified_draws(1, step, 2, dropped, initial))[:9]
    # 3.5 and 4.5 bits are equally near: the lower (position 2) takes 4.0's share
    assert int(got[2]) == int(alone[2] + alone[3]) and int(got[3]) == int(alone[4]) and got.sum() == 200
    # Options name the draws; stratified ones need both sets' bits.
    o = TrainOptions(seed=1, draws="stratified")
    assert step_draws(o, 5, 0, 15, 10, 10, grown, initial)[0] == stratified_draws(1, 5, 2, grown, initial)
    with pytest.raises(ValueError, match="average bits"):
        step_draws(o, 5, 0, 15, 10, 10)
