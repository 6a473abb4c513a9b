"""One optimiser step's gradient (METHOD.md §5): k configurations × micro-batches, over data-parallel replicas.

    bits = [c.avg_bits for c in configs]  # the set in bits order; anchor_bits: the initial set's, sorted
    draws = [step_draws(options, step, j, len(configs), len(pool), bits, anchor_bits)
             for j in ranks.replicas(options.replicas)]
    loss = step_gradients(coa, coa.set_config, params, configs, pool, draws, options, ranks)

A replica is one copy of the step's micro-batches with its own windows and dropout; every replica trains the same
k configurations. One replica is the single-process trainer's step as it always was; several are summed across the
processes of a torchrun job by :class:`coa_lora.distributed.Ranks`, or in one process, with the same result.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from .adapter import CoALoRAModel
from .config import ModelConfig
from .distributed import Ranks

if TYPE_CHECKING:
    from .train_options import TrainOptions


# frac(offset + i · GOLDEN), i = 0, 1, 2, ... (a Weyl sequence) spreads any number of consecutive points over [0, 1)
# more evenly than any other rotation.
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _weyl(seed: int, step: int, k: int) -> list[float]:
    """The ``k`` quantiles in [0, 1) of ``step``: ``frac(offset + i·GOLDEN)``, ``i = step·k + j``, ``offset`` fixed by
    the seed."""
    offset = float(torch.rand(1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return [math.fmod(offset + (step * k + j) * GOLDEN, 1.0) for j in range(k)]


def _distinct(positions: list[int], n: int) -> list[int]:
    """``positions`` with repeats moved to the next free position up (two quantiles of one step on one member)."""
    chosen: list[int] = []
    for p in positions:
        while p in chosen:
            p = (p + 1) % n
        chosen.append(p)
    return chosen


def quasi_draws(seed: int, step: int, k: int, n: int) -> list[int]:
    """``min(k, n)`` distinct positions in a training set of ``n`` configurations sorted by average bits, at ``step``.

    Draw ``i = step·k + j`` takes the configuration at quantile ``frac(offset + i·GOLDEN)`` of the set, ``offset``
    fixed by the seed. Each draw is still uniform over the set, but over any stretch of steps every part of the bit
    range is trained as often as its share of the set: with uniform random draws, 12 steps × 2 draws trained the
    2.5-bit configuration of SmolLM2 runs anywhere from 1 to 5 times, and its final probe loss went with it (17.5 to
    7.2), deciding search-vs-random comparisons by luck. Two runs with the same seed also train the same quantiles of
    their sets at the same steps (common random numbers), so such a comparison measures the sets, not the draws.
    """
    return _distinct([int(q * n) for q in _weyl(seed, step, k)[:min(k, n)]], n)


def anchor_bits_at(q: float, anchor_bits: Sequence[float]) -> float:
    """The point of the bit axis at quantile ``q`` ∈ [0, 1) of the initial set ``anchor_bits`` (sorted, ``(n0,)``).

    Each initial configuration owns 1/n0 of [0, 1), spread evenly over its cell of the bit axis (the points nearer
    to it than to its neighbours; the end cells stop at the lowest and highest configuration). Drawing the member
    nearest to this point therefore draws the initial set exactly as :func:`quasi_draws` does.
    """
    n0 = len(anchor_bits)
    if n0 == 1:
        return float(anchor_bits[0])
    edges = [anchor_bits[0], *((a + b) / 2 for a, b in zip(anchor_bits, anchor_bits[1:])), anchor_bits[-1]]
    i = min(int(q * n0), n0 - 1)
    return float(edges[i] + (q * n0 - i) * (edges[i + 1] - edges[i]))


def nearest_member(bits: float, set_bits: Sequence[float]) -> int:
    """Position in ``set_bits`` (sorted, ``(n,)``) of the member nearest to ``bits``; a tie goes to the upper one."""
    p = bisect.bisect_left(set_bits, bits)
    if p == len(set_bits) or (p > 0 and bits - set_bits[p - 1] < set_bits[p] - bits):
        return p - 1
    return p


def bits_draws(seed: int, step: int, k: int, set_bits: Sequence[float], anchor_bits: Sequence[float]) -> list[int]:
    """``min(k, n)`` distinct positions in the current training set (``set_bits``, sorted, ``(n,)``) at ``step``.

    Draw ``i`` takes the quantile of :func:`quasi_draws`, maps it to a point of the bit axis distributed as the
    initial set ``anchor_bits`` is (:func:`anchor_bits_at`), and trains the current member nearest to that point.
    So how much each stretch of the bit axis is trained is fixed by the initial design for every search mode, and a
    set that grows denser somewhere splits that stretch's draws among its members instead of taking draws from the
    rest. With draws over members (:func:`quasi_draws`), a search that put its proposals at 2.6-3.5 bits trained
    the 2.5-bit configuration 5-6 times in 72 draws against 5-8 for random extension, and the range under 3.05 bits
    15-16 times against 15-19: its held-out perplexity at 2.5 bits was 10-18 % worse on each of 3 seeds. On the
    initial set itself the draws are those of :func:`quasi_draws` (a frozen set trains exactly as before).
    """
    n = len(set_bits)
    points = [anchor_bits_at(q, anchor_bits) for q in _weyl(seed, step, k)[:min(k, n)]]
    return _distinct([nearest_member(b, set_bits) for b in points], n)


def step_draws(options: TrainOptions, step: int, replica: int, n_configs: int, n_windows: int,
               set_bits: Sequence[float] = (),
               anchor_bits: Sequence[float] = ()) -> tuple[list[int], list[torch.Tensor], int]:
    """One replica's randomness at ``step``: the configurations (indices into the training set, which the trainer
    keeps sorted by average bits; replica 0's draw, for every replica), ``grad_accumulation`` tensors
    ``(batch_size,)`` of window indices, and a dropout seed.

    Configurations: :func:`bits_draws` (``options.draws == "bits"``; needs ``set_bits``, the set's average bits in
    its order, and ``anchor_bits``, the initial set's, sorted), :func:`quasi_draws` (``"quasi"``) or a uniform random
    permutation's first k (``"random"``, runs made before). Replica 0 draws from the (seed, step) generator in the
    order the single-process trainer always has; replica j > 0 draws its windows and dropout from its own (seed, step, j)
    generator, so whichever process runs it (and a resume) draws the same.
    """
    g = torch.Generator().manual_seed(options.seed * 1_000_003 + step)
    # The permutation is drawn either way, so a step's windows and dropout do not depend on how configurations are.
    chosen = torch.randperm(n_configs, generator=g)[:min(options.configs_per_step, n_configs)].tolist()
    if options.draws == "quasi":
        chosen = quasi_draws(options.seed, step, options.configs_per_step, n_configs)
    elif options.draws == "bits":
        if len(set_bits) != n_configs or not anchor_bits:
            raise ValueError(f"Draws over the bit axis need the bits of all {n_configs} configurations of the set and "
                             f"of the initial set; got {len(set_bits)} and {len(anchor_bits)}.")
        chosen = bits_draws(options.seed, step, options.configs_per_step, set_bits, anchor_bits)
    if replica:
        # A seed range of its own per replica: replica 0's seeds stay below 2**48 for any practical seed and step.
        g = torch.Generator().manual_seed((replica << 48) + options.seed * 1_000_003 + step)
    rows = [torch.randint(n_windows, (options.batch_size,), generator=g) for _ in range(options.grad_accumulation)]
    return chosen, rows, int(torch.randint(2**62, (1,), generator=g))


def step_gradients(coa: CoALoRAModel, activate: Callable[[ModelConfig], None], params: list[torch.Tensor],
                   configs: list[ModelConfig], pool: torch.Tensor, draws: list, options: TrainOptions,
                   ranks: Ranks) -> float:
    """Leave the step's gradient, averaged over all ``options.replicas``, in ``params``' ``.grad``; return the mean
    loss. ``draws``: :func:`step_draws` of this rank's replicas; ``pool``: ``(n, seq)`` training windows.

    Each replica's gradient is taken on its own, so two replicas add up to the same bits in one process as the
    all-reduce of two processes gives; the sum over all of them is divided once.
    """
    sums = None
    for chosen, rows, dropout in draws:
        for p in params:
            p.grad = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(dropout)  # dropout, reproducible per step and replica
            loss = accumulate_gradients(coa, activate, [configs[i] for i in chosen], [pool[r] for r in rows],
                                        options.objective)
        if options.replicas == 1:  # the single-process step, untouched
            return loss
        part = [p.grad for p in params] + [torch.tensor([loss], dtype=torch.float64)]
        sums = part if sums is None else [a + b for a, b in zip(sums, part)]
    ranks.all_reduce_sum_(sums)
    for p, g in zip(params, sums):
        p.grad = g / options.replicas
    return float(sums[-1]) / options.replicas


def accumulate_gradients(coa: CoALoRAModel, activate: Callable[[ModelConfig], None], configs: list[ModelConfig],
                         batches: list[torch.Tensor], objective: str = "lm") -> float:
    """Run every micro-batch ``(batch, seq)`` under every configuration and accumulate the averaged gradients.

    ``activate(config)`` switches the model (normally ``coa.set_config``). Returns the mean loss.
    """
    total, n = 0.0, len(configs) * len(batches)
    for ids in batches:
        teacher = _teacher_logits(coa, ids) if objective == "kd" else None
        for config in configs:
            activate(config)  # recomputes U with autograd: one backward frees its graph
            out = coa.model(input_ids=ids, labels=ids if teacher is None else None)
            loss = out.loss if teacher is None else _kl_to_teacher(out.logits, teacher)
            (loss / n).backward()
            total += loss.item() / n
    return total


def _teacher_logits(coa: CoALoRAModel, ids: torch.Tensor) -> torch.Tensor:
    """The unquantized model's logits ``(batch, seq, vocab)``; the next activate() puts the configuration back."""
    coa.qmodel.restore_()
    with torch.no_grad(), coa.adapters_disabled():
        return coa.model(input_ids=ids).logits


def _kl_to_teacher(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher ‖ student); logits ``(batch, seq, vocab)``."""
    t = teacher.log_softmax(-1)
    return (t.exp() * (t - student.log_softmax(-1))).sum(-1).mean()
