"""Cross-check against lm-evaluation-harness: run one of our tasks through the harness on the same model object.

Needs ``lm-eval`` (``pip install lm-eval==0.4.13``; in requirements.txt). A task's items are written as a local
JSON-lines file and a harness task YAML points at it (``dataset_path: json``), so the harness runs offline. The
harness gets the very model instance and tokenizer we score with (``HFLM(pretrained=model, tokenizer=...)``), so any
difference in predictions is a difference in scoring. Used by ``bench/eval_vs_harness.py`` and the tests.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .evaluate import TaskResult, argmax
from .mc_tasks import Task

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

    def logprobs(self, name: str) -> tuple[list[list[float]], float]:
        """Per item, the harness's log-likelihood of each choice (item order), and the seconds it took."""
        import lm_eval

        self.seconds = 0.0
        out = lm_eval.simple_evaluate(model=self.lm, tasks=[name], num_fewshot=0, log_samples=True,
                                      task_manager=self.tasks, bootstrap_iters=0, verbosity="ERROR")
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        return [[float(r[0]) for r in s["filtered_resps"]] for s in samples], self.seconds


def compare(ours: TaskResult, theirs: list[list[float]]) -> dict:
    """Items whose acc / acc_norm predictions differ between our records and the harness's log-likelihoods, and
    the largest absolute log-probability difference."""
    differ = differ_norm = 0
    worst = 0.0
    for record, lls in zip(ours.items, theirs):
        normed = [lp / len(c) for lp, c in zip(lls, record.choices)]
        differ += record.pred != argmax(lls)
        differ_norm += record.pred_norm != argmax(normed)
        worst = max(worst, max(abs(a - b) for a, b in zip(record.logprobs, lls)))
    return {"differ_acc": differ, "differ_acc_norm": differ_norm, "max_abs_logprob_diff": worst}
