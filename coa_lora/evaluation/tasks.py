"""Zero-shot multiple-choice tasks as data: items, the generic JSONL format, embedded tasks and harness templates.

An item is scored as lm-evaluation-harness scores it (METHOD.md §8): each choice is a request
``(context, " " + choice)``; with partial scoring (Winogrande) each choice completes the context instead and the
fixed ``continuation`` is what is scored: ``(context + choice, " " + continuation)``.

A task name given by a user resolves, in order, to:

* an embedded task (``data/bigbench/<name>.json``, BIG-bench subsets that work offline);
* a harness task (:data:`HARNESS_TASKS`: piqa, arc_easy, arc_challenge, hellaswag, boolq, winogrande, social_iqa,
  openbookqa) with the harness's exact prompt template, read from the Hugging Face hub (needs ``datasets`` and
  internet);
* the path of a JSONL file in the generic format, one item per line::

      {"context": "Question: 2 + 2 =\\nAnswer:", "choices": ["4", "5"], "gold": 0}

  (optional ``"continuation"``: partial scoring, see above).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from coa_lora.storage import SHIPPED_DATA

DATA_DIR = SHIPPED_DATA
EMBEDDED_DIR = DATA_DIR / "bigbench"
TARGET_DELIMITER = " "  # the harness's default target_delimiter
EMBEDDED_FORMAT_VERSION = 1


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice item.

    Attributes:
        context: the prompt before the choice ("" is allowed: the harness then conditions on BOS/EOS).
        choices: at least two answer strings, without the leading delimiter.
        gold: index of the correct choice.
        continuation: None for ordinary items; for partial scoring the text scored after ``context + choice``.
    """

    context: str
    choices: tuple[str, ...]
    gold: int
    continuation: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.context, str) or not all(isinstance(c, str) for c in self.choices):
            raise ValueError("An item's context and choices must be strings.")
        if len(self.choices) < 2:
            raise ValueError(f"An item needs at least 2 choices, got {len(self.choices)}.")
        if isinstance(self.gold, bool) or not isinstance(self.gold, int) or not 0 <= self.gold < len(self.choices):
            raise ValueError(f"gold must be an index into the {len(self.choices)} choices, got {self.gold!r}.")
        if self.continuation is not None and not isinstance(self.continuation, str):
            raise ValueError("An item's continuation must be a string or absent.")

    def requests(self) -> list[tuple[str, str]]:
        """``(context, continuation)`` strings, one per choice, exactly as the harness builds them."""
        if self.continuation is None:
            return [(self.context, TARGET_DELIMITER + c) for c in self.choices]
        return [(self.context + c, TARGET_DELIMITER + self.continuation) for c in self.choices]

    def to_dict(self) -> dict:
        row = {"context": self.context, "choices": list(self.choices), "gold": self.gold}
        if self.continuation is not None:
            row["continuation"] = self.continuation
        return row


@dataclass(frozen=True)
class Task:
    """A named list of items; ``fingerprint`` hashes the items, so an edited task file never hits a stale cache."""

    name: str
    items: tuple[MCItem, ...]
    source: str

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for item in self.items:
            h.update(json.dumps(item.to_dict(), sort_keys=True).encode())
        return h.hexdigest()[:16]

    @property
    def chance(self) -> float:
        """Expected accuracy of a uniform random guess, ``mean(1 / n_choices)``."""
        return sum(1 / len(item.choices) for item in self.items) / len(self.items)

    def head(self, limit: Optional[int]) -> "Task":
        """The first ``limit`` items (all when None)."""
        if limit is None:
            return self
        if limit < 1:
            raise ValueError(f"The item limit must be a positive integer, got {limit}.")
        return Task(self.name, self.items[:limit], self.source)


def item_from_row(row: object, where: str) -> MCItem:
    """An item from a generic-format row; errors name ``where`` (task and row)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with context, choices and gold.")
    missing = [k for k in ("context", "choices", "gold") if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}.")
    if not isinstance(row["choices"], list):
        raise ValueError(f"{where}: choices must be a list of strings.")
    try:
        return MCItem(row["context"], tuple(row["choices"]), row["gold"], row.get("continuation"))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def load_jsonl(path: str | Path, name: Optional[str] = None) -> Task:
    """A task from a generic-format JSONL file (blank lines are skipped)."""
    path = Path(path)
    name = name or path.stem
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"Task {name}: cannot read {path} ({exc.__class__.__name__}).") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"Task {name}, row {number}: not valid JSON ({exc.msg}).") from None
        items.append(item_from_row(row, f"Task {name}, row {number}"))
    if not items:
        raise ValueError(f"Task {name}: {path} holds no items.")
    return Task(name, tuple(items), str(path))


def embedded_tasks() -> list[str]:
    """Names of the embedded (offline) tasks."""
    return sorted(p.stem for p in EMBEDDED_DIR.glob("*.json"))


def load_embedded(name: str) -> Task:
    """An embedded task: ``data/bigbench/<name>.json`` = {format_version, canary, source, items: [row, ...]}."""
    path = EMBEDDED_DIR / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format_version") != EMBEDDED_FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {data.get('format_version')!r}; this version reads "
                         f"{EMBEDDED_FORMAT_VERSION}.")
    items = tuple(item_from_row(row, f"Task {name}, row {i + 1}") for i, row in enumerate(data["items"]))
    return Task(name, items, data["source"])


# ---- lm-evaluation-harness templates (lm_eval 0.4.13 task YAMLs), one function per task: doc -> item ----

def _piqa(doc: dict) -> MCItem:
    return MCItem(f"Question: {doc['goal']}\nAnswer:", (doc["sol1"], doc["sol2"]), int(doc["label"]))


def _arc(doc: dict) -> MCItem:
    choices = doc["choices"]
    return MCItem(f"Question: {doc['question']}\nAnswer:", tuple(choices["text"]),
                  list(choices["label"]).index(doc["answerKey"]))


def hellaswag_preprocess(text: str) -> str:
    """The harness's HellaSwag cleaning: WikiHow ``[title]`` becomes ". ", other ``[...]`` go, double spaces halve."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(doc: dict) -> MCItem:
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return MCItem(hellaswag_preprocess(doc["activity_label"] + ": " + context),
                  tuple(hellaswag_preprocess(e) for e in doc["endings"]), int(doc["label"]))


def _boolq(doc: dict) -> MCItem:
    return MCItem(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ("no", "yes"), int(doc["label"]))


def _winogrande(doc: dict) -> MCItem:
    sentence = doc["sentence"]
    blank = sentence.index("_")
    return MCItem("", (sentence[:blank] + doc["option1"], sentence[:blank] + doc["option2"]),
                  {"1": 0, "2": 1}[doc["answer"]], continuation=sentence[blank + 1:].strip())


def _social_iqa(doc: dict) -> MCItem:
    return MCItem(f"Q: {doc['context']} {doc['question']}\nA:", (doc["answerA"], doc["answerB"], doc["answerC"]),
                  int(doc["label"]) - 1)


def _openbookqa(doc: dict) -> MCItem:
    choices = doc["choices"]
    return MCItem(doc["question_stem"], tuple(choices["text"]),
                  list(choices["label"]).index(doc["answerKey"].lstrip()))


@dataclass(frozen=True)
class HarnessTask:
    """Where the harness reads a task (Hugging Face dataset, config, evaluation split) and its template."""

    dataset: str
    config: Optional[str]
    split: str
    to_item: Callable[[dict], MCItem]


HARNESS_TASKS = {
    "piqa": HarnessTask("baber/piqa", None, "validation", _piqa),
    "arc_easy": HarnessTask("allenai/ai2_arc", "ARC-Easy", "test", _arc),
    "arc_challenge": HarnessTask("allenai/ai2_arc", "ARC-Challenge", "test", _arc),
    "hellaswag": HarnessTask("Rowan/hellaswag", None, "validation", _hellaswag),
    "boolq": HarnessTask("aps/super_glue", "boolq", "validation", _boolq),
    "winogrande": HarnessTask("allenai/winogrande", "winogrande_xl", "validation", _winogrande),
    "social_iqa": HarnessTask("lighteval/siqa", None, "validation", _social_iqa),
    "openbookqa": HarnessTask("allenai/openbookqa", "main", "test", _openbookqa),
}


def harness_task(name: str, docs: list[dict]) -> Task:
    """The harness task ``name`` built from dataset rows ``docs`` (what the hub returns, in its schema)."""
    spec = HARNESS_TASKS[name]
    items = []
    for i, doc in enumerate(docs):
        try:
            items.append(spec.to_item(doc))
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"Task {name}, row {i + 1}: does not match the dataset's schema ({exc}).") from None
    if not items:
        raise ValueError(f"Task {name}: the dataset holds no items.")
    return Task(name, tuple(items), f"hf:{spec.dataset}" + (f"/{spec.config}" if spec.config else "") +
                f":{spec.split}")


def load_harness(name: str, limit: Optional[int] = None) -> Task:
    """A harness task read from the Hugging Face hub (needs the ``datasets`` package and internet)."""
    spec = HARNESS_TASKS[name]
    try:
        import datasets
    except ImportError:
        raise ValueError(f"Task {name} is read from the Hugging Face hub and needs the `datasets` package "
                         "(pip install datasets).") from None
    split = spec.split if limit is None else f"{spec.split}[:{limit}]"
    try:
        rows = datasets.load_dataset(spec.dataset, spec.config, split=split)
    except Exception as exc:  # noqa: BLE001 - network, hub and cache errors all mean "cannot read it here".
        raise ValueError(f"Task {name}: cannot load {spec.dataset} from the Hugging Face hub "
                         f"({type(exc).__name__}); it needs internet, or use an embedded task "
                         f"({', '.join(embedded_tasks())}) or a JSONL file.") from None
    return harness_task(name, [dict(r) for r in rows])


def load_task(name: str, limit: Optional[int] = None) -> Task:
    """The task ``name``: embedded, harness, or a JSONL path (see the module docstring); first ``limit`` items."""
    if name in embedded_tasks():
        task = load_embedded(name)
    elif name in HARNESS_TASKS:
        task = load_harness(name, limit)
    elif name.endswith(".jsonl") or Path(name).is_file():
        if not Path(name).is_file():
            raise ValueError(f"Task file {name} does not exist.")
        task = load_jsonl(name)
    else:
        raise ValueError(f"Unknown task {name!r}; use an embedded task ({', '.join(embedded_tasks())}), a harness "
                         f"task ({', '.join(HARNESS_TASKS)}), or the path of a JSONL file.")
    return task.head(limit)
