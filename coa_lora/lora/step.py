"""One optimiser step's gradient (METHOD.md §5): k configurations × micro-batches, over data-parallel replicas.

    draws = [step_draws(options, step, j, len(configs), len(pool), n_initial, bits, initial_bits)
             for j in ranks.replicas(options.replicas)]  # bits: only stratified draws read them
    loss = step_gradients(coa, coa.set_config, params, configs, pool, draws, options, ranks)

A replica is one copy of the step's micro-batches with its own windows and dropout; every replica trains the same
k configurations. One replica is the single-process trainer's step as it always was; several are summed across the
processes of a torchrun job by :class:`coa_lora.distributed.Ranks`, or in one process, with the same result.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from coa_lora.configs.model_config import ModelConfig
from coa_lora.distributed import Ranks
from coa_lora.lora.adapter import CoALoRAModel

if TYPE_CHECKING:
    from coa_lora.lora.options import TrainOptions


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


def anchored_draws(seed: int, step: int, k: int, n: int, n_initial: int) -> list[int]:
    """``min(k, n)`` distinct positions in a training set of ``n`` configurations sorted by average bits, at ``step``,
    where the set started with ``n_initial``.

    As :func:`quasi_draws`, except that the set's lowest and highest configuration keep the share they had in the
    initial set: quantiles below 1/n_initial train the lowest, above 1 − 1/n_initial the highest, and the rest are
    spread over the members between them. The ends are the served range's extreme budgets: nothing lies beyond them,
    so no search replaces them and every mode deploys them there. With draws over all members, a search that put its
    proposals at 2.6-3.5 bits trained SmolLM2's 2.5-bit configuration 5-6 times in 72 draws against 5-8 for its
    ablations, and its held-out perplexity at 2.5 bits was 10-18 % worse on each of 3 seeds. (Spreading the draws
    over the bit axis instead evened the range under 3.05 bits but not the end: its new neighbours took its draws,
    5 against frozen's 7, and the end's probe loss followed, 5.74 and 5.70 against 5.47.) On the initial set, and
    for sets that started with fewer than 3 configurations, these are the draws of :func:`quasi_draws`.
    """
    if n_initial < 3 or n < 3:
        return quasi_draws(seed, step, k, n)
    positions = []
    for q in _weyl(seed, step, k)[:min(k, n)]:
        t = q * n_initial
        if t < 1:
            positions.append(0)
        elif t >= n_initial - 1:
            positions.append(n - 1)
        else:  # the members between the ends, evenly: on the initial set exactly quasi_draws's position
            positions.append(1 + min(int((t - 1) / (n_initial - 2) * (n - 2)), n - 3))
    return _distinct(positions, n)


def stratified_draws(seed: int, step: int, k: int, bits: list[float], initial_bits: list[float]) -> list[int]:
    """``min(k, n)`` distinct positions in a training set whose members have average ``bits`` (sorted), at ``step``,
    where the set started as the configurations of ``initial_bits`` (sorted).

    As :func:`anchored_draws`, and each initial configuration between the ends also keeps its share: quantile ``q``
    picks the initial configuration ``i = floor(q · n_initial)`` and then, by ``frac(q · n_initial)``, one of the
    members in its stratum: those nearer to it in bits than to its initial neighbours (the strata next to the ends
    also take the interior members beyond them). A search that adds members where the front has gaps then varies the
    configurations trained at every part of the bit range without moving training from one part to another. (With
    anchored draws, SmolLM2 search runs whose proposals went mostly under 3.5 bits trained 3.5-4.25 bits 7-13 times
    in 72 draws against frozen's 13-15, and were 0.2-1.3 % worse than frozen in held-out perplexity at 4 bits on 5
    of seeds 0-5. Stratified, seeds 0, 1 and 4 trained that range 10-12 times and were level with frozen at 4 bits
    (100·ln ratio −0.1 ± 0.4), but lost search's 3-bit lead: the trade moves, it does not go away, so anchored stays
    the default.) A stratum left empty (its initial configuration was dropped from the set and nothing was added
    near it) draws the interior member nearest to it. On the initial set these are the draws of
    :func:`anchored_draws`, and so are all draws of a set whose initial bits are not distinct (two initial
    configurations of equal bits would share one stratum).
    """
    n, m = len(bits), len(initial_bits)
    if m < 3 or n < 3:
        return quasi_draws(seed, step, k, n)
    if any(a >= b for a, b in zip(initial_bits, initial_bits[1:])):
        return anchored_draws(seed, step, k, n, m)
    # interior member p (1 .. n-2) belongs to the interior stratum whose initial configuration is nearest in bits
    bounds = [(initial_bits[i] + initial_bits[i + 1]) / 2 for i in range(1, m - 2)]
    strata: list[list[int]] = [[] for _ in range(m)]
    for p in range(1, n - 1):
        strata[1 + bisect.bisect_right(bounds, bits[p])].append(p)
    positions = []
    for q in _weyl(seed, step, k)[:min(k, n)]:
        t = q * m
        i = int(t)
        if i == 0:
            positions.append(0)
        elif i >= m - 1:
            positions.append(n - 1)
        else:
            members = strata[i] or [min(range(1, n - 1), key=lambda p: abs(bits[p] - initial_bits[i]))]
            positions.append(members[min(int((t - i) * len(members)), len(members) - 1)])
    return _distinct(positions, n)


def step_draws(options: TrainOptions, step: int, replica: int, n_configs: int, n_windows: int,
               n_initial: int, bits: list[float] | None = None,
               initial_bits: list[float] | None = None) -> tuple[list[int], list[torch.Tensor], int]:
    """One replica's randomness at ``step``: the configurations (indices into the training set, which the trainer
    keeps sorted by average bits; replica 0's draw, for every replica), ``grad_accumulation`` tensors
    ``(batch_size,)`` of window indices, and a dropout seed.

    Configurations: :func:`anchored_draws` (``options.draws == "anchored"``; ``n_initial``: the initial set's size,
    which the other draws ignore), :func:`stratified_draws` (``"stratified"``; ``bits`` and ``initial_bits``: the
    average bits of the set's members and of the initial set, both sorted), :func:`quasi_draws` (``"quasi"``) or a
    uniform random permutation's first k (``"random"``, runs made before). Replica 0 draws from the (seed, step)
    generator in the order the single-process trainer always has; replica j > 0 draws its windows and dropout from
    its own (seed, step, j) generator, so whichever process runs it (and a resume) draws the same.
    """
    g = torch.Generator().manual_seed(options.seed * 1_000_003 + step)
    # The permutation is drawn either way, so a step's windows and dropout do not depend on how configurations are.
    chosen = torch.randperm(n_configs, generator=g)[:min(options.configs_per_step, n_configs)].tolist()
    if options.draws == "quasi":
        chosen = quasi_draws(options.seed, step, options.configs_per_step, n_configs)
    elif options.draws == "anchored":
        chosen = anchored_draws(options.seed, step, options.configs_per_step, n_configs, n_initial)
    elif options.draws == "stratified":
        if bits is None or initial_bits is None or len(bits) != n_configs or len(initial_bits) != n_initial:
            raise ValueError("Stratified draws need the average bits of the set's members and of the initial set.")
        chosen = stratified_draws(options.seed, step, options.configs_per_step, bits, initial_bits)
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
