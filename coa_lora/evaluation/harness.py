"""Cross-check against lm-evaluation-harness: run one of our tasks through the harness on the same model object.

Needs ``lm-eval`` (``pip install lm-eval==0.4.13``; in requirements.txt). A task's items are written as a local
JSON-lines file and a harness task YAML points at it (``dataset_path: json``), so the harness runs offline. The
harness gets the very model instance and tokenizer we score with (``HFLM(pretrained=model, tokenizer=...)``), so any
difference in predictions is a difference in scoring. Used by ``bench/eval_vs_harness.py`` and the tests.

:func:`compare` checks our records against the harness's own logged per-sample ``acc`` and ``acc_norm`` (not against
our re-derivation of them from its log-likelihoods), after checking that both sides hold the same items, in the same
order, with the same number of choices: a missing item or choice is an error, never a silently shorter comparison.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from coa_lora.evaluation.scoring import TaskResult, argmax
from coa_lora.evaluation.tasks import Task

YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def write_harness_task(task: Task, folder: Path) -> str:
    """A harness task named ``coa_<task>`` reading ``task``'s items from a local JSON-lines file; returns its name."""
    if any(item.continuation is not None for item in task.items):
        raise ValueError(f"Task {task.name} uses partial scoring, which this bench does not translate.")
    name = "coa_" + "".join(c if c.isalnum() else "_" for c in Path(task.name).stem)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(item.to_dict()) + "\n" for item in task.items))
    (folder / f"{name}.yaml").write_text(YAML.format(name=name, data=data))
    return name


@dataclass(frozen=True)
class HarnessSamples:
    """The harness's logged samples of one task, in item order (one entry per item)."""

    contexts: tuple[str, ...]  # the item's context as the harness read it from the data file
    gold: tuple[int, ...]  # the harness's target index
    logprobs: tuple[tuple[float, ...], ...]  # its log-likelihood of each choice
    acc: tuple[float, ...]  # its own per-sample metrics, 1.0 or 0.0
    acc_norm: tuple[float, ...]


class Harness:
    """lm-evaluation-harness around our model instance; times only its log-likelihood calls (tokenization included),
    not its one-off task indexing, so both sides are timed on the same work."""

    def __init__(self, model, tokenizer, batch_size: int, folder: Path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
        self.tasks = TaskManager(include_path=str(folder))
        self.seconds = 0.0
        score = self.lm.loglikelihood

        def timed(requests, *args, **kwargs):
            t = time.perf_counter()
            try:
                return score(requests, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t

        self.lm.loglikelihood = timed

    def logprobs(self, name: str) -> tuple[HarnessSamples, float]:
        """The harness's samples of task ``name`` (its log-likelihoods and its own per-sample acc / acc_norm), and the
        seconds its log-likelihood calls took."""
        import lm_eval

        self.seconds = 0.0
        out = lm_eval.simple_evaluate(model=self.lm, tasks=[name], num_fewshot=0, log_samples=True,
                                      task_manager=self.tasks, bootstrap_iters=0, verbosity="ERROR")
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        ids = [s["doc_id"] for s in samples]
        if ids != list(range(len(samples))):
            raise ValueError(f"The harness logged doc ids {ids[:5]}…, not 0..{len(samples) - 1}: samples are missing.")
        return HarnessSamples(
            contexts=tuple(s["doc"]["context"] for s in samples),
            gold=tuple(int(s["target"]) for s in samples),
            logprobs=tuple(tuple(float(r[0]) for r in s["filtered_resps"]) for s in samples),
            acc=tuple(float(s["acc"]) for s in samples),
            acc_norm=tuple(float(s["acc_norm"]) for s in samples),
        ), self.seconds


def compare(ours: TaskResult, theirs: HarnessSamples) -> dict:
    """Per-item agreement of our records with the harness's samples.

    Returns:
        ``differ_acc`` / ``differ_acc_norm``: items whose correctness differs from the harness's own per-sample
        ``acc`` / ``acc_norm``; ``differ_pred``: items whose predicted choice differs from the argmax of the harness's
        log-likelihoods (stricter than correctness with three or more choices); ``max_abs_logprob_diff``; and both
        sides' task-level ``acc`` and ``acc_norm``.

    Raises:
        ValueError: the two sides do not hold the same items in the same order with the same number of choices.
    """
    n = len(ours.items)
    if not n == len(theirs.contexts) == len(theirs.gold) == len(theirs.logprobs) == len(theirs.acc) \
            == len(theirs.acc_norm):
        raise ValueError(f"We scored {n} items of {ours.task}, the harness logged {len(theirs.logprobs)} "
                         f"(acc {len(theirs.acc)}, acc_norm {len(theirs.acc_norm)}): an item went missing.")
    differ = differ_norm = differ_pred = 0
    worst = 0.0
    for i, (record, lls) in enumerate(zip(ours.items, theirs.logprobs)):
        if record.context != theirs.contexts[i] or record.gold != theirs.gold[i]:
            raise ValueError(f"Item {i} of {ours.task} is not the harness's item {i} (context or gold differs).")
        if len(lls) != len(record.choices):
            raise ValueError(f"Item {i} of {ours.task} has {len(record.choices)} choices here and {len(lls)} in the "
                             "harness.")
        differ += float(record.correct) != theirs.acc[i]
        differ_norm += float(record.correct_norm) != theirs.acc_norm[i]
        differ_pred += record.pred != argmax(lls)
        worst = max(worst, max(abs(a - b) for a, b in zip(record.logprobs, lls)))
    return {"differ_acc": differ, "differ_acc_norm": differ_norm, "differ_pred": differ_pred,
            "max_abs_logprob_diff": worst, "acc": ours.acc, "acc_harness": sum(theirs.acc) / n,
            "acc_norm": ours.acc_norm, "acc_norm_harness": sum(theirs.acc_norm) / n}
