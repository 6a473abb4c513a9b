"""The comparison end to end on the tiny model: `compare --quick` trains every adapter of the plan as an ordinary run,
evaluates each where its method uses it, writes result files and a report made from them; a killed comparison resumes
to the same numbers; a plan that cannot run is refused before anything trains."""
import dataclasses
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from coa_lora.cli import main
from coa_lora.compare import (ComparePlan, merge_results, read_reference, read_results, read_why, results_markdown,
                              run_comparison)
from coa_lora.compare.report import gaps, time_ratio
from coa_lora.lora import Workbench
from coa_lora.runs import read_run_info

# The kill-and-resume plan: the smallest with a per-configuration and a CoA-LoRA run (a search resumes exactly in
# tests/search/test_in_run.py; the quick comparison runs one).
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "data" / "compare"
SMALL = ComparePlan.quick(methods=("qlora", "coa"), seeds=(0,), budgets=(2.5,), unseen=(3.0,), steps=4, search="off")


def test_quick_comparison_trains_evaluates_reports_and_resumes_without_work(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "Estimated wall time" in printed.err  # the plan and its estimate come before anything trains
    plan = ComparePlan.quick()
    results, runs, summary = read_results(out)
    # Every adapter is an ordinary run folder of the trainer, and every evaluation where its method uses it.
    assert sorted(runs.run) == sorted(s.name for s in plan.runs())
    for spec in plan.runs():
        assert read_run_info(out / "runs" / spec.name).method == spec.method
    served = sum(plan.serves(s, b) for s in plan.runs() for b in plan.eval_budgets) + len(plan.eval_budgets)
    assert len(results) == served
    assert set(results.method) == {"base", "qlora", "shared", "coa"}
    # Per-configuration LoRA at the unseen 3.25 bits uses its nearest adapter (2.5 and 4.0 tie: the lower one).
    unseen = results[(results.method == "qlora") & (results.budget == 3.25)]
    assert set(unseen.adapter_budget) == {2.5} and not unseen.trained.any()
    assert (results.kl >= 0).all() and results.top1.between(0, 1).all() and (results.perplexity > 1).all()
    # The report is made from the files alone, and says how long it took beside the estimate.
    markdown = (out / "RESULTS.md").read_text()
    assert markdown == results_markdown(summary) and markdown in printed.out
    assert "min measured against" in markdown and summary["estimate_seconds"] > 0
    # Cells are means over the two seeds, with n.
    cell = [c for c in summary["cells"] if (c["method"], c["budget"], c["metric"]) == ("coa", 2.5, "perplexity")][0]
    coa = results[(results.method == "coa") & (results.budget == 2.5)].perplexity
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(coa.mean()) and cell["sd"] == pytest.approx(coa.std())
    # A second run of the same command trains and evaluates nothing: the same numbers, read from the folder.
    state = json.loads((out / "state.json").read_text())
    assert main(["compare", "--quick", "--out", str(out)]) == 0
    again, _, _ = read_results(out)
    pd.testing.assert_frame_equal(again, results)
    assert json.loads((out / "state.json").read_text())["runs"] == state["runs"]
    # An adapter of the comparison evaluates with the ordinary eval command.
    assert main(["eval", "--run", str(out / "runs" / "coa-seed0"), "--budget", "3.0", "--tasks", "ppl", "--limit",
                 "1", "--no-cache", "--json"]) == 0
    # An earlier comparison (the shipped SmolLM2 one) kept as reference rows: remembered in the folder, its numbers
    # as rows labelled with what its plan sets differently, its diagnosis as the report's Why section.
    shipped = SHIPPED_DIR / "smollm2-rank8"
    assert main(["compare", "--quick", "--out", str(out), "--reference", str(shipped)]) == 0
    _, _, summary = read_results(out)  # this command's own (its wall time)
    reference = read_reference(out, summary["plan"])
    _, _, theirs = read_results(shipped)
    assert reference.folder.resolve() == shipped.resolve() and reference.summary == theirs
    # What the SmolLM2 plan sets differently from the quick one, starting with the model, rank and steps.
    assert reference.label.startswith(f"model smollm2, rank {theirs['plan']['rank']}, 60 steps, budgets 2.5, 3, 3.5, 4")
    markdown = (out / "RESULTS.md").read_text()
    coa = [c for c in theirs["cells"] if (c["method"], c["budget"], c["metric"]) == ("coa", 2.5, "perplexity")][0]
    row = next(line for line in markdown.splitlines() if line.startswith(f"| CoA-LoRA, {reference.label} |"))
    assert f"| {coa['mean']:.2f} ± {coa['sd']:.2f} ({coa['n']}) |" in row
    assert markdown.count(f", {reference.label} |") == 3 * 4  # three methods in each of the four tables
    assert reference.why == read_why(shipped) and markdown == results_markdown(summary, read_why(out), reference)
    assert f"## Why CoA-LoRA trails a LoRA per configuration: the factors measured (on the earlier comparison, " \
           f"{reference.label})" in markdown
    # A bad reference is one sentence and changes nothing on disk.
    before = (out / "reference.json").read_bytes()
    for bad in (out, tmp_path / "nothing-here"):
        assert main(["compare", "--quick", "--out", str(out), "--reference", str(bad)]) == 2
        assert "--reference" in capsys.readouterr().err
    assert (out / "reference.json").read_bytes() == before and (out / "RESULTS.md").read_text() == markdown
    # A stored reference whose folder moved is refused before any work, naming the file and the way out.
    moved = tmp_path / "moved-reference"
    shutil.copytree(shipped, moved)
    assert main(["compare", "--quick", "--out", str(out), "--reference", str(moved)]) == 0
    shutil.rmtree(moved)
    markdown = (out / "RESULTS.md").read_text()
    assert main(["compare", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "reference.json points at" in err and "holds no comparison results" in err
    assert (out / "RESULTS.md").read_text() == markdown


class Killed(Exception):
    pass


def test_a_killed_comparison_resumes_to_the_numbers_of_an_uninterrupted_one(tmp_path):
    whole = run_comparison(SMALL, tmp_path / "whole", wb=Workbench.load("tiny"))
    steps = []

    def kill_in_the_second_run(done, total, message=""):
        if message.startswith("qlora-2.5bits-seed0") and "loss" in message:
            steps.append(message)
            if len(steps) == 3:  # after step 3, whose checkpoint is on disk (checkpoint_every 3): resumed from there
                raise Killed()

    with pytest.raises(Killed):
        run_comparison(SMALL, tmp_path / "killed", wb=Workbench.load("tiny"), progress=kill_in_the_second_run)
    state = json.loads((tmp_path / "killed" / "state.json").read_text())
    assert list(state["runs"]) == ["coa-seed0"]  # the first run finished, the second did not
    resumed = run_comparison(SMALL, tmp_path / "killed", wb=Workbench.load("tiny"))
    cols = ["method", "budget", "perplexity", "kl", "top1", "date_understanding.acc"]
    pd.testing.assert_frame_equal(pd.DataFrame(resumed.rows)[cols], pd.DataFrame(whole.rows)[cols])
    # Two processes on disjoint seeds merge into one comparison (the base, evaluated by both, counted once).
    other = run_comparison(dataclasses.replace(SMALL, seeds=(1,)), tmp_path / "other", wb=Workbench.load("tiny"))
    merged = merge_results([tmp_path / "whole", tmp_path / "other"], tmp_path / "merged", "merge")
    rows, runs, summary = read_results(tmp_path / "merged")
    assert summary["plan"]["seeds"] == [0, 1] and sorted(runs.run) == sorted(list(whole.state["runs"]) +
                                                                               list(other.state["runs"]))
    assert len(rows) == len(whole.rows) + len(other.rows) - len(SMALL.eval_budgets)
    cell = [c for c in summary["cells"] if (c["method"], c["budget"], c["metric"]) == ("coa", 3.0, "kl")][0]
    assert cell["n"] == 2 and merged.state["finished"]
    with pytest.raises(ValueError, match="share seeds"):
        merge_results([tmp_path / "whole", tmp_path / "killed"], tmp_path / "bad", "merge")


@pytest.mark.parametrize("args, message", [
    (["--methods", "qlora,nope"], "Unknown method 'nope'"),
    (["--budgets", "1.5,3"], "outside the feasible range"),
    (["--unseen", "2.5"], "both trained and unseen"),
    (["--seeds", "0,zero"], "--seeds must be comma-separated numbers"),
])
def test_a_plan_that_cannot_run_is_refused_in_one_sentence_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "cmp"
    assert main(["compare", "--quick", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_folder_of_another_plan_is_refused_before_anything_trains(tmp_path, capsys):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "plan.json").write_text(json.dumps(SMALL.to_dict()))
    before = sorted(p.name for p in out.iterdir())
    assert main(["compare", "--quick", "--out", str(out), "--steps", "5"]) == 2
    assert "another plan" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["compare", "--quick", "--out", str(tmp_path / "other")]) == 2
    assert "not a comparison folder" in capsys.readouterr().err


def test_plan_runs_nearest_adapters_and_round_trip():
    plan = ComparePlan.quick(budgets=(2.5, 3.0), unseen=(2.75, 3.5))
    names = [s.name for s in plan.runs()]
    assert names[:4] == ["coa-seed0", "shared-seed0", "qlora-2.5bits-seed0", "qlora-3bits-seed0"]
    by_budget = {s.budget: s for s in plan.runs() if s.method == "qlora" and s.seed == 0}
    assert plan.serves(by_budget[2.5], 2.75) and not plan.serves(by_budget[3.0], 2.75)  # a tie goes to the lower
    assert plan.serves(by_budget[3.0], 3.5) and not plan.serves(by_budget[2.5], 3.5)
    coa = [s for s in plan.runs() if s.method == "coa"][0]
    assert all(plan.serves(coa, b) for b in plan.eval_budgets)
    assert ComparePlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert plan.same_plan(ComparePlan.quick(budgets=(2.5, 3.0), unseen=(2.75, 3.5), seeds=(0, 1, 2)))
    assert not plan.same_plan(ComparePlan.quick())
    assert plan.train_options(coa).search == "search" and plan.train_options(by_budget[2.5]).budgets == (2.5,)


def test_gaps_are_paired_by_seed_and_time_ratios_by_seed():
    plan = ComparePlan.quick(budgets=(3.0,), unseen=())
    rows = pd.DataFrame([
        {"method": "coa", "seed": 0, "budget": 3.0, "trained": True, "perplexity": 11.0},
        {"method": "coa", "seed": 1, "budget": 3.0, "trained": True, "perplexity": 20.0},
        {"method": "qlora", "seed": 0, "budget": 3.0, "trained": True, "perplexity": 10.0},
        {"method": "qlora", "seed": 1, "budget": 3.0, "trained": True, "perplexity": 20.0},
    ])
    g = gaps(plan, rows, "coa", "qlora", "perplexity").iloc[0]
    expected = [100 * math.log(1.1), 0.0]
    assert g["n"] == 2 and g["mean"] == pytest.approx(sum(expected) / 2)
    assert g["sd"] == pytest.approx(pd.Series(expected).std()) and g["se"] == pytest.approx(g["sd"] / math.sqrt(2))
    runs = pd.DataFrame([
        {"method": "qlora", "seed": 0, "train_seconds": 10.0}, {"method": "qlora", "seed": 0, "train_seconds": 30.0},
        {"method": "coa", "seed": 0, "train_seconds": 20.0}, {"method": "coa", "seed": 1, "train_seconds": 5.0},
        {"method": "qlora", "seed": 2, "train_seconds": 10.0}, {"method": "coa", "seed": 2, "train_seconds": 20.0},
    ])
    # Seed 1 has no per-configuration runs, seed 2 one of two (stopped part-way): neither has a ratio.
    assert time_ratio(runs, n_budgets=2) == {"mean": 0.5, "sd": 0.0, "n": 1}


def test_a_diagnosis_file_becomes_the_reports_why_section_and_a_bad_one_is_one_sentence(tmp_path):
    from coa_lora.compare import read_why

    _, _, summary = read_results(SHIPPED_DIR / "smollm2-rank8")
    assert read_why(tmp_path) == {} and "## Why" not in results_markdown(summary, read_why(tmp_path))
    entry = {"question": "Does U vary?", "finding": "Barely.", "command": "python bench/why.py --factor spread",
             "measured": {"share": {"mean": 0.1234, "sd": 0.0051, "n": 5}, "one seed": {"mean": 2.0, "sd": None,
                                                                                      "n": 1}}}
    arm = {"question": "Rank 64?", "finding": "Better.", "command": "python bench/why.py --factor arms",
           "measured": {"ppl at 2.5 bits": {"mean": -47.04, "sd": 7.9, "n": 3},
                        "ppl at 3 bits": {"mean": -10.2, "sd": 1.6, "n": 3},
                        "KL at 3 bits": {"mean": -4.5, "sd": 0.9, "n": 3}}}
    (tmp_path / "why.json").write_text(json.dumps({"spread": entry, "arm rank-64": arm, "verdict": arm}))
    text = results_markdown(summary, read_why(tmp_path)).split("## Why", 1)[1]
    # The verdict comes first; each factor is a subsection with its finding, a table and its command.
    assert [line for line in text.splitlines() if line.startswith("### ")] == [
        "### verdict: Rank 64?", "### spread: Does U vary?", "### arm rank-64: Rank 64?"]
    spread = text.split("### spread", 1)[1].split("###", 1)[0]
    assert "| Measured | value |" in spread and "| share | 0.123 ± 0.0051 (5) |" in spread
    assert "| one seed | 2 ± – (1) |" in spread and "`python bench/why.py --factor spread`" in spread
    # Measurements naming a budget become one row per quantity, a column per budget ("–" where not measured).
    rank = text.split("### arm rank-64", 1)[1]
    assert "| Measured | 2.5 bits | 3 bits |" in rank
    assert "| ppl | -47 ± 7.9 (3) | -10.2 ± 1.6 (3) |" in rank and "| KL | – | -4.5 ± 0.9 (3) |" in rank
    (tmp_path / "why.json").write_text(json.dumps({"spread": {"question": "?"}}))
    with pytest.raises(ValueError, match="is not a diagnosis file"):
        read_why(tmp_path)


def test_a_target_is_judged_only_over_five_seeds_or_more():
    import copy

    _, _, summary = read_results(SHIPPED_DIR / "smollm2-rank8")  # five seeds: every target judged
    rows = [line for line in results_markdown(summary).split("## CoA-LoRA against the others", 1)[1].splitlines()
            if line.startswith("| Per-configuration LoRA | perplexity |")]
    assert rows and all(line.endswith(("| yes |", "| no |")) for line in rows)
    fewer = copy.deepcopy(summary)
    for gap in fewer["gaps"]:
        gap["n"] = 3
    rows = [line for line in results_markdown(fewer).split("## CoA-LoRA against the others", 1)[1].splitlines()
            if line.startswith("| Per-configuration LoRA | perplexity |")]
    assert rows and all(line.endswith("| n < 5 |") for line in rows)


def test_a_reference_is_labelled_with_what_its_plan_sets_differently():
    from coa_lora.compare.reference import reference_label

    _, _, theirs = read_results(SHIPPED_DIR / "smollm2-rank8")
    now = {**theirs["plan"], "rank": 64}
    assert reference_label(now, theirs["plan"]) == "rank 8"
    assert reference_label({**now, "train": {"u_lr_scale": 10.0}}, theirs["plan"]) == "rank 8, u_lr_scale default"
    assert reference_label(now, {**theirs["plan"], "train": {"objective": "kd"}}) == "rank 8, objective kd"
    assert reference_label(theirs["plan"], theirs["plan"]) == "same plan"
