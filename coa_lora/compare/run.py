"""Run a comparison: train every adapter of a :class:`ComparePlan` and evaluate each where its method uses it.

    result = run_comparison(ComparePlan.quick(), "runs/compare-quick", progress=cb, echo=print)

The folder holds ``plan.json``, ``state.json`` (the estimate, time spent, each finished run's training time),
``runs/<name>/`` (ordinary run folders: ``eval --run``, ``export --run`` and the explorer read them), ``evals/`` (the
evaluator's cache: one JSON file per result) and the result files of :mod:`coa_lora.compare.report`. Every write is
atomic; a killed comparison started again with the same plan resumes: finished runs are skipped, a started run resumes
from its checkpoint, evaluations already made are read from ``evals/``.

Evaluations, per adapter and budget where its method uses it (:meth:`ComparePlan.serves`), on the allocator's
configuration at that budget: the ``kl`` scoreboard on the held-out windows (KL from the unquantized model, top-1
agreement, perplexity) and each task's accuracy. The quantized base (every adapter off) is evaluated once per budget.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from coa_lora.compare.plan import PER_CONFIG, ComparePlan, RunSpec
from coa_lora.compare.report import Comparison, write_results
from coa_lora.evaluation import EvalOptions, Evaluator, PerplexityOptions
from coa_lora.lora import CoALoRAModel, Workbench, load_trained, train
from coa_lora.lora.step import accumulate_gradients
from coa_lora.lora.trainer import training_windows
from coa_lora.progress import ProgressFn, report
from coa_lora.runs import CHECKPOINT_FILE, RUN_FILE, metric_rows
from coa_lora.storage import read_safetensors, write_json

PLAN_FILE, STATE_FILE = "plan.json", "state.json"
AGREEMENT = "kl"


def check_folder(plan: ComparePlan, folder: str | os.PathLike) -> Path:
    """Refuse (ValueError, nothing written) a folder that holds another plan's comparison, or is not one at all."""
    folder = Path(folder).expanduser()
    if (folder / PLAN_FILE).is_file():
        saved = ComparePlan.from_dict(json.loads((folder / PLAN_FILE).read_text()))
        if not saved.same_plan(plan):
            changed = [k for k, v in plan.to_dict().items() if k != "seeds" and saved.to_dict().get(k) != v]
            raise ValueError(f"{folder} holds a comparison with another plan (it differs in {', '.join(changed)}); "
                             "use a new --out folder, or the same options to resume it.")
    elif folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} exists and is not a comparison folder; give a new or empty --out folder.")
    return folder


def run_comparison(plan: ComparePlan, folder: str | os.PathLike, wb: Workbench | None = None,
                   progress: ProgressFn | None = None, echo: Callable[[str], None] | None = None,
                   device: str = "cpu", dtype: torch.dtype = torch.float32, command: str = "") -> Comparison:
    """Train and evaluate ``plan`` in ``folder`` (resuming what is there); ``echo`` receives the plan and estimate.

    The result files are rewritten after every adapter's evaluations, so a comparison still running (or killed) can
    be reported on the seeds it finished; ``command`` is what the report says made it."""
    folder = check_folder(plan, folder)
    wb = wb or Workbench.load(plan.model, device=device, dtype=dtype)
    folder.mkdir(parents=True, exist_ok=True)
    saved_seeds = set(plan.seeds)
    if (folder / PLAN_FILE).is_file():
        saved_seeds |= set(ComparePlan.from_dict(json.loads((folder / PLAN_FILE).read_text())).seeds)
    plan = _with_seeds(plan, saved_seeds)  # the folder's seeds too: its results and runs stay one comparison
    write_json(folder / PLAN_FILE, plan.to_dict())
    state = _read_state(folder)
    state["command"] = command or state.get("command", "")
    length = plan.ppl_length
    evaluator = Evaluator(wb, EvalOptions(perplexity=PerplexityOptions(length=length, stride=length)),
                          cache_dir=folder / "evals")
    configs = {b: wb.allocate(b).config for b in plan.eval_budgets}
    specs = plan.runs()
    todo = [s for s in specs if s.name not in state["runs"]]
    n_evals = sum(plan.serves(s, b) for s in specs for b in plan.eval_budgets) + len(plan.eval_budgets)
    total = sum(plan.steps for _ in todo) + n_evals
    done = 0
    started = time.perf_counter()

    def save() -> None:
        nonlocal started
        now = time.perf_counter()
        state["elapsed_seconds"] += now - started
        started = now
        write_json(folder / STATE_FILE, state)

    def evaluate(spec: RunSpec | None, adapter: CoALoRAModel | None) -> list[dict]:
        nonlocal done
        out = []
        for budget in plan.eval_budgets:
            if spec is not None and not plan.serves(spec, budget):
                continue
            results = {task: evaluator.run(task, configs[budget], limit=plan.ppl_limit if task == AGREEMENT
                                           else plan.task_limit, adapter=adapter)
                       for task in (AGREEMENT, *plan.tasks)}
            out.append(evaluation_row(plan, spec, budget, results))
            done += 1
            report(progress, done, total, f"{spec.name if spec else 'base'} at {budget:g} bits")
        return out

    if state.get("estimate_seconds") is None:
        state["estimate_seconds"] = _estimate(plan, wb, evaluator, configs, echo)
        state["machine"] = machine()
    elif echo is not None:
        echo(describe(plan) + f"\nResuming: {len(specs) - len(todo)} of {len(specs)} adapters trained, "
             f"{state['elapsed_seconds'] / 60:.1f} min spent of the estimated {state['estimate_seconds'] / 60:.1f}.")
    rows = evaluate(None, None)
    save()
    write_results(Comparison(plan, folder, rows, state), state["command"])
    for spec in specs:
        run_folder = folder / "runs" / spec.name
        if spec.name in state["runs"]:
            adapter, _, _ = load_trained(wb, run_folder)
        else:
            resume = (run_folder / RUN_FILE).is_file() and (run_folder / CHECKPOINT_FILE).is_file()
            before = _step_seconds(run_folder) if resume else 0.0
            t0, base = time.perf_counter(), done

            def step_progress(d: int, t: int, message: str = "") -> None:
                report(progress, base + d, total, f"{spec.name}: {message}")

            if not resume and run_folder.exists():  # started but killed before its first checkpoint: start again
                shutil.rmtree(run_folder)
            result = train(wb, plan.train_options(spec), run_folder, resume=resume, progress=step_progress)
            adapter = result.coa
            state["runs"][spec.name] = {"method": spec.method, "seed": spec.seed, "budget": spec.budget,
                                        "train_seconds": before + time.perf_counter() - t0,
                                        "passes": _passes(plan, spec)}
            done = base + plan.steps
            save()
        rows += evaluate(spec, adapter)
        adapter.remove_()
        save()
        write_results(Comparison(plan, folder, rows, state), state["command"])
    state["finished"] = True
    save()
    comparison = Comparison(plan, folder, rows, state)
    write_results(comparison, state["command"])
    return comparison


def evaluation_row(plan: ComparePlan, spec: RunSpec | None, budget: float, results: dict) -> dict:
    """One row of results.csv: who, where, and every metric (perplexity, KL, top-1, per task acc and acc_norm)."""
    kl = results[AGREEMENT]
    row = {"method": spec.method if spec else "base", "seed": spec.seed if spec else None, "budget": budget,
           "trained": budget in plan.budgets, "adapter_budget": spec.budget if spec else None,
           "run": spec.name if spec else None, "perplexity": kl.perplexity, "kl": kl.kl, "top1": kl.top1,
           "n_tokens": kl.n_tokens}
    for task in plan.tasks:
        r = results[task]
        row.update({f"{task}.acc": r.acc, f"{task}.acc_stderr": r.acc_stderr, f"{task}.acc_norm": r.acc_norm,
                    f"{task}.acc_norm_stderr": r.acc_norm_stderr, f"{task}.n": r.n})
    return row


def describe(plan: ComparePlan) -> str:
    """The plan in a few lines: runs, steps, evaluations."""
    specs = plan.runs()
    per_method = {m: sum(s.method == m for s in specs) for m in plan.methods}
    n_evals = sum(plan.serves(s, b) for s in specs for b in plan.eval_budgets) + len(plan.eval_budgets)
    return (f"Comparison on {plan.model}: {len(specs)} adapters ("
            + ", ".join(f"{n} {m}" for m, n in per_method.items())
            + f"), {plan.steps} steps each ({len(specs) * plan.steps} in all), seeds {list(plan.seeds)}; "
            f"{n_evals} evaluations at {list(plan.eval_budgets)} bits (trained: {list(plan.budgets)}), each the KL "
            f"scoreboard on {plan.ppl_limit} held-out window(s) per play and {plan.task_limit} items of "
            f"{', '.join(plan.tasks)}.")


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}


def _with_seeds(plan: ComparePlan, seeds: set[int]) -> ComparePlan:
    import dataclasses

    return dataclasses.replace(plan, seeds=tuple(sorted(seeds)))


def _read_state(folder: Path) -> dict:
    path = folder / STATE_FILE
    state = json.loads(path.read_text()) if path.is_file() else {}
    return {"estimate_seconds": None, "elapsed_seconds": 0.0, "runs": {}, "finished": False, **state}


def _passes(plan: ComparePlan, spec: RunSpec) -> int:
    """Forward-backward passes of one training (micro-batches x configurations per step x steps)."""
    options = plan.train_options(spec)
    per_step = options.grad_accumulation * options.replicas * min(options.configs_per_step, len(options.budgets))
    return per_step * options.steps


def _step_seconds(run_folder: Path) -> float:
    """Training seconds already spent by a resumed run's logged steps up to its checkpoint (the steps after it are
    trained again; the time of a killed process is otherwise lost)."""
    step = int(read_safetensors(run_folder / CHECKPOINT_FILE)[1]["step"])
    return float(sum(r.get("seconds", 0.0) for r in metric_rows(run_folder) if r.get("step", 0) <= step))


def _estimate(plan: ComparePlan, wb: Workbench, evaluator: Evaluator, configs: dict, echo) -> float:
    """Seconds the plan will take, from one measured forward-backward pass and one measured evaluation."""
    spec = plan.runs()[0]
    options = plan.train_options(spec)
    coa = CoALoRAModel(wb.qmodel, options.adapter_options(), config_aware=True, seed=0)
    ids = training_windows(wb.tokenizer, options.seq_length)[:options.batch_size]
    config = configs[plan.budgets[0]]
    coa.train(True)
    seconds = []
    for _ in range(3):  # the first pass warms caches up: keep the faster of the others
        t0 = time.perf_counter()
        accumulate_gradients(coa, coa.set_config, [config], [ids])
        seconds.append(time.perf_counter() - t0)
    coa.remove_()
    pass_s = min(seconds[1:])
    t0 = time.perf_counter()
    for task in (AGREEMENT, *plan.tasks):  # the quantized base at the first budget: measured, and kept (cached)
        evaluator.run(task, configs[plan.budgets[0]], limit=plan.ppl_limit if task == AGREEMENT else plan.task_limit)
    eval_s = time.perf_counter() - t0
    specs = plan.runs()
    passes = sum(_passes(plan, s) for s in specs)
    search_runs = sum(s.method not in PER_CONFIG for s in specs) if plan.search != "off" else 0
    # A search round measures its proposals and re-measures the set: about as much as a few training steps
    # (bench/search_round.py measured 3-8 on SmolLM2); count 6 steps' passes per round.
    rounds = search_runs * options.rounds * 6 * options.configs_per_step
    n_evals = sum(plan.serves(s, b) for s in specs for b in plan.eval_budgets) + len(plan.eval_budgets)
    estimate = (passes + rounds) * pass_s + n_evals * eval_s
    if echo is not None:
        echo(describe(plan) + f"\nMeasured: {pass_s:.2f} s a forward-backward pass, {eval_s:.1f} s an evaluation. "
             f"Estimated wall time: {estimate / 60:.1f} min ({passes} training passes, {n_evals} evaluations).")
    return estimate if math.isfinite(estimate) else 0.0
