"""Where the search looks: candidate configurations across the whole bit range, and the local moves around them.

A configuration is ``(N,)`` option indices into :data:`~coa_lora.quant.space.ALL_OPTIONS`. On SmolLM2 the largest of the
210 target matrices is 0.83 % of the weights, so a move that changes one field of one matrix shifts the average bits
by at most ~0.05 bits: proposals built only from such moves never leave their parent's neighbourhood (measured
before this module: 10 of 15 proposals within 0.07 bits of their parent). The candidates therefore span the range:

- ``grid``: the exact allocator's configurations on a fine budget grid over the plane (random extension, the
  ``random`` ablation's whole proposal set, is the special case "pick one of these at random");
- ``perturbation``: grid configurations with a few matrices moved one field step (the allocator's answers are
  optimal for the damage proxy, not for the adapter's loss);
- ``recombination``: per-matrix mixtures of two pool configurations from neighbouring bit ranges, which land
  between their parents;
- ``start``: the current training set.

Local moves (:func:`local_moves`) around a chosen candidate: single-field steps, bits-neutral swaps (one matrix up,
another down) and group moves (one field step for every matrix of a block or of a kind).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from coa_lora.configs.model_config import ModelConfig, ModelLayout
from coa_lora.quant.space import ALL_OPTIONS, FIELD_VALUES

SOURCES = ("grid", "perturbation", "recombination", "start")


def _step_table() -> torch.Tensor:
    """``(432, 2F)`` int64: the option one ordinal step down/up in each field (−1 where the field is at its end).

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
_BITS = torch.tensor([o.bits_per_weight for o in ALL_OPTIONS], dtype=torch.float64)


def neighbours(x: torch.Tensor, max_neighbours: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The configurations one option-field step away from ``x`` (the paper's coordinate moves).

    Args:
        x: ``(N,)`` option indices.
        max_neighbours: keep a uniform random subset of this size (SmolLM2 has ≤ 2,100 neighbours).

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


def _random_steps(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, generator: torch.Generator) -> None:
    """In place: move ``x[rows[j], cols[j]]`` one random admissible field step, for every j."""
    steps = STEPS[x[rows, cols]]  # (J, 2F)
    ok = steps >= 0
    pick = torch.multinomial(ok.double(), 1, generator=generator).squeeze(-1)
    x[rows, cols] = steps[torch.arange(len(rows)), pick]


def perturbations(X: torch.Tensor, per_config: int, max_changes: int, generator: torch.Generator) -> torch.Tensor:
    """``per_config`` copies of each of ``(n, N)`` configurations with 1..``max_changes`` random matrices moved one
    random field step. Returns ``(n·per_config, N)``."""
    n, N = X.shape
    out = X.repeat_interleave(per_config, 0).clone()
    for r in range(len(out)):
        k = int(torch.randint(1, max_changes + 1, (1,), generator=generator))
        cols = torch.randperm(N, generator=generator)[:k]
        _random_steps(out, torch.full((k,), r, dtype=torch.int64), cols, generator)
    return out


def recombinations(X: torch.Tensor, bits: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` children of configurations adjacent in average bits: child_i = a_i with probability p, else b_i, with
    p ∈ (0, 1) drawn per child, so children land anywhere between their parents.

    Args:
        X: ``(m, N)`` parents (m ≥ 2); bits: their ``(m,)`` average bits.

    Returns:
        ``(n, N)`` (``(0, N)`` when m < 2).
    """
    m, N = X.shape
    if m < 2 or n < 1:
        return X[:0]
    order = torch.argsort(bits)
    left = torch.randint(m - 1, (n,), generator=generator)
    a, b = X[order[left]], X[order[left + 1]]
    p = torch.rand((n, 1), generator=generator, dtype=torch.float64)
    take_a = torch.rand((n, N), generator=generator, dtype=torch.float64) < p
    return torch.where(take_a, a, b)


def swaps(x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` bits-neutral-ish swaps of ``(N,)`` ``x``: one matrix one field step up in bits, another one step down.

    Returns ``(n', N)`` with n' ≤ n (pairs where either matrix cannot move that way are dropped)."""
    N = len(x)
    i, j = torch.randint(N, (n,), generator=generator), torch.randint(N, (n,), generator=generator)
    steps_i, steps_j = STEPS[x[i]], STEPS[x[j]]
    gain_i = torch.where(steps_i >= 0, _BITS[steps_i.clamp_min(0)] - _BITS[x[i]].unsqueeze(-1), torch.tensor(0.0))
    gain_j = torch.where(steps_j >= 0, _BITS[steps_j.clamp_min(0)] - _BITS[x[j]].unsqueeze(-1), torch.tensor(0.0))
    up, down = gain_i > 0, gain_j < 0
    keep = up.any(-1) & down.any(-1) & (i != j)
    i, j, steps_i, steps_j, up, down = i[keep], j[keep], steps_i[keep], steps_j[keep], up[keep], down[keep]
    if len(i) == 0:
        return x[None][:0]
    pick_up = torch.multinomial(up.double(), 1, generator=generator).squeeze(-1)
    pick_down = torch.multinomial(down.double(), 1, generator=generator).squeeze(-1)
    out = x.repeat(len(i), 1)
    rows = torch.arange(len(i))
    out[rows, i] = steps_i[rows, pick_up]
    out[rows, j] = steps_j[rows, pick_down]
    return out


def groups(layout: ModelLayout) -> list[torch.Tensor]:
    """Index tensors of the matrices of each block (layer) and of each kind (q_proj, …): the group moves' groups."""
    by: dict[tuple[str, object], list[int]] = {}
    for i, t in enumerate(layout.targets):
        by.setdefault(("layer", t.layer), []).append(i)
        by.setdefault(("kind", t.kind), []).append(i)
    return [torch.tensor(v, dtype=torch.int64) for v in by.values() if len(v) > 1]


def group_moves(x: torch.Tensor, layout_groups: Sequence[torch.Tensor]) -> torch.Tensor:
    """One field step (each field, each direction) for every matrix of a group at once (matrices whose field is at
    its end stay). Returns ``(M, N)``, no copy of ``x`` itself."""
    out = []
    for g in layout_groups:
        steps = STEPS[x[g]]  # (|g|, 2F)
        for m in range(steps.shape[1]):
            if bool((steps[:, m] >= 0).any()):
                y = x.clone()
                y[g] = torch.where(steps[:, m] >= 0, steps[:, m], x[g])
                out.append(y)
    return torch.stack(out) if out else x[None][:0]


def local_moves(x: torch.Tensor, layout_groups: Sequence[torch.Tensor], max_neighbours: int | None, n_swaps: int,
                generator: torch.Generator) -> torch.Tensor:
    """Every local move of ``(N,)`` ``x``: sampled single-field steps, bits-neutral swaps and group moves."""
    return torch.cat([neighbours(x, max_neighbours, generator), swaps(x, n_swaps, generator),
                      group_moves(x, layout_groups)])


def allocator_grid(allocate: Callable[[float], ModelConfig], bits_range: tuple[float, float],
                   step: float) -> torch.Tensor:
    """``(G, N)`` the distinct allocator configurations at budgets ``lo, lo + step, …, hi`` (neighbouring budgets
    often share one configuration)."""
    lo, hi = bits_range
    n = max(1, int((hi - lo) / step + 1e-9))
    seen: dict[tuple[int, ...], torch.Tensor] = {}
    for k in range(n + 1):
        x = allocate(min(hi, lo + k * step)).option_indices()
        seen.setdefault(tuple(x.tolist()), x)
    return torch.stack(list(seen.values()))
