"""Choose the embedded BIG-bench tasks by measurement and write them to data/bigbench/ (METHOD.md §9).

    python bench/bigbench_select.py screen --limit 60            # every candidate, FP vs 2.5 bits, few items
    python bench/bigbench_select.py final --tasks a,b,c --limit 300 --configs fp,alloc2.5 --write   # finalists

A task qualifies when full-precision SmolLM2 scores at least 5 points above chance on >= 300 items and clearly lower
at about 2.5 bits (the allocator's configuration at a 2.5-bit budget); --configs adds uniform NF4, NF3, NF2.
Accuracy is the harness's ``acc`` (argmax of summed log-probability).

The tasks come from the ``bigbench==1.0.0`` sdist. ``pip download`` of it fails after downloading (its setup.py
declares a file:// dependency, which pip refuses), so the script runs ``pip download --no-clean`` with a private
TMPDIR and reads the sdist folder pip unpacked there; ``--tasks-dir`` skips that with an already extracted
``bigbench/benchmark_tasks`` folder. ``final --write`` writes ``data/bigbench/<task>.json`` (first --limit items)
and the measured part of ``data/bigbench/SELECTION.md`` (between its markers; the hand-written sections stay).
Prints a table and, last, one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from coa_lora import ModelConfig, Workbench, preset
from coa_lora.evaluation.bigbench import read_task, write_embedded
from coa_lora.evaluation.scoring import evaluate_task
from coa_lora.evaluation.tasks import EMBEDDED_DIR, Task
from coa_lora.storage import atomic_write_bytes

# Multiple-choice tasks of bigbench 1.0.0 with >= 300 items, one top-level task.json, a single top-scoring choice,
# English text and prompts short enough to evaluate live on a CPU (analogical_similarity, ~800 tokens a prompt, and
# discourse_marker_prediction, ~280 tokens and 10 choices of ~23 tokens, are 10-20 times slower than these).
CANDIDATES = (
    "date_understanding", "epistemic_reasoning",
    "hyperbaton", "implicatures", "intent_recognition", "logical_fallacy_detection", "metaphor_boolean",
    "movie_recommendation", "navigate", "ruin_names", "social_iqa", "social_support", "sports_understanding",
    "strategyqa", "vitaminc_fact_verification", "winowhy",
    # Second screen (issue 14): tasks whose answers are per-item texts, and the short-context shapes.
    "unit_conversion/si_conversion", "unit_conversion/unit_identification", "arithmetic/2_digit_multiplication",
    "arithmetic/3_digit_addition", "logical_deduction/five_objects", "elementary_math_qa/mathematical_hint_only",
    "cause_and_effect/one_sentence_no_prompt", "hhh_alignment/harmless", "hhh_alignment/helpful",
    "hhh_alignment/honest",
)
# File names of embedded subtasks (data/bigbench/<name>.json); other tasks keep their BIG-bench name.
EMBEDDED_NAMES = {"unit_conversion/si_conversion": "unit_conversion_si"}
BUDGET = 2.5
HEADERS = {"fp": "full precision", "alloc2.5": "2.5 bits", "nf4": "NF4", "nf3": "NF3", "nf2": "NF2"}
# SELECTION.md's measured part sits between these; ``final --write`` replaces only it, keeping the hand-written
# sections (screening, replacements) around it.
MEASURED_BEGIN = "<!-- measured: written by bench/bigbench_select.py final --write -->"
MEASURED_END = "<!-- end of the measured part -->"


def fetch_tasks_dir(work: Path) -> Path:
    """Unpack the bigbench==1.0.0 sdist with pip into ``work`` and return its benchmark_tasks folder."""
    env = {**os.environ, "TMPDIR": str(work)}
    cmd = [sys.executable, "-m", "pip", "download", "--no-clean", "--no-deps", "--no-binary", ":all:",
           "bigbench==1.0.0", "-d", str(work / "dl")]
    subprocess.run(cmd, env=env, capture_output=True, text=True)  # fails on purpose after unpacking, see docstring
    found = sorted(work.glob("pip-download-*/bigbench_*/bigbench/benchmark_tasks"))
    if not found:
        raise SystemExit("pip did not unpack the bigbench sdist; pass --tasks-dir instead.")
    return found[0]


def configurations(wb: Workbench, names: list[str]) -> dict[str, ModelConfig | None]:
    make = {
        "fp": lambda: None,
        "alloc2.5": lambda: wb.allocate(BUDGET).config,
        "nf4": lambda: ModelConfig.uniform(wb.layout, preset("nf4")),
        "nf3": lambda: ModelConfig.uniform(wb.layout, preset("nf3")),
        "nf2": lambda: ModelConfig.uniform(wb.layout, preset("nf2")),
    }
    return {name: make[name]() for name in names}


def measure(wb: Workbench, tasks: dict[str, Task], configs: dict) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {
        name: {"items": len(t.items), "chance": t.chance} for name, t in tasks.items()
    }
    for label, config in configs.items():
        if config is None:
            wb.qmodel.restore_()
        else:
            wb.qmodel.apply_(config)
        for name, task in tasks.items():
            t = time.perf_counter()
            table[name][label] = evaluate_task(wb.model, wb.tokenizer, task).acc
            print(f"{label:9s} {name:30s} acc {table[name][label]:.3f}  ({time.perf_counter() - t:.0f} s)",
                  file=sys.stderr, flush=True)
    wb.qmodel.restore_()
    return table


def selection_markdown(table: dict, labels: list[str], limit: int, alloc_bits: float) -> str:
    lines = [
        "# Embedded BIG-bench tasks: how they were chosen",
        "",
        "Measured by `python bench/bigbench_select.py final --tasks "
        f"{','.join(table)} --limit {limit} --configs {','.join(labels)} --write` on SmolLM2-135M-Instruct "
        "(float32, CPU).",
        "Accuracy is lm-evaluation-harness `acc` on the first items of each task in file order, zero-shot, "
        "BIG-bench's prompt (see `coa_lora/evaluation/bigbench.py`).",
        f"2.5 bits = the allocator's configuration at a 2.5-bit budget ({alloc_bits:.3f} average bits per weight); "
        "NF4/NF3/NF2 (when present) = every target matrix uniform (B0 = 64, 8-bit fp32-scaled double "
        "quantization, B1 = 256).",
        "",
        "| task | items | chance | " + " | ".join(HEADERS[c] for c in labels) + " |",
        "|---|---|---|" + "---|" * len(labels),
    ]
    for name, row in table.items():
        lines.append(f"| {name} | {row['items']} | {row['chance']:.3f} | "
                     + " | ".join(f"{row[c]:.3f}" for c in labels) + " |")
    return "\n".join(lines) + "\n"


def merged_selection(existing: str | None, measured: str) -> str:
    """SELECTION.md with its measured part replaced by ``measured`` (a new file when there is none yet)."""
    block = f"{MEASURED_BEGIN}\n{measured.rstrip()}\n{MEASURED_END}"
    if existing is None:
        return block + "\n"
    if existing.count(MEASURED_BEGIN) != 1 or existing.count(MEASURED_END) != 1:
        raise SystemExit(f"{EMBEDDED_DIR / 'SELECTION.md'} has no single pair of measured-part markers "
                         f"({MEASURED_BEGIN!r} ... {MEASURED_END!r}), so its hand-written sections cannot be kept; "
                         f"add the markers around the measured part. Nothing was written.")
    head, rest = existing.split(MEASURED_BEGIN)
    return head + block + rest.split(MEASURED_END)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["screen", "final"])
    parser.add_argument("--tasks", help="comma-separated tasks (default: every candidate)")
    parser.add_argument("--limit", type=int, default=60, help="items per task (first in file order)")
    parser.add_argument("--tasks-dir", type=Path, help="an extracted bigbench/benchmark_tasks folder")
    parser.add_argument("--write", action="store_true", help="final: write data/bigbench/<task>.json, SELECTION.md")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--configs", help=f"comma-separated, from {','.join(HEADERS)} (default: screen fp,alloc2.5; "
                                          "final all)")
    args = parser.parse_args()

    names = args.tasks.split(",") if args.tasks else list(CANDIDATES)
    with tempfile.TemporaryDirectory() as work:
        folder = args.tasks_dir or fetch_tasks_dir(Path(work))
        loaded = {name: read_task(folder / name / "task.json") for name in names}
    tasks = {name: Task(name, tuple(items[:args.limit]), "bigbench") for name, (items, _) in loaded.items()}
    wb = Workbench.load(args.model)
    labels = args.configs.split(",") if args.configs else ["fp", "alloc2.5"] + (
        ["nf4", "nf3", "nf2"] if args.stage == "final" else [])
    if not {"fp", "alloc2.5"} <= set(labels) or not set(labels) <= set(HEADERS):
        raise SystemExit(f"--configs must include fp and alloc2.5 and come from {','.join(HEADERS)}.")
    configs = configurations(wb, labels)
    table = measure(wb, tasks, configs)

    print(f"{'task':30s} {'items':>5s} {'chance':>6s} " + " ".join(f"{label:>8s}" for label in labels))
    for name, row in table.items():
        print(f"{name:30s} {row['items']:5d} {row['chance']:6.3f} " + " ".join(f"{row[c]:8.3f}" for c in labels))
    if args.write:
        selection = EMBEDDED_DIR / "SELECTION.md"
        text = merged_selection(selection.read_text() if selection.exists() else None,  # refuses before any write
                                selection_markdown(table, labels, args.limit, configs["alloc2.5"].avg_bits))
        for name in names:
            items, meta = loaded[name]
            write_embedded(EMBEDDED_NAMES.get(name, name), items[:args.limit], {**meta, "name": name})
        atomic_write_bytes(selection, text.encode())
    print(json.dumps({"stage": args.stage, "limit": args.limit, "table": table}))


if __name__ == "__main__":
    main()
