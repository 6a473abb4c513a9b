"""The search inside a training run (METHOD.md §6): R + 1 training epochs with a search round between each two.

    train(wb, TrainOptions(search="search", rounds=3), "runs/NAME")   # the trainer drives a RunSearch

f1 of a configuration is the CURRENT adapter's next-token loss on the run's fixed probe windows (the probe play of
data/shakespeare_split.json, which neither training nor any reported metric uses; the same windows every round); f2
is its exact average bits. Before each round the training set's f1 is re-measured and every other configuration's
f1 moves by the change measured at its bits (:meth:`~coa_lora.search.state.SearchState.refresh`), so the GP, the
selection and the hypervolumes compare losses of one adapter (a configuration measured rounds ago under an older
adapter would otherwise keep its stale, higher loss and never be selected again) at a round cost of a few training
steps. The state is saved in the run folder after every single evaluation; the hypervolume plane fixed by the initial
set goes into run.json.

Resume: the trainer checkpoints the adapter at a round's step before the round starts, so a run killed during a round
restarts from that checkpoint, finds the round open in search.json, and evaluates only the proposals it had not;
the GP, the proposals and the f1 values are deterministic, so the resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from coa_lora.configs.model_config import ModelConfig
from coa_lora.progress import ProgressFn, report
from coa_lora.runs import read_run_info, read_search, write_run_info, write_search
from coa_lora.search.candidates import allocator_grid
from coa_lora.search.rounds import MODES, begin_round, finish_round
from coa_lora.search.state import SearchSettings, SearchState, within

SEARCH_MODES = ("off",) + MODES
LIVE_GRID_BUDGETS = 16  # grid intervals over the plane when no pre-solved allocation grid exists for the model


def round_steps(steps: int, rounds: int) -> list[int]:
    """The step counts after which rounds 1..R run: the ``steps`` split into R + 1 near-equal epochs."""
    return [round(r * steps / (rounds + 1)) for r in range(1, rounds + 1)]


@contextmanager
def _threads(n: int):
    # The acquisition works on small tensors: one intra-op thread is fastest (bench/search_round.py), and extra
    # threads contend with nothing useful.
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def probe_loss(model: torch.nn.Module, windows: torch.Tensor, batch: int) -> float:
    """Mean next-token loss of ``model`` over ``(n, seq)`` token windows, in batches of ``batch`` (no grad)."""
    with torch.no_grad():
        parts = [model(input_ids=w, labels=w).loss.item() * len(w) for w in windows.split(batch)]
    return sum(parts) / len(windows)


class RunSearch:
    """A run's search: the state on disk, the f1 measurement, and the rounds due at each step.

    Args:
        wb: the run's :class:`~coa_lora.Workbench` (its allocator draws the ``random`` ablation's configurations).
        coa: the adapter being trained (:class:`~coa_lora.lora.adapter.CoALoRAModel`).
        activate: switches the model to a configuration (the trainer's, which also handles LQ bases).
        folder: the run folder.
        options: the run's TrainOptions (``search``, ``rounds``, ``segments``, ``proposals``, ``seed``, ``steps``).
        probe: ``(n, seq)`` the fixed held-out windows f1 is measured on.
        batch: windows per forward pass.
    """

    def __init__(self, wb, coa, activate: Callable[[ModelConfig], None], folder: str | Path, options,
                 probe: torch.Tensor, batch: int, progress: ProgressFn | None = None) -> None:
        self.wb, self.coa, self.activate, self.folder = wb, coa, activate, Path(folder)
        self.mode, self.options, self.probe, self.batch, self.progress = options.search, options, probe, batch, progress
        self.settings = SearchSettings(segments=options.segments, proposals=options.proposals, seed=options.seed)
        self.schedule = round_steps(options.steps, options.rounds)
        self.state: SearchState | None = None
        self._grid: torch.Tensor | None = None

    def f1(self, configs: Sequence[ModelConfig]) -> list[float]:
        """The current adapter's probe loss under each configuration (dropout off; training mode is restored)."""
        self.coa.train(False)
        out = []
        try:
            for config in configs:
                with torch.no_grad():
                    self.activate(config)
                out.append(probe_loss(self.coa.model, self.probe, self.batch))
        finally:
            self.coa.train(True)
        return out

    def save(self, state: SearchState) -> None:
        write_search(self.folder, state)

    def open(self, initial: Sequence[ModelConfig]) -> list[ModelConfig]:
        """Load the run's search, or evaluate the initial set with the current adapter (round 0) and fix the
        hypervolume plane in run.json. Returns the training set."""
        saved = read_search(self.folder)
        self.state = None if saved is None else SearchState.from_dict(saved, self.wb.layout)
        if self.state is None:
            report(self.progress, 0, self.options.steps, f"search: evaluating {len(initial)} initial configurations")
            self.state = SearchState.start(self.wb.layout, initial, self.f1, self.settings,
                                           keep_initial=self.mode == "frozen")
            self.save(self.state)
        info = read_run_info(self.folder)
        if info.search_plane is None:  # also after a kill between saving the state and this write
            write_run_info(self.folder, dataclasses.replace(info, search_plane=self.state.plane.to_dict()))
        return self.state.training_set()

    def due(self, step: int) -> bool:
        """Whether a round has to run before training step ``step`` (0-based)."""
        completed = sum(r["mode"] != "initial" for r in self.state.rounds)
        return completed < len(self.schedule) and step >= self.schedule[completed]

    def run_round(self, step: int) -> list[ModelConfig]:
        """Run (or finish, after a kill) the round due at ``step``; returns the new training set."""
        state = self.state
        r = state.round + (0 if state.round_open else 1)

        def progress(done: int, total: int, message: str) -> None:
            report(self.progress, step, self.options.steps, f"search round {r}: {message} {done}/{total}")

        if not state.round_open:
            progress(0, int(state.selected.sum()), "re-measuring the training set")
            t0 = time.perf_counter()
            state.refresh(self.f1, "train", for_round=state.round + 1, limit=self.settings.refresh_limit)
            seconds_refresh = time.perf_counter() - t0
            with _threads(1):
                search = self.mode == "search"
                begin_round(state, self.mode, self._allocate, progress, self.grid() if search else None,
                            self.wb.damage_table().for_layout(self.wb.layout).values if search else None)
            state.pending_timings["seconds_refresh"] = seconds_refresh
            self.save(state)
        finish_round(state, self.f1, self.save, progress)
        return state.training_set()

    def finish(self, step: int) -> None:
        """After the last epoch: re-measure the pool with the final adapter and log it as a ``final`` round (no
        proposals, no re-selection: the training set stays the one the last epoch trained on), so the last epoch's
        effect shows in the hypervolumes too. Idempotent across resumes."""
        state = self.state
        if state.rounds[-1]["mode"] == "final":
            return
        report(self.progress, step, self.options.steps, "search: re-measuring the training set with the final adapter")
        t0 = time.perf_counter()
        state.round += 1
        state.refresh(self.f1, "train")
        state.close_round("final", 0, {"seconds_refresh": time.perf_counter() - t0}, select=False)
        self.save(state)

    def grid(self) -> torch.Tensor:
        """``(G, N)`` the allocator's distinct configurations every ``grid_step`` bits over the plane: instant from
        the pre-solved allocation grid (shipped for the embedded model), else solved once per run."""
        if self._grid is None:
            lo, hi = self.state.plane.bits_range
            allocator = self.wb.grid_allocator()
            if allocator.grid is not None:  # every pre-solved answer inside the plane: no solver call at all
                grid = allocator.grid
                self._grid = torch.unique(grid.options[within(grid.avg_bits, (lo, hi))], dim=0)
            else:  # solved live, 0.4-5 s a budget on SmolLM2: 17 budgets over the plane, not 96
                step = max(self.settings.grid_step, (hi - lo) / LIVE_GRID_BUDGETS)
                self._grid = allocator_grid(self._allocate, (lo, hi), step)
        return self._grid

    def _allocate(self, budget: float) -> ModelConfig:
        return self.wb.grid_allocator().allocate(budget).config

