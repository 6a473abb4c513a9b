"""Zero-shot multiple-choice evaluation scored exactly as lm-evaluation-harness scores it (METHOD.md §8).

For every item, each choice's summed continuation log-probability is computed (:mod:`coa_lora.evaluation.loglik`);
``acc`` takes the argmax, ``acc_norm`` the argmax of log-probability divided by the choice's length in characters.
Standard errors are the harness's: sample standard deviation (n - 1) over sqrt(n).

    from coa_lora import Workbench, load_task, evaluate_task
    wb = Workbench.load("smollm2")
    result = evaluate_task(wb.model, wb.tokenizer, load_task("hyperbaton", limit=100))
    result.acc, result.items[0].logprobs
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from coa_lora.evaluation.loglik import ScoringOptions, StopFn, continuation_logprobs, encode_pair, max_length
from coa_lora.evaluation.tasks import MCItem, Task
from coa_lora.progress import ProgressFn

RESULT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ItemResult:
    """One scored item: what was asked, each choice's log-probability, and the predictions."""

    context: str
    choices: tuple[str, ...]
    gold: int
    logprobs: tuple[float, ...]  # summed log-probability of each choice's continuation (natural log)
    pred: int  # argmax of logprobs
    pred_norm: int  # argmax of logprobs / len(choice) in characters
    continuation: Optional[str] = None

    @property
    def correct(self) -> bool:
        return self.pred == self.gold

    @property
    def correct_norm(self) -> bool:
        return self.pred_norm == self.gold


@dataclass(frozen=True)
class TaskResult:
    """Accuracy of one task with its standard errors and the per-item records."""

    task: str
    n: int
    acc: float
    acc_stderr: float
    acc_norm: float
    acc_norm_stderr: float
    chance: float
    items: tuple[ItemResult, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["format_version"] = RESULT_FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TaskResult":
        if d.get("format_version") != RESULT_FORMAT_VERSION:
            raise ValueError(f"Unsupported result format_version {d.get('format_version')!r}; this version reads "
                             f"{RESULT_FORMAT_VERSION}.")
        items = tuple(ItemResult(**{**i, "choices": tuple(i["choices"]), "logprobs": tuple(i["logprobs"])})
                      for i in d["items"])
        fields = {k: d[k] for k in ("task", "n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "chance")}
        return cls(**fields, items=items)


def argmax(values) -> int:
    """Index of the first maximum (numpy's tie rule, which the harness inherits)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def mean_stderr(values: list[float]) -> float:
    """Standard error of the mean with the sample standard deviation (n - 1), as the harness reports it."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def item_result(item: MCItem, logprobs: list[float]) -> ItemResult:
    """Predictions of one item from its choices' log-probabilities."""
    # An empty choice divides by zero in the harness (numpy gives -inf); keep that outcome without the warning.
    normed = [lp / len(choice) if choice else -math.inf for lp, choice in zip(logprobs, item.choices)]
    return ItemResult(item.context, item.choices, item.gold, tuple(logprobs), argmax(logprobs), argmax(normed),
                      item.continuation)


def summarize(task: str, items: list[ItemResult]) -> TaskResult:
    """Accuracy, normalized accuracy, their standard errors and chance over scored items."""
    acc = [float(i.correct) for i in items]
    acc_norm = [float(i.correct_norm) for i in items]
    n = len(items)
    return TaskResult(task, n, sum(acc) / n, mean_stderr(acc), sum(acc_norm) / n, mean_stderr(acc_norm),
                      sum(1 / len(i.choices) for i in items) / n, tuple(items))


def encode_task(tokenizer, task: Task, limit_tokens: int) -> list[list[tuple[tuple[int, ...], tuple[int, ...]]]]:
    """Per item, its ``(context_ids, continuation_ids)`` requests; an item longer than ``limit_tokens`` is an error.

    (The harness would silently cut such an item's context from the left; we refuse rather than score a different
    question.)
    """
    encoded = []
    for row, item in enumerate(task.items, start=1):
        pairs = [encode_pair(tokenizer, ctx, cont) for ctx, cont in item.requests()]
        for ctx, cont in pairs:
            if not cont:
                raise ValueError(f"Task {task.name}, row {row}: a choice tokenizes to nothing.")
            if len(ctx) + len(cont) > limit_tokens + 1:
                raise ValueError(f"Task {task.name}, row {row}: {len(ctx) + len(cont)} tokens exceed the model's "
                                 f"maximum length of {limit_tokens}.")
        encoded.append(pairs)
    return encoded


def evaluate_task(
    model,
    tokenizer,
    task: Task,
    options: ScoringOptions = ScoringOptions(),
    progress: Optional[ProgressFn] = None,
    should_stop: Optional[StopFn] = None,
    on_items: Optional[Callable[[TaskResult], None]] = None,
    chunk_items: int = 8,
) -> TaskResult:
    """Score every item of ``task`` on ``model`` as it is now (full precision, quantized, with or without adapter).

    Args:
        progress: ``(choices scored, total choices, task name)`` after each batch.
        should_stop: checked between batches; True raises :class:`~coa_lora.evaluation.loglik.EvaluationCancelled`.
        on_items: given, the items are scored ``chunk_items`` at a time in the task's order, and ``on_items`` gets the
            result over the items scored so far after each chunk (a running accuracy over a prefix of the task, not
            over whichever items happen to batch first). The final result holds the same items; their scores equal
            an unchunked run's up to float rounding (requests are packed into batches per chunk).
    """
    encoded = encode_task(tokenizer, task, max_length(model, tokenizer))
    total = sum(len(pairs) for pairs in encoded)
    chunk = len(encoded) if on_items is None else max(1, chunk_items)
    results: list[ItemResult] = []
    for first in range(0, len(encoded), chunk):
        part = encoded[first:first + chunk]
        flat = [pair for pairs in part for pair in pairs]
        offset = sum(len(pairs) for pairs in encoded[:first])

        def relay(done: int, _total: int, _message: str, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + done, total, task.name)

        scores = continuation_logprobs(model, flat, options, relay, should_stop)
        start = 0
        for item, pairs in zip(task.items[first:first + chunk], part):
            results.append(item_result(item, scores[start:start + len(pairs)]))
            start += len(pairs)
        if on_items is not None:
            on_items(summarize(task.name, results))
    return summarize(task.name, results)


def paired_difference(a: TaskResult, b: TaskResult) -> tuple[float, float, float]:
    """How well two results on the same items separate: ``(difference, stderr, items needed)``.

    ``difference`` is acc(b) - acc(a); its standard error is paired by item (the per-item differences' sample sd over
    √n, the same items answered by both); ``items needed`` is how many items would put the observed difference at two
    standard errors at this per-item spread (inf when the difference is 0 or the spread unknown; 2 when every item
    moved the same way, which no spread blurs).
    """
    if a.n != b.n or any(x.context != y.context for x, y in zip(a.items, b.items)):
        raise ValueError(f"The two results cover different items ({a.n} vs {b.n}); evaluate both with one limit.")
    diffs = [float(y.correct) - float(x.correct) for x, y in zip(a.items, b.items)]
    difference, stderr = b.acc - a.acc, mean_stderr(diffs)
    if difference == 0 or math.isnan(stderr):
        return difference, stderr, math.inf
    sd = stderr * math.sqrt(a.n)
    return difference, stderr, float(max(2, math.ceil((2 * sd / abs(difference)) ** 2)))
