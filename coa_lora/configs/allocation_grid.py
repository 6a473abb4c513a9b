"""Budget → configuration at slider speed: the allocator's exact answers on a fine budget grid, solved once per
damage table and cached on disk.

One exact allocation takes 0.4–5 s on SmolLM2; a slider must answer in well under a second. The grid is solved once
(shipped in ``data/precomputed`` for the embedded model, or computed by ``python -m coa_lora prepare``), and every
answer it gives is still exact, by this argument: let C be optimal at grid budget g. For any budget β ≤ g with
avg_bits(C) ≤ β, every configuration feasible at β is feasible at g, so none has less damage than C, and C is
feasible at β: C is optimal at β too. A budget no grid point covers this way is solved live (and remembered).

    grid = load_or_solve_grid(allocator, table.key)
    GridAllocator(allocator, grid).allocate(3.01)    # exact; instant when the grid covers it
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from coa_lora.configs.allocate import Allocation, Allocator, NotProvenOptimalWarning
from coa_lora.configs.model_config import ModelConfig
from coa_lora.progress import ProgressFn, report
from coa_lora.storage import SHIPPED_DATA, atomic_write_bytes, read_safetensors, write_safetensors

GRID_VERSION = "2"
GRID_STEP = 0.05  # bits between grid budgets: the app's slider step


@dataclass(frozen=True)
class AllocationGrid:
    """Exact allocations at ``budgets``.

    Attributes:
        budgets: ``(n,)`` float64, ascending.
        options: ``(n, N)`` int64 option indices (into ALL_OPTIONS) of each budget's optimal configuration.
        damage: ``(n,)`` float64 damage of each.
        avg_bits: ``(n,)`` float64 average bits of each (≤ its budget).
        gap: ``(n,)`` float64 proven relative damage gap of each answer: 0 where HiGHS proved it optimal, else the
            bound :class:`~coa_lora.Allocator` reports (a few budgets where its feasibility tolerance bites).
    """

    budgets: torch.Tensor
    options: torch.Tensor
    damage: torch.Tensor
    avg_bits: torch.Tensor
    gap: torch.Tensor

    def covering(self, budget: float) -> Optional[int]:
        """Index of the grid answer for ``budget``, or None.

        Among the proven-optimal answers at grid points g ≥ budget that fit within ``budget`` (optimal there too, see
        the module docstring), the one of least damage; failing that, a not-proven answer at exactly ``budget``."""
        ok = (self.budgets >= budget - 1e-12) & (self.avg_bits <= budget + 1e-12) & (self.gap == 0)
        if bool(ok.any()):
            idx = torch.nonzero(ok).flatten()
            return int(idx[self.damage[idx].argmin()])
        same = torch.nonzero((self.budgets - budget).abs() < 1e-9).flatten()
        return int(same[0]) if len(same) else None


def grid_budgets(low: float, high: float, step: float = GRID_STEP) -> list[float]:
    """The multiples of ``step`` inside [low, high] (rounded to 1e-9 so they print and compare cleanly)."""
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    return [round(k * step, 9) for k in range(first, last + 1)]


def solve_grid(allocator: Allocator, step: float = GRID_STEP, progress: Optional[ProgressFn] = None) -> AllocationGrid:
    """Solve every grid budget inside the allocator's feasible range (one exact MILP each)."""
    budgets = grid_budgets(*allocator.budget_range, step)
    answers, gaps = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotProvenOptimalWarning)  # recorded per budget in ``gap`` instead
        for i, b in enumerate(budgets):
            answer = allocator.allocate(b)
            answers.append(answer)
            gaps.append(0.0 if answer.exact else _gap(answer.status))
            report(progress, i + 1, len(budgets), f"allocating {b:.2f} bits")
    return AllocationGrid(
        torch.tensor(budgets, dtype=torch.float64),
        torch.stack([a.config.option_indices() for a in answers]),
        torch.tensor([a.damage for a in answers], dtype=torch.float64),
        torch.tensor([a.avg_bits for a in answers], dtype=torch.float64),
        torch.tensor(gaps, dtype=torch.float64),
    )


def _gap(status: str) -> float:
    """The relative gap an Allocator status states (``... gap of 1.9e-06 ...``); 1.0 when it states none."""
    import re

    found = re.search(r"gap (?:of )?([0-9.]+e?-?[0-9]*)", status)
    return float(found.group(1)) if found else 1.0


def shipped_dir() -> Path:
    """``data/precomputed`` of the source tree: damage tables and grids of the embedded model, keyed like the cache."""
    return SHIPPED_DATA / "precomputed"


def install_shipped(cache: Path) -> list[Path]:
    """Copy the shipped damage tables and grids into the cache folder where absent (they are keyed by a hash of the
    weights, so a file that does not belong to the loaded model is simply never found). Returns what was copied."""
    copied = []
    for src, sub in [(p, "damage") for p in shipped_dir().glob("damage-*.safetensors")] + \
                    [(p, "allocations") for p in shipped_dir().glob("grid-*.safetensors")]:
        dst = cache / sub / src.name
        if not dst.is_file():
            # Written whole and renamed: two processes starting on a fresh cache must never read a half-copied grid
            # (load_grid would call it unreadable and every budget would be solved live).
            atomic_write_bytes(dst, src.read_bytes())
            copied.append(dst)
    return copied


def grid_path(cache: Path, table_key: str, step: float = GRID_STEP) -> Path:
    return cache / f"grid-{table_key}-{step:g}.safetensors"


def load_grid(table_key: str, cache: Path, n_targets: int, step: float = GRID_STEP) -> Optional[AllocationGrid]:
    """The saved grid of the damage table ``table_key``, or None (missing or unreadable: never trusted)."""
    path = grid_path(cache, table_key, step)
    if not path.is_file():
        return None
    try:
        t, meta = read_safetensors(path)
        if meta.get("version") == GRID_VERSION and t["options"].shape[1] == n_targets:
            return AllocationGrid(t["budgets"], t["options"].long(), t["damage"], t["avg_bits"], t["gap"])
    except (ValueError, KeyError):
        pass
    return None


def load_or_solve_grid(allocator: Allocator, table_key: str, cache: Path, step: float = GRID_STEP,
                       progress: Optional[ProgressFn] = None) -> AllocationGrid:
    """The grid of the damage table ``table_key`` from ``cache`` (see :func:`install_shipped`), else solved and
    saved there."""
    grid = load_grid(table_key, cache, len(allocator.layout), step)
    if grid is not None:
        return grid
    grid = solve_grid(allocator, step, progress)  # a damaged entry is solved again and replaced, never trusted
    write_grid(grid_path(cache, table_key, step), grid, table_key, step)
    return grid


def write_grid(path: Path, grid: AllocationGrid, table_key: str, step: float) -> None:
    write_safetensors(path, {"budgets": grid.budgets, "options": grid.options.to(torch.int16),
                             "damage": grid.damage, "avg_bits": grid.avg_bits, "gap": grid.gap},
                      {"version": GRID_VERSION, "table": table_key, "step": f"{step:g}"})


def live_path(cache: Path, table_key: str) -> Path:
    """Where the live answers of the damage table ``table_key`` are kept (see :class:`GridAllocator`)."""
    return cache / f"live-{table_key}.safetensors"


def read_live(path: Path, layout) -> list[Allocation]:
    """The proven-optimal answers saved at ``path`` for ``layout``; [] when missing or unreadable (never trusted)."""
    try:
        t, meta = read_safetensors(path)
        if meta.get("version") != GRID_VERSION or t["options"].shape[1] != len(layout):
            return []
        return [Allocation(b, ModelConfig.from_option_indices(layout, o), d)
                for b, o, d in zip(t["budgets"].tolist(), t["options"].long(), t["damage"].tolist())]
    except (ValueError, KeyError):
        return []


def write_live(path: Path, answers: list[Allocation]) -> None:
    """Save the proven-optimal ``answers`` with those already at ``path`` (another process may have added some)."""
    exact = {round(a.budget, 9): a for a in read_live(path, answers[0].config.layout) + answers if a.exact}
    if exact:
        rows = [exact[b] for b in sorted(exact)]
        write_safetensors(path, {"budgets": torch.tensor([a.budget for a in rows], dtype=torch.float64),
                                 "options": torch.stack([a.config.option_indices() for a in rows]).to(torch.int16),
                                 "damage": torch.tensor([a.damage for a in rows], dtype=torch.float64)},
                          {"version": GRID_VERSION, "kind": "live answers"})


class GridAllocator:
    """An :class:`~coa_lora.Allocator` answered from an :class:`AllocationGrid` whenever that is exact.

    Without a grid (a model nobody prepared one for) every budget is solved live once; each live answer then covers
    the budgets below it by the same rule, so a slider that moves back and forth soon stops solving. With ``store``
    (a file, see :func:`live_path`) the proven-optimal live answers are kept on disk too, so the next process on the
    machine (the next training's search grid, the next explorer) does not solve them again: 17 budgets of a search
    grid cost 12-25 s even on the tiny model."""

    def __init__(self, allocator: Allocator, grid: Optional[AllocationGrid] = None, store: Optional[Path] = None):
        self.allocator, self.grid, self.store = allocator, grid, store
        self._live: list[Allocation] = read_live(store, allocator.layout) if store is not None else []
        self.live = 0  # answers that needed a live solve (for the bench and the tests)

    @property
    def budget_range(self) -> tuple[float, float]:
        return self.allocator.budget_range

    def allocate(self, budget: float) -> Allocation:
        lo, hi = self.allocator.budget_range
        if not lo <= budget <= hi:
            return self.allocator.allocate(budget)  # raises the allocator's own message
        if self.grid is not None:
            i = self.grid.covering(budget)
            if i is not None:
                config = ModelConfig.from_option_indices(self.allocator.layout, self.grid.options[i])
                gap = float(self.grid.gap[i])
                status = "optimal" if gap == 0 else f"feasible within a relative damage gap of {gap:.1e}"
                return Allocation(budget, config, float(self.grid.damage[i]), exact=gap == 0, status=status)
        covering = [a for a in self._live if a.budget >= budget and a.avg_bits <= budget + 1e-12
                    and getattr(a, "exact", True)]
        if covering:
            best = min(covering, key=lambda a: a.damage)
            return Allocation(budget, best.config, best.damage)
        self.live += 1
        answer = self.allocator.allocate(budget)
        self._live.append(answer)
        if self.store is not None and answer.exact:
            try:
                write_live(self.store, [answer])
            except OSError as exc:  # a read-only or full cache costs the next process a solve, not this answer
                warnings.warn(f"Could not keep the allocator's answer in {self.store}: {exc}", stacklevel=2)
        return answer
