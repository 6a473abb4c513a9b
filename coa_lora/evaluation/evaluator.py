"""Live evaluation: run a task under a configuration and remember the answer.

The app moves a slider between configurations; coming back to one already evaluated must be instant. An
:class:`Evaluator` caches every result by (model weights' content hash, dtype, quantizer version, configuration key,
adapter key, task name and content fingerprint, item limit) in memory and, when given a folder, as one JSON file per
result (default folder ``~/.cache/coa_lora/evals``): a changed model folder or a quantizer fix never returns an old
number. Long runs report progress and stop between batches when ``should_stop()`` is true.

    ev = Evaluator(Workbench.load("smollm2"), cache_dir=default_cache_dir())
    ev.run("hyperbaton", config=wb.allocate(3.0).config, limit=200, progress=cb, should_stop=event.is_set)
    ev.run("ppl", limit=4)   # perplexity on the held-out plays, 4 windows per play
    ev.run("kl", config, limit=1)  # on the same windows: KL from the unquantized model, top-1 agreement, perplexity

With a trained adapter (a :class:`~coa_lora.lora.adapter.CoALoRAModel` wrapped around ``workbench.model``) pass it as
``adapter``: the evaluator sets its configuration (CoA-LoRA's correction U depends on it) and caches the result under
the adapter's :meth:`~coa_lora.lora.adapter.CoALoRAModel.fingerprint`, apart from the bare model's. Without ``adapter``
every LoRA wrapper on the model is switched off for the run, so "the quantized base" is the base even after an
adapter was loaded. Either way the model runs in eval mode (no dropout) and its modes are put back after.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import torch

from coa_lora.evaluation.agreement import AgreementResult, agreement, reference_logprobs
from coa_lora.evaluation.loglik import ScoringOptions, StopFn
from coa_lora.evaluation.perplexity import (PerplexityOptions, PerplexityResult, fingerprint, heldout_perplexity,
                                            heldout_windows)
from coa_lora.evaluation.scoring import TaskResult, evaluate_task
from coa_lora.evaluation.tasks import HARNESS_TASKS, Task, embedded_tasks, load_task
from coa_lora.lora.adapter import LoraLinear
from coa_lora.progress import ProgressFn
from coa_lora.quant.quantizer import QUANTIZER_VERSION
from coa_lora.storage import write_json

PERPLEXITY_TASK = "ppl"
AGREEMENT_TASK = "kl"  # on the perplexity windows: KL from the unquantized reference, top-1 agreement, perplexity
WINDOW_TASKS = (PERPLEXITY_TASK, AGREEMENT_TASK)
# Bump when a change to scoring or windowing changes numbers: old disk entries then stop matching.
SCORING_VERSION = 2  # 2: prefix-tree scorer (same numbers up to float rounding; recomputed to be safe)
Result = Union[TaskResult, PerplexityResult, AgreementResult]


@dataclass(frozen=True)
class EvalOptions:
    """Batching of the multiple-choice scorer and windowing of perplexity."""

    scoring: ScoringOptions = ScoringOptions()
    perplexity: PerplexityOptions = PerplexityOptions()


def default_cache_dir() -> Path:
    """``<coa_lora cache>/evals`` (see :func:`coa_lora.models.assets.cache_dir`)."""
    from coa_lora.models.assets import cache_dir

    return cache_dir() / "evals"


class Evaluator:
    """Evaluates tasks on a :class:`~coa_lora.Workbench`'s model under any configuration, with a result cache.

    Not thread-safe: one evaluation at a time per workbench (it swaps the model's weights while it runs).
    """

    def __init__(self, workbench, options: EvalOptions = EvalOptions(), cache_dir: Optional[Path] = None):
        self.workbench = workbench
        self.options = options
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: dict[str, Result] = {}
        self._tasks: dict[tuple[str, Optional[int]], Task] = {}
        self._ppl_fingerprints: dict[Optional[int], str] = {}
        self._references: dict[Optional[int], list[torch.Tensor]] = {}  # "kl": the reference's log-probs per limit

    def key(self, task: str, config=None, adapter_key: Optional[str] = None, limit: Optional[int] = None,
            runtime: Optional[str] = None) -> str:
        """The cache key of a result (a JSON string; the disk file is named by its hash). ``runtime``: None for the
        workbench's model under ``config``, ``"packed"`` for the configuration's deployed packed model."""
        model = self.workbench.model
        content = self._perplexity_fingerprint(limit) if task in WINDOW_TASKS else self.task(task, limit).fingerprint
        extra = {} if runtime is None else {"runtime": runtime}  # absent by default: keys stored before stay valid
        return json.dumps({
            **extra,
            "version": SCORING_VERSION,
            "quantizer": QUANTIZER_VERSION,
            "model": self.workbench.layout.model_id,  # for a reader of the file; the weights' hash is what matches
            "weights": self.workbench.weight_hash,
            "dtype": str(next(model.parameters()).dtype),
            "config": config.key() if config is not None else "unquantized",
            "adapter": adapter_key,
            "task": task,
            "content": content,
            "limit": limit,
        }, sort_keys=True)

    def cached(self, task: str, config=None, adapter_key: Optional[str] = None,
               limit: Optional[int] = None, runtime: Optional[str] = None) -> Optional[Result]:
        """The stored result, or None; never computes."""
        key = self.key(task, config, adapter_key, limit, runtime)
        if key not in self._memory and self.cache_dir is not None:
            found = self._read(key)
            if found is not None:
                self._memory[key] = found
        return self._memory.get(key)

    def run(
        self,
        task: str,
        config=None,
        adapter_key: Optional[str] = None,
        limit: Optional[int] = None,
        progress: Optional[ProgressFn] = None,
        should_stop: Optional[StopFn] = None,
        adapter=None,
        on_items: Optional[Callable[[TaskResult], None]] = None,
        deployed: Optional[Callable[[], torch.nn.Module]] = None,
        runtime: str = "packed",
    ) -> Result:
        """The result of ``task`` (``"ppl"``, an embedded or harness task, or a JSONL path) under ``config``.

        ``config`` None means the unquantized reference. ``limit`` is items (multiple choice) or windows per play
        (``"ppl"``). ``adapter``: a trained CoALoRAModel on this workbench's model, evaluated under ``config`` (its
        fingerprint is the default ``adapter_key``); None evaluates the bare base with every LoRA wrapper off. An
        ``adapter_key`` without its ``adapter`` only looks the result up. A cached result returns at once; a
        cancelled run raises ``EvaluationCancelled`` and caches nothing. ``on_items`` (multiple choice only) gets the
        result over the items scored so far as they complete (:func:`evaluate_task`); a cached result calls it once.

        ``deployed``: builds the configuration's deployed model (its packed folder loaded back with the adapter folded,
        see :meth:`coa_lora.Explorer.deployed_model`), called only when the result is not cached; that model is
        evaluated as it is instead of the workbench's, and cached apart under ``runtime`` (which names the deployed
        format, e.g. its version); ``adapter_key`` names the adapter folded into it (None: none).
        """
        if deployed is not None:
            if adapter is not None or config is None:
                raise ValueError("A deployed model carries its configuration and adapter: pass the configuration and "
                                 "the adapter's key, not the adapter.")
            return self._run_deployed(task, config, adapter_key, limit, progress, should_stop, on_items, deployed,
                                      runtime)
        if adapter is not None:
            if adapter.model is not self.workbench.model:
                raise ValueError("The adapter wraps a different model than this evaluator's workbench.")
            if adapter.network is not None and config is None:
                raise ValueError("A CoA-LoRA adapter's correction depends on the configuration: pass a configuration.")
            adapter_key = adapter_key or adapter.fingerprint()
        found = self._announced(self.cached(task, config, adapter_key, limit), on_items)
        if found is not None:
            return found
        if adapter is None and adapter_key is not None:
            raise ValueError(f"No cached result for adapter {adapter_key}; pass the adapter itself to evaluate it.")
        wb = self.workbench
        reference = self._reference(limit, progress) if task == AGREEMENT_TASK else None
        with model_as(wb, config, adapter):
            result = self._score(wb.model, task, limit, reference, progress, should_stop, on_items)
        return self._store(self.key(task, config, adapter_key, limit), result)

    def _run_deployed(self, task, config, adapter_key, limit, progress, should_stop, on_items, build,
                      runtime: str) -> Result:
        found = self._announced(self.cached(task, config, adapter_key, limit, runtime=runtime), on_items)
        if found is not None:
            return found  # without building (exporting, loading) the deployed model
        model = build()
        reference = self._reference(limit, progress) if task == AGREEMENT_TASK else None
        with _eval_mode(model):
            result = self._score(model, task, limit, reference, progress, should_stop, on_items)
        return self._store(self.key(task, config, adapter_key, limit, runtime=runtime), result)

    @staticmethod
    def _announced(found: Optional[Result], on_items: Optional[Callable[[TaskResult], None]]) -> Optional[Result]:
        """A cached result, handed once to ``on_items`` (a multiple-choice one), as a computed one would be."""
        if found is not None and on_items is not None and isinstance(found, TaskResult):
            on_items(found)
        return found

    def _score(self, model, task, limit, reference, progress, should_stop, on_items) -> Result:
        tokenizer = self.workbench.tokenizer
        if task == PERPLEXITY_TASK:
            return heldout_perplexity(model, tokenizer, self.options.perplexity, limit, progress, should_stop)
        if task == AGREEMENT_TASK:
            windows = heldout_windows(tokenizer, self.options.perplexity, limit)
            return agreement(model, windows, reference, self.options.perplexity.batch_size, task, progress,
                             should_stop)
        return evaluate_task(model, tokenizer, self.task(task, limit), self.options.scoring, progress, should_stop,
                             on_items)

    def _store(self, key: str, result: Result) -> Result:
        self._memory[key] = result
        if self.cache_dir is not None:
            kind = {PerplexityResult: "perplexity", AgreementResult: "agreement"}.get(type(result), "multiple_choice")
            write_json(self._path(key), {"key": json.loads(key), "kind": kind, "result": result.to_dict()})
        return result

    def task(self, name: str, limit: Optional[int] = None) -> Task:
        """The loaded task; embedded and hub tasks are read once, JSONL files every time (they may be edited)."""
        if name not in embedded_tasks() and name not in HARNESS_TASKS:
            return load_task(name, limit)
        if (name, limit) not in self._tasks:
            self._tasks[(name, limit)] = load_task(name, limit)
        return self._tasks[(name, limit)]

    def _reference(self, limit: Optional[int], progress: Optional[ProgressFn]) -> list[torch.Tensor]:
        """The unquantized model's log-probabilities on the perplexity windows (every adapter off), kept per limit."""
        if limit not in self._references:
            wb = self.workbench
            windows = heldout_windows(wb.tokenizer, self.options.perplexity, limit)
            with model_as(wb, None):
                self._references[limit] = reference_logprobs(wb.model, windows, self.options.perplexity.batch_size,
                                                             progress)
        return self._references[limit]

    def _perplexity_fingerprint(self, limit: Optional[int]) -> str:
        if limit not in self._ppl_fingerprints:
            windows = heldout_windows(self.workbench.tokenizer, self.options.perplexity, limit)
            self._ppl_fingerprints[limit] = fingerprint(windows)
        return self._ppl_fingerprints[limit]

    def _path(self, key: str) -> Path:
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    def _read(self, key: str) -> Optional[Result]:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("key") != json.loads(key):
                return None  # a hash collision or a foreign file: recompute
            if data["kind"] == "perplexity":
                return PerplexityResult.from_dict(data["result"])
            if data["kind"] == "agreement":
                return AgreementResult.from_dict(data["result"])
            return TaskResult.from_dict(data["result"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # an unreadable or outdated entry is recomputed and overwritten


@contextmanager
def model_as(workbench, config, adapter=None) -> Iterator[None]:
    """Run the block with ``workbench``'s model under ``config`` (None: unquantized) with ``adapter`` on and every
    other LoRA wrapper off (None: the bare base), in eval mode; everything is put back after."""
    with _configured(workbench.qmodel, config, adapter), _only(workbench.model, adapter), _eval_mode(workbench.model):
        yield


@contextmanager
def _only(model: torch.nn.Module, adapter=None) -> Iterator[None]:
    """Run the block with ``adapter``'s LoRA wrappers on and every other wrapper of ``model`` off (all off when
    ``adapter`` is None: the bare base), then put each wrapper's switch back."""
    own = {id(w) for w in adapter.wrappers.values()} if adapter is not None else set()
    wrappers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    states = [w.enabled for w in wrappers]
    for w in wrappers:
        w.enabled = id(w) in own
    try:
        yield
    finally:
        for w, state in zip(wrappers, states):
            w.enabled = state


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run the block in eval mode (a trainer may have left LoRA dropout on), then restore every module's mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def _configured(qmodel, config, adapter=None) -> Iterator[None]:
    """Run the block under ``config`` (None: the unquantized reference), then put back whatever was applied before.

    With an adapter its configuration is set too (a CoA-LoRA correction follows the configuration).
    """
    def activate(c) -> None:
        if c is None:
            qmodel.restore_()
        elif adapter is not None and adapter.network is not None:
            with torch.no_grad():
                adapter.set_config(c)
        else:
            qmodel.apply_(c)

    previous = qmodel.config
    activate(config)
    try:
        yield
    finally:
        activate(previous)


def results_table(results: dict[str, Result]):
    """A pandas DataFrame with one row per (task, metric): columns task, metric, value, stderr, n.

    Multiple-choice tasks give ``acc`` and ``acc_norm`` rows (n = items); perplexity gives a ``perplexity`` row
    (n = scored tokens, no standard error).
    """
    import pandas as pd

    rows = []
    for name, result in results.items():
        if isinstance(result, PerplexityResult):
            rows.append((name, "perplexity", result.perplexity, None, result.n_tokens))
        elif isinstance(result, AgreementResult):
            rows += [(name, metric, getattr(result, metric), None, result.n_tokens)
                     for metric in ("kl", "top1", "perplexity")]
        else:
            rows.append((name, "acc", result.acc, result.acc_stderr, result.n))
            rows.append((name, "acc_norm", result.acc_norm, result.acc_norm_stderr, result.n))
    return pd.DataFrame(rows, columns=["task", "metric", "value", "stderr", "n"])


def results_json(results: dict[str, Result]) -> dict:
    """Per task: ``{acc, acc_stderr, acc_norm, acc_norm_stderr, chance, n}``, or for ``"ppl"``
    ``{perplexity, loss, n_tokens, n_windows}``; per-item records are left out (see ``TaskResult.items``)."""
    out = {}
    for name, result in results.items():
        d = result.to_dict()
        d.pop("items", None)
        d.pop("format_version", None)
        d.pop("task", None)
        out[name] = d
    return out
