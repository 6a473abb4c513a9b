"""Budget → configuration: an exact multiple-choice knapsack solved with scipy's HiGHS ``milp`` (METHOD.md §3).

minimise Σ_i damage[i, c_i]  subject to  Σ_i numel_i · bits(c_i) ≤ β · Σ_i numel_i,  one option c_i per matrix.

Options that are dominated on a matrix (another option has no more bits and no more damage, one strictly less) can
never be needed by an optimum, so each matrix keeps only its Pareto-efficient options; that shrinks 432 columns to a
few dozen and makes most budgets solve in a second or a few on SmolLM2 (not all: near-ties make some high budgets
slow, e.g. 128 s at 6.0 bits on the unweighted table, measured on a busy 2-core machine). Feasibility is checked in
exact integer arithmetic (every bits-per-weight is a multiple of 1/16384), never trusting the solver's float tolerance.

HiGHS's status is read, not assumed: an answer it did not prove optimal (it stopped at ``time_limit`` or
``node_limit``) is returned with ``exact=False`` and the solver's reason in ``status``, a
:class:`NotProvenOptimalWarning` is issued, and it is not cached, so asking again (with more time) solves again.
When HiGHS's optimum overshoots the exact budget within its float tolerance, the budget row is tightened and solved
again; that answer is proven only within the relative damage gap to the first (overshooting) optimum, a lower bound,
and is reported the same way with the gap in ``status`` (SmolLM2: 1.9e-6 at 4.35 bits).
"""
from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from coa_lora.configs.model_config import ModelConfig, ModelLayout
from coa_lora.quant.space import ALL_OPTIONS, QuantOption

BITS_DENOMINATOR = 16384  # B0·B1 ≤ 64·256: every bits_per_weight × 16384 is an integer.
# Relative damage gap below which an answer found after tightening the budget row still counts as exact (the
# objective's own float precision).
GAP_TOLERANCE = 1e-9


class NotProvenOptimalWarning(RuntimeWarning):
    """HiGHS returned a feasible allocation without proving it optimal (it stopped at its time or node limit)."""


@dataclass(frozen=True)
class Allocation:
    """The allocator's answer for one budget.

    ``exact`` is True when HiGHS proved the configuration optimal (least damage within the budget); False when it
    stopped early with a feasible one, whose reason (and remaining relative gap) ``status`` gives.
    """

    budget: float
    config: ModelConfig
    damage: float
    exact: bool = True
    status: str = "optimal"

    @property
    def avg_bits(self) -> float:
        return self.config.avg_bits


def _pareto_options(damage: np.ndarray, bits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Indices (into ``allowed``) of options not dominated in (bits, damage); ties keep the lowest index."""
    order = np.lexsort((allowed, damage, bits))  # by bits, then damage, then index
    keep, best = [], np.inf
    for j in order:
        if damage[j] < best:
            keep.append(j)
            best = damage[j]
    return np.asarray(keep)


class Allocator:
    """Solves budget → configuration for one model's damage table.

    Args:
        layout: the model's layout.
        damage: ``(n_targets, n_options)`` damage of ``options[k]`` on target i.
        options: the options the columns of ``damage`` stand for (default: all 432).
    """

    def __init__(self, layout: ModelLayout, damage: torch.Tensor, options: Sequence[QuantOption] = ALL_OPTIONS):
        damage = torch.as_tensor(damage, dtype=torch.float64)
        if damage.shape != (len(layout), len(options)):
            raise ValueError(
                f"Damage table shape {tuple(damage.shape)} does not match ({len(layout)}, {len(options)})."
            )
        self.layout = layout
        self.options = tuple(options)
        self._damage = damage.numpy()
        self._bits_int = np.array([round(o.bits_per_weight * BITS_DENOMINATOR) for o in self.options], dtype=np.int64)
        self._numel = layout.numels.numpy()
        # Normalise the objective so HiGHS's tolerances act on comparable magnitudes across models.
        self._scale = len(layout) / max(float(self._damage.max(1).sum()), 1e-300)
        allowed = np.arange(len(self.options))
        self._candidates = [_pareto_options(row, self._bits_int, allowed) for row in self._damage]
        self.min_bits = float((self._numel * self._bits_int.min()).sum() / self._numel.sum() / BITS_DENOMINATOR)
        self.max_bits = float((self._numel * self._bits_int.max()).sum() / self._numel.sum() / BITS_DENOMINATOR)
        self._solved: dict[float, Allocation] = {}  # budget -> answer: a slider revisiting a budget is instant

    @property
    def budget_range(self) -> tuple[float, float]:
        return self.min_bits, self.max_bits

    def allocate(self, budget: float, time_limit: float = 60.0, node_limit: int | None = None) -> Allocation:
        """The configuration of least damage whose average bits do not exceed ``budget``.

        ``time_limit`` (seconds) and ``node_limit`` (branch-and-bound nodes; unlike time, reproducible across
        machines) bound each of HiGHS's solves; stopped early, the answer is feasible but ``exact`` is False.
        """
        if not (self.min_bits <= budget <= self.max_bits):
            raise ValueError(
                f"Budget {budget} bits is outside the feasible range [{self.min_bits:.4f}, {self.max_bits:.4f}] "
                "bits per weight."
            )
        if budget in self._solved:
            return self._solved[budget]
        limits = {"time_limit": time_limit, **({} if node_limit is None else {"node_limit": node_limit})}
        total = int(self._numel.sum())
        limit = int(np.floor(budget * BITS_DENOMINATOR * total + 1e-6))  # exact integer capacity
        unit = 1.0 / (BITS_DENOMINATOR * total)  # one bit of the integer capacity, in average bits
        relaxed = None
        for attempt in range(12):
            # HiGHS meets the budget row only within its feasibility tolerance (~1e-7), far above one unit (~1e-12
            # bits on SmolLM2), so an optimum can overshoot the exact capacity by a few units. Tighten by 10, 100,
            # 1000 … units until the answer fits exactly.
            slack = 0.0 if attempt == 0 else unit * 10 ** attempt
            choice, status = self._solve(limit * unit - slack, limits)
            used = int((self._numel * self._bits_int[choice]).sum())
            dmg = float(self._damage[np.arange(len(choice)), choice].sum())
            if attempt == 0:  # the untightened optimum bounds the true one from below, if HiGHS proved it
                relaxed = dmg if status == "optimal" else None
            if used <= limit:
                config = ModelConfig(self.layout, tuple(self.options[k] for k in choice))
                if status == "optimal" and attempt > 0 and relaxed is None:
                    status = (f"optimal for the budget row tightened by {slack:.1e} bits, with no proven bound for "
                              "the budget asked (HiGHS stopped early on it)")
                elif status == "optimal" and attempt > 0 and (dmg - relaxed) / max(dmg, 1e-300) > GAP_TOLERANCE:
                    # Proven only within the gap: the true optimum lies between the relaxed and this damage.
                    status = (f"feasible within a relative damage gap of {(dmg - relaxed) / max(dmg, 1e-300):.1e} "
                              f"(the budget row was tightened by {slack:.1e} bits past HiGHS's feasibility tolerance)")
                answer = Allocation(budget, config, dmg, exact=status == "optimal", status=status)
                if answer.exact:
                    self._solved[budget] = answer
                else:
                    warnings.warn(f"The allocation at {budget} bits is feasible but not proven optimal: {status}.",
                                  NotProvenOptimalWarning, stacklevel=2)
                return answer
        raise RuntimeError(f"HiGHS kept exceeding the budget {budget}; this should not happen, please report it.")

    def _solve(self, capacity: float, limits: dict) -> tuple[np.ndarray, str]:
        """Option index per matrix minimising damage with Σ weight·bits ≤ capacity (in average bits), and HiGHS's
        status of the final MILP (``"optimal"`` when proven).

        Exact, in three steps that keep HiGHS's problems small:
        1. LP relaxation: lower bound LB and duals (u_i per matrix, λ ≤ 0 for the budget). Every feasible x has
           cost(x) ≥ LB + Σ rc·x with reduced costs rc = cost − u_row − λ·weight ≥ 0.
        2. A "core" MILP over the few columns of least reduced cost per matrix (plus each matrix's lightest, so it is
           feasible): its optimum is a feasible solution, hence an upper bound UB, usually within a hair of LB.
        3. A column with rc > UB − LB can never be in an optimum (it alone would push the cost above UB), so the final
           MILP over the remaining columns is exact — and typically has a few hundred columns instead of ~20,000.
        """
        m = len(self._candidates)
        cols = np.concatenate(self._candidates)
        rows = np.repeat(np.arange(m), [len(c) for c in self._candidates])
        # Subtracting each matrix's least damage changes no argmin (one option per matrix); the rescaling below
        # makes the objective O(1), so HiGHS's absolute tolerances stay meaningful at every budget.
        cost = self._damage[rows, cols] - self._damage.min(1)[rows]
        cost = cost / max(cost.max(), 1e-300)
        weight = (self._numel[rows] / self._numel.sum()) * (self._bits_int[cols] / BITS_DENOMINATOR)
        lp = _lp(rows, cost, weight, capacity, m)
        if lp.status == 0 and lp.fun > 0:
            cost = cost / lp.fun
            lp = _lp(rows, cost, weight, capacity, m)
        keep = np.ones(rows.size, dtype=bool)
        if lp.status == 0:
            reduced = cost - lp.eqlin.marginals[rows] - lp.ineqlin.marginals[0] * weight
            core = _core_columns(rows, reduced, weight, m)
            # Any feasible core solution bounds the optimum from above, proven optimal or not; none: no fixing.
            core_choice, _ = _milp(rows[core], cost[core], weight[core], capacity, m, limits)
            if core_choice is not None:
                upper = float(cost[core][core_choice].sum())
                keep = reduced <= (upper - lp.fun) + 1e-7 * max(1.0, abs(upper))
        picked, status = _milp(rows[keep], cost[keep], weight[keep], capacity, m, limits)
        if picked is None:
            raise RuntimeError(f"HiGHS found no allocation ({status}); give it more time or nodes ({limits}).")
        choice = np.empty(m, dtype=np.int64)
        choice[rows[keep][picked]] = cols[keep][picked]
        return choice, status


def _lp(rows, cost, weight, capacity, m):
    one_each = sp.csr_array((np.ones(rows.size), (rows, np.arange(rows.size))), shape=(m, rows.size))
    return linprog(cost, A_ub=weight[None, :], b_ub=[capacity], A_eq=one_each, b_eq=np.ones(m), bounds=(0, 1),
                   method="highs")


@contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """HiGHS's C++ core prints diagnostics straight to file descriptor 1 even with ``disp=False``; route them to
    /dev/null for the solve so they never mix with a command's output (e.g. ``--json``)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _milp(rows, cost, weight, capacity, m, limits: dict) -> tuple[np.ndarray | None, str]:
    """Indices of the chosen columns (one per matrix) of the MILP over the given columns (None: HiGHS found no
    feasible point within ``limits``), and ``"optimal"`` or HiGHS's reason for stopping without proving it."""
    one_each = sp.csr_array((np.ones(rows.size), (rows, np.arange(rows.size))), shape=(m, rows.size))
    with _native_stdout_silenced():
        res = milp(
            cost,
            integrality=np.ones(rows.size),
            bounds=Bounds(0, 1),
            constraints=[LinearConstraint(one_each, 1, 1), LinearConstraint(weight[None, :], -np.inf, capacity)],
            options={"mip_rel_gap": 0.0, **limits},
        )
    if res.x is None:
        return None, res.message
    if res.status == 0:
        return np.flatnonzero(res.x > 0.5), "optimal"
    gap = getattr(res, "mip_gap", None)
    gap_text = f"; relative gap {gap:.3g}" if gap is not None and np.isfinite(gap) else ""
    return np.flatnonzero(res.x > 0.5), f"{res.message} ({limits}{gap_text})"


def _core_columns(rows, reduced, weight, m: int, per_matrix: int = 4) -> np.ndarray:
    """Mask: each matrix's ``per_matrix`` columns of least reduced cost, and its lightest column."""
    order = np.lexsort((reduced, rows))
    start = np.searchsorted(rows[order], np.arange(m))
    rank = np.arange(rows.size) - np.repeat(start, np.diff(np.append(start, rows.size)))
    core = np.zeros(rows.size, dtype=bool)
    core[order[rank < per_matrix]] = True
    lightest = np.lexsort((weight, rows))
    core[lightest[np.searchsorted(rows[lightest], np.arange(m))]] = True
    return core


def allocate(layout: ModelLayout, damage: torch.Tensor, budget: float) -> Allocation:
    """One-shot convenience: ``Allocator(layout, damage).allocate(budget)``."""
    return Allocator(layout, damage).allocate(budget)
