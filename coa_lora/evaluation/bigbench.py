"""BIG-bench multiple-choice tasks turned into items, with BIG-bench's own zero-shot prompt (METHOD.md §9).

A BIG-bench JSON task (``benchmark_tasks/<task>/task.json`` of the ``bigbench==1.0.0`` sdist) holds
``{"examples": [{"input", "target_scores": {choice: score}}], ...}`` plus optional formatting fields. BIG-bench's
``JsonTask`` builds the zero-shot prompt as::

    task_prefix + example_input_prefix ("\\nQ: ") + input [+ choice_prefix + choices] + example_output_prefix ("\\nA: ")

with the choices appended (``append_choices_to_input``, default true) in a ``numpy.random.RandomState(42)``
permutation of their sorted texts. We keep that prompt with two whitespace changes that make it a harness context:
leading whitespace is dropped, and so is trailing whitespace, of the output prefix or of the input itself when the
output prefix is empty (unit_conversion's "... is "): the harness's target delimiter " " supplies the space before
the answer, and keeping both would score a double space. The gold choice is the first with the highest score.

The embedded subsets in ``data/bigbench/`` were written by :func:`write_embedded` (see ``bench/bigbench_select.py``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from coa_lora.evaluation.tasks import EMBEDDED_DIR, EMBEDDED_FORMAT_VERSION, MCItem
from coa_lora.storage import write_json

SOURCE = "bigbench==1.0.0 (PyPI sdist), bigbench/benchmark_tasks/{task}/task.json"
RANDOM_SEED = 42  # BIG-bench's default seed for the order of appended choices


def format_example(example: dict, task_data: dict, seed: int = RANDOM_SEED) -> MCItem:
    """The zero-shot item of one BIG-bench example (see the module docstring for the prompt)."""
    scores = example["target_scores"]
    choices = list(scores)
    text = example["input"]
    if task_data.get("append_choices_to_input", True) in (True, "true", "True"):
        choice_prefix = task_data.get("choice_prefix", "\n  choice: ")
        permuted = np.random.RandomState(seed=seed).permutation(sorted(choices))
        text = text + choice_prefix + choice_prefix.join(permuted)
    prompt = (str(task_data.get("task_prefix", "")) + task_data.get("example_input_prefix", "\nQ: ") + text
              + task_data.get("example_output_prefix", "\nA: "))
    best = max(scores.values())
    return MCItem(prompt.strip(), tuple(choices), choices.index(next(k for k, v in scores.items() if v == best)))


def read_task(path: str | Path) -> tuple[list[MCItem], dict]:
    """Items of a BIG-bench ``task.json`` (duplicates dropped, as BIG-bench does) and its metadata (no examples).

    Raises:
        ValueError: the file has no multiple-choice example.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    seen: set[str] = set()
    items = []
    for example in data.get("examples", []):
        key = json.dumps(example)
        if key in seen or "target_scores" not in example or len(example["target_scores"]) < 2:
            continue
        seen.add(key)
        items.append(format_example(example, data))
    if not items:
        raise ValueError(f"{path} holds no multiple-choice example (no target_scores with 2 or more choices).")
    return items, {k: v for k, v in data.items() if k != "examples"}


def write_embedded(name: str, items: list[MCItem], meta: dict, folder: Optional[Path] = None) -> Path:
    """Write ``folder/<name>.json`` (default ``data/bigbench``): canary, source, description and the items."""
    path = (folder or EMBEDDED_DIR) / f"{name}.json"
    write_json(path, {
        "format_version": EMBEDDED_FORMAT_VERSION,
        "canary": meta["canary"],
        "source": SOURCE.format(task=meta.get("name", name)),
        "description": meta.get("description", ""),
        "license": "Apache-2.0 (see LICENSE in this folder)",
        "items": [item.to_dict() for item in items],
    })
    return path
