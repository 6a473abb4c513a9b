"""One loaded model shared by every user of the explorer (and by a notebook): exact allocation at slider speed,
the adapters of trained runs, and live evaluation — safe to call from several threads at once.

The model is shared and configurations are applied to it in place, so everything that touches its weights runs under
one lock, a queue in arrival order (:class:`~coa_lora.model_queue.ModelQueue`): two users who pick different budgets
at the same moment are served one after the other, each under their own configuration and adapter, and a waiting job
knows how many are ahead of it. Allocation from the grid and reading runs need no lock.

    ex = Explorer.load("smollm2")
    alloc = ex.allocate(3.0)                                    # exact, from the pre-solved grid
    ex.evaluate("date_understanding", alloc.config, run="data/reference/coa_search", limit=50)
    ex.evaluate("date_understanding", alloc.config, limit=50)   # the quantized base, every adapter off
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from coa_lora.configs.allocate import Allocation
from coa_lora.configs.allocation_grid import GridAllocator
from coa_lora.configs.model_config import ModelConfig
from coa_lora.deploy.packed import FORMAT_VERSION as PACKED_FORMAT_VERSION
from coa_lora.deploy.packed import save_packed
from coa_lora.deploy.packed_load import load_packed
from coa_lora.evaluation.evaluator import Evaluator, Result, default_cache_dir, model_as
from coa_lora.evaluation.generation import GenerateOptions, generate, reference_logprobs
from coa_lora.evaluation.loglik import EvaluationCancelled, StopFn
from coa_lora.evaluation.scoring import TaskResult
from coa_lora.lora.options import TrainOptions
from coa_lora.lora.trainer import probe_windows
from coa_lora.lora.workbench import DEFAULT_WEIGHTING, Workbench
from coa_lora.model_queue import ModelQueue
from coa_lora.progress import ProgressFn
from coa_lora.quant.space import ALL_OPTIONS, QuantOption
from coa_lora.runs import read_run_info
from coa_lora.search.in_run import probe_loss
from coa_lora.search.run_view import RunView, open_run
from coa_lora.storage import write_json

# Results of the deployed packed model are cached under the packed format they were measured on: a new format version
# (other bytes, another loader) does not serve an old one's numbers.
PACKED_RUNTIME = f"packed-v{PACKED_FORMAT_VERSION}"


@dataclass(frozen=True)
class Generation:
    """Tokens a model generated, their text pieces, each one's log-probability under the unquantized reference."""

    tokens: list[int]
    pieces: list[str]  # the text each token adds (for colouring; a character split over tokens may show once as �)
    reference_logprobs: list[float]
    seconds: float
    text: str  # the whole text, decoded at once

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class Instantiation:
    """A configuration put on the model, with what it costs."""

    config: ModelConfig
    seconds: float  # time to swap the quantized weights in (cold: quantize every changed matrix; warm: cached)


class Explorer:
    """A :class:`~coa_lora.Workbench` with a lock, a result cache, the allocation grid and the attached adapter."""

    def __init__(self, workbench: Workbench, eval_cache_dir: Optional[Path] = None,
                 weighting: str = DEFAULT_WEIGHTING):
        self.wb = workbench
        self.weighting = weighting
        self.lock = ModelQueue()  # the model's one user at a time, in arrival order
        self.evaluator = Evaluator(workbench, cache_dir=eval_cache_dir)
        self._grid: Optional[GridAllocator] = None
        self._attached: Optional[tuple[Path, object]] = None  # (run folder, CoALoRAModel)
        self._presets: dict[str, dict] = {}  # preset probe losses by adapter, when results are not kept on disk
        self._deployed: Optional[tuple[str, torch.nn.Module]] = None  # (key, packed model): the last one deployed

    @classmethod
    def load(cls, model: str = "smollm2", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             eval_cache_dir: Optional[Path] = None) -> "Explorer":
        """``eval_cache_dir`` defaults to ``<coa_lora cache>/evals`` (results survive restarts)."""
        wb = Workbench.load(model, device=device, dtype=dtype)
        return cls(wb, eval_cache_dir if eval_cache_dir is not None else default_cache_dir())

    @property
    def layout(self):
        return self.wb.layout

    # ----- allocation ---------------------------------------------------------------------------------------------
    def allocator(self, progress: Optional[ProgressFn] = None, solve_grid: bool = False) -> GridAllocator:
        """The grid-backed allocator: damage table and grid from disk (shipped for the embedded model, or made by
        ``python -m coa_lora prepare``). Without a saved grid, budgets are solved live as asked, unless
        ``solve_grid`` (then the whole grid is solved now, with ``progress``, and saved)."""
        if self._grid is None or (solve_grid and self._grid.grid is None):
            with self.lock:  # the Fisher weighting runs the model on a cache miss
                self._grid = self.wb.grid_allocator(self.weighting, progress, solve_grid)
        return self._grid

    @property
    def budget_range(self) -> tuple[float, float]:
        return self.allocator().budget_range

    def allocate(self, budget: float) -> Allocation:
        """The exact least-damage configuration within ``budget`` average bits (instant on the grid)."""
        return self.allocator().allocate(budget)

    def damage(self, config: ModelConfig) -> float:
        """Total (weighted) damage of ``config``, the allocator's objective."""
        return self.wb.damage_table(self.weighting).damage(config.option_indices())

    def uniform_counterpart(self, config: ModelConfig) -> ModelConfig:
        """The uniform configuration (one option everywhere) of the most bits not above ``config``'s average (ties:
        the least damage), i.e. what a user without an allocator would deploy in the same memory."""
        uniform_damage = self.wb.damage_table(self.weighting).values.sum(0)  # (432,): option k on every matrix
        fitting = [k for k, o in enumerate(ALL_OPTIONS) if o.bits_per_weight <= config.avg_bits + 1e-12]
        best = max(fitting or [min(range(len(ALL_OPTIONS)), key=lambda k: ALL_OPTIONS[k].bits_per_weight)],
                   key=lambda k: (ALL_OPTIONS[k].bits_per_weight, -float(uniform_damage[k])))
        return ModelConfig.uniform(self.layout, ALL_OPTIONS[best])

    # ----- runs ---------------------------------------------------------------------------------------------------
    def open_run(self, folder: str | Path) -> RunView:
        """A run of THIS model (another model's run is refused in one sentence)."""
        return open_run(folder, weight_hash=self.wb.weight_hash, model_id=self.layout.model_id)

    def searched_configuration(self, view: RunView, budget: float) -> tuple[ModelConfig, float]:
        """From the run's searched training set: the configuration of least probe loss within ``budget`` bits."""
        if not view.has_search:
            raise ValueError(f"Run {view.name} has no configuration search; use the allocator.")
        searched = view.searched_set(self.layout)
        chosen = [(c, f) for c, f in searched if c.avg_bits <= budget + 1e-12]
        if not chosen:
            low = min(c.avg_bits for c, _ in searched)
            raise ValueError(f"Run {view.name}'s searched set has no configuration within {budget:.2f} bits; its "
                             f"smallest has {low:.3f} bits.")
        return min(chosen, key=lambda cf: cf[1])

    # ----- the shared model ---------------------------------------------------------------------------------------
    def instantiate(self, config: Optional[ModelConfig], timeout: float = -1) -> Optional[Instantiation]:
        """Put ``config`` on the model (None: the unquantized reference) and time it.

        ``timeout`` seconds to wait for the model (-1: as long as it takes); None when another user's evaluation
        still holds it then (an evaluation applies its own configuration anyway)."""
        if not self.lock.acquire(timeout=timeout):
            return None
        try:
            t0 = time.perf_counter()
            if config is None:
                self.wb.qmodel.restore_()
            else:
                self.wb.qmodel.apply_(config)
            return Instantiation(config, time.perf_counter() - t0)
        finally:
            self.lock.release()

    def adapter(self, run: str | Path):
        """The trained adapter of ``run``, wrapped around the model (any other adapter is unwrapped first)."""
        from coa_lora.lora.trainer import load_trained

        folder = Path(run).expanduser().resolve()
        with self.lock:
            if self._attached is not None and self._attached[0] == folder:
                return self._attached[1]
            view = self.open_run(folder)
            if view.method == "lqlora":
                raise ValueError(f"Run {view.name} is LQ-LoRA: its base weights Q(W - L1L2) differ per "
                                 f"configuration, so it cannot be evaluated on the shared model.")
            if not view.has_checkpoint:
                raise ValueError(f"Run {view.name} has no checkpoint yet; wait for its first one.")
            if self._attached is not None:
                self._attached[1].remove_()
                self._attached = None
            coa, _, _ = load_trained(self.wb, folder)
            self._attached = (folder, coa)
            return coa

    def evaluate(self, task: str, config: Optional[ModelConfig], run: Optional[str | Path] = None,
                 limit: Optional[int] = None, progress: Optional[ProgressFn] = None,
                 should_stop: Optional[StopFn] = None, on_wait: Optional[Callable[[int], None]] = None,
                 on_items: Optional[Callable[[TaskResult], None]] = None, deployed: bool = False) -> Result:
        """``task`` under ``config`` (None: unquantized) with ``run``'s adapter, or with every adapter off.

        Cached by the evaluator (memory and disk); a cancelled run raises ``EvaluationCancelled``, also while it
        waits for the model. ``on_wait(ahead)`` is called while other jobs hold or wait for the model before it;
        ``on_items(result so far)`` as items complete (multiple choice), so a view can draw a running accuracy.
        ``deployed``: evaluate the configuration as it is deployed (:meth:`deployed_model`) instead of the shared
        model under it; cached apart."""
        if deployed and config is None:
            raise ValueError("The unquantized reference has nothing to deploy packed: pick a configuration.")
        self._wait_for_model(should_stop, on_wait)
        try:
            adapter = self.adapter(run) if run is not None else None
            if deployed:
                return self.evaluator.run(task, config, adapter.fingerprint() if adapter is not None else None, limit,
                                          progress, should_stop, on_items=on_items,
                                          deployed=lambda: self._deploy(config, adapter), runtime=PACKED_RUNTIME)
            return self.evaluator.run(task, config, limit=limit, progress=progress, should_stop=should_stop,
                                      adapter=adapter, on_items=on_items)
        finally:
            self.lock.release()

    def generate(self, ids: torch.Tensor, config: Optional[ModelConfig], run: Optional[str | Path] = None,
                 options: GenerateOptions = GenerateOptions(), on_token: Optional[Callable[[list[int]], None]] = None,
                 should_stop: Optional[StopFn] = None, on_wait: Optional[Callable[[int], None]] = None,
                 deployed: bool = False) -> Generation:
        """Continue ``ids`` ``(1, n)`` under ``config`` (None: unquantized) with ``run``'s adapter or every adapter off;
        ``on_token(tokens so far)`` after each token; then each token's log-probability under the unquantized reference.

        ``deployed``: generate with the configuration as it is deployed (:meth:`deployed_model`: exported packed, the
        adapter folded, loaded back with its weights kept packed) instead of the shared model under it; the same
        text, at the packed runtime's speed. The model is held for the whole generation (other sessions queue)."""
        if deployed and config is None:
            raise ValueError("The unquantized reference has nothing to deploy packed: pick a configuration.")
        self._wait_for_model(should_stop, on_wait)
        try:
            adapter = self.adapter(run) if run is not None else None
            tokens: list[int] = []
            with (nullcontext() if deployed else model_as(self.wb, config, adapter)):
                model = self._deploy(config, adapter) if deployed else self.wb.model
                t0 = time.perf_counter()  # tokens/s of the generation itself, not of swapping the weights in
                for token in generate(model, ids, options, self.wb.tokenizer.eos_token_id, should_stop):
                    tokens.append(token)
                    if on_token is not None:
                        on_token(list(tokens))
            seconds = time.perf_counter() - t0
            with model_as(self.wb, None):
                logprobs = reference_logprobs(self.wb.model, ids, tokens).tolist()
        finally:
            self.lock.release()
        # Each piece is the text the token adds in context: a character split over byte-level tokens is not garbled.
        decode = self.wb.tokenizer.decode
        pieces = [decode(tokens[:i + 1])[len(decode(tokens[:i])):] for i in range(len(tokens))]
        return Generation(tokens, pieces, logprobs, seconds, decode(tokens))

    def deployed_model(self, config: ModelConfig, run: Optional[str | Path] = None) -> torch.nn.Module:
        """``config`` as it is deployed: exported by :func:`~coa_lora.save_packed` with ``run``'s adapter folded for it
        (or none), and loaded back by :func:`~coa_lora.load_packed` with its weights kept packed (bitsandbytes' NF4
        kernel where it applies), on the workbench's device. The export is cached on disk by model, configuration and
        adapter; one deployed model is held at a time (the last asked for)."""
        self._wait_for_model(None, None)
        try:
            return self._deploy(config, self.adapter(run) if run is not None else None)
        finally:
            self.lock.release()

    def _deploy(self, config: ModelConfig, adapter) -> torch.nn.Module:
        """(The model held.) The packed model of ``config`` with ``adapter``: the one held, the one on disk, or new."""
        import getpass
        import hashlib
        import shutil
        import tempfile

        digest = hashlib.sha256(config.key().encode()).hexdigest()[:16]
        key = f"{self.wb.weight_hash[:16]}-{digest}-{adapter.fingerprint() if adapter is not None else 'base'}"
        if self._deployed is not None and self._deployed[0] == key:
            return self._deployed[1]
        self._deployed = None  # the previous packed model is let go before the next is built
        cache = self.evaluator.cache_dir or Path(tempfile.gettempdir()) / f"coa_lora-{getpass.getuser()}"
        root = Path(cache) / "deployed"
        folder = root / key
        device = next(self.wb.model.parameters()).device
        try:
            model = load_packed(folder, device=device, weights="packed")
        except ValueError:  # not exported yet, or a folder that does not load (never trusted): exported again whole
            shutil.rmtree(folder, ignore_errors=True)
            try:
                # The export sets the adapter (and so the shared model) to ``config``: put back what was there.
                with model_as(self.wb, config, adapter):
                    save_packed(self.wb, config, folder, adapter=adapter)
            except ValueError:
                if not folder.is_dir():
                    raise
                # else another explorer on this cache exported the same at the same moment: load theirs
            model = load_packed(folder, device=device, weights="packed")
        for old in root.iterdir():  # one export on disk per explorer cache: each is the size of the model's weights
            if old.is_dir() and old.name != key and not old.name.startswith("."):  # (not another's export staging)
                shutil.rmtree(old, ignore_errors=True)
        self._deployed = (key, model)
        return model

    def preset_losses(self, run: str | Path, presets: Mapping[str, QuantOption],
                      should_stop: Optional[StopFn] = None) -> dict[str, tuple[float, float]]:
        """``{name: (average bits, probe loss)}`` of each uniform preset under ``run``'s final adapter, measured as the
        run's search measured f1 (its probe windows, its batch size), so presets sit among the run's points.

        Cached on disk by model, adapter and probe windows (a second call, or another session, reads the file)."""
        folder = Path(run)
        self._wait_for_model(should_stop, None)
        try:
            coa = self.adapter(folder)
            options = TrainOptions.saved(read_run_info(folder).hyper)
            key = f"{self.wb.weight_hash[:16]}-{coa.fingerprint()}-{options.seq_length}x{options.probe_windows}"
            cache = self.evaluator.cache_dir  # None: this process only, as the evaluator's results
            path = None if cache is None else Path(cache) / "presets" / f"{key}.json"
            found = self._presets.setdefault(key, {})
            if path is not None and path.is_file():
                found.update(json.loads(path.read_text()))
            missing = [name for name in presets if name not in found]
            if missing:
                windows = probe_windows(self.wb.tokenizer, options.seq_length, options.probe_windows)
                for name in missing:
                    if should_stop is not None and should_stop():
                        raise EvaluationCancelled("Cancelled while measuring the presets.")
                    config = ModelConfig.uniform(self.layout, presets[name])
                    with model_as(self.wb, config, coa):
                        found[name] = [config.avg_bits, probe_loss(self.wb.model, windows, options.batch_size)]
                if path is not None:
                    write_json(path, found)
        finally:
            self.lock.release()
        return {name: tuple(found[name]) for name in presets}

    def _wait_for_model(self, should_stop: Optional[StopFn], on_wait: Optional[Callable[[int], None]]) -> None:
        """Take the model in turn, telling ``on_wait`` how many jobs are ahead; a cancel while waiting raises
        ``EvaluationCancelled`` (the caller releases the model after its work)."""
        def waiting(ahead: int) -> None:
            if should_stop is not None and should_stop():
                raise EvaluationCancelled("Cancelled while waiting for the model.")
            if on_wait is not None:
                on_wait(ahead)

        self.lock.acquire(on_wait=waiting)

    @property
    def queue_length(self) -> int:
        """Jobs holding or waiting for the model right now (an instantiation, an evaluation, an adapter switch)."""
        return self.lock.waiting

    def cached(self, task: str, config: Optional[ModelConfig], run: Optional[str | Path] = None,
               limit: Optional[int] = None, deployed: bool = False) -> Optional[Result]:
        """The stored result, or None; never evaluates and never waits: while another job holds the model it answers
        None (the key of a run's result needs its adapter loaded, and a perplexity key the shared tokenizer)."""
        if not self.lock.acquire(timeout=0):
            return None
        try:
            key = self.adapter(run).fingerprint() if run is not None else None
            return self.evaluator.cached(task, config, key, limit, runtime=PACKED_RUNTIME if deployed else None)
        finally:
            self.lock.release()
