"""The search inside training on the tiny model: rounds between epochs, the run folder's log, resume after a kill."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from coa_lora import Workbench
from coa_lora.configs.model_config import ModelConfig
from coa_lora.lora.step import stratified_draws
from coa_lora.lora.trainer import TrainOptions, train
from coa_lora.runs import CHECKPOINT_FILE, read_metrics, read_run_info, read_search_tables
from coa_lora.search.in_run import round_steps
from coa_lora.search.pareto import HypervolumePlane
from coa_lora.storage import read_safetensors

# Rank 8 (alpha 16): the hyperparameters these checks were tuned with on the tiny random model; the library's
# default is rank 64 since #37.
SMALL = {"rank": 8, "alpha": 16.0, "steps": 6, "budgets": (2.5, 3.0, 4.0, 6.0), "seq_length": 32, "batch_size": 2,
         "checkpoint_every": 5, "eval_every": 6, "probe_windows": 2, "probe_configs": 2, "rounds": 2, "proposals": 3,
         "segments": 4}


def test_round_steps_split_training_into_equal_epochs():
    assert round_steps(60, 3) == [15, 30, 45]
    assert round_steps(6, 2) == [2, 4]
    assert round_steps(10, 1) == [5]


def test_search_options_are_validated():
    with pytest.raises(ValueError, match="Unknown search mode 'grid'"):
        TrainOptions(search="grid")
    with pytest.raises(ValueError, match="search needs a configuration set"):
        TrainOptions(method="qlora", budgets=(3.0,), search="search")
    with pytest.raises(ValueError, match="give at least 2 budgets, got \\[3.0, 3.0\\]"):
        TrainOptions(budgets=(3.0, 3.0), search="random")
    with pytest.raises(ValueError, match="3 search rounds need more than 3 training steps"):
        TrainOptions(steps=3, search="search", rounds=3)
    assert TrainOptions.from_dict(TrainOptions(search="random").to_dict()).search == "random"


def keys_of(layout, pool, ids):
    by_id = {int(r["id"]): r["options"] for _, r in pool.iterrows()}
    return {ModelConfig.from_option_indices(layout, by_id[i]).key() for i in ids}


def test_training_with_search_trains_on_each_rounds_selection(tmp_path):
    wb = Workbench.load("tiny")
    result = train(wb, TrainOptions(search="search", **SMALL), tmp_path)
    t = read_search_tables(tmp_path)
    pool, history, rounds = t["pool"], t["history"], t["rounds"]
    n0 = int(rounds.loc[0, "n_pool"])
    assert rounds["round"].tolist() == [0, 1, 2, 3]
    assert rounds["mode"].tolist() == ["initial", "search", "search", "final"]  # final: the trained adapter's front
    assert rounds["n_pool"].tolist() == [n0, n0 + 3, n0 + 6, n0 + 6] and len(pool) == n0 + 6
    assert pool["id"].is_unique and len({tuple(o) for o in pool["options"]}) == len(pool)
    assert pool.groupby("source").size().to_dict() == {"initial": n0, "search": 6}
    assert rounds[["hv_pool", "hv_train"]].gt(0).all().all()
    assert (rounds["seconds_fit"].iloc[1:3] > 0).all() and (rounds["seconds_refresh"].iloc[1:] > 0).all()
    final = history[history["round"] == 3]
    assert (final["f1"] != history[history["round"] == 2]["f1"].values).any()  # re-measured with the final adapter
    # Every round compares losses of one adapter: the training set is re-measured before each round and at the end,
    # every other configuration moved by the change measured at its bits (flagged), so no f1 is stale.
    measured = ~history["f1_estimated"]
    assert (history.loc[measured, "f1_round"] == history.loc[measured, "round"]).all()
    assert not history.loc[history["selected"] & (history["round"] > 0), "f1_estimated"].any()
    assert ((pool["f1_round"] == 3) | pool["f1_estimated"]).all()
    # Each proposal carries the GP's prediction, what it was measured at, and how far it was from the pool.
    searched = pool[pool["source"] == "search"]
    assert searched[["predicted_f1", "predicted_sd", "measured_f1", "distance_bits", "changed_matrices"]].notna().all().all()
    assert set(searched["candidate"]) <= {"grid", "perturbation", "recombination", "start"}
    assert all(set(g) >= {"outputscale", "noise", "lengthscale"} for g in rounds["gp"].iloc[1:3])
    # The final measurement does not re-select: it reports the set the last epoch trained on.
    assert final["selected"].tolist() == history[history["round"] == 2]["selected"].tolist()
    assert not rounds[["seconds_fit", "seconds_acquisition", "seconds_evaluate", "seconds_refresh"]].isna().any().any()
    # The plane in run.json is the one every hypervolume was computed in.
    plane = HypervolumePlane.from_dict(read_run_info(tmp_path).search_plane)
    state = json.loads((tmp_path / "search.json").read_text())
    assert plane == HypervolumePlane.from_dict(state["plane"]) and state["pending"] == []
    # Each epoch draws its configurations from the selection of the round before it (rounds after steps 2 and 4).
    metrics = read_metrics(tmp_path)
    for r, steps in ((0, (1, 2)), (1, (3, 4)), (2, (5, 6))):
        rows = history[(history["round"] == r) & history["selected"]]
        allowed = keys_of(wb.layout, pool, rows["id"].tolist())
        used = {k for s in steps for k in metrics.loc[metrics["step"] == s, "configs"].iloc[0]}
        assert used <= allowed, f"epoch after round {r} trained on configurations it had not selected"
        assert len(history[history["round"] == r]) == rounds.loc[r, "n_pool"]
    assert {c.key() for c in result.configs} == allowed  # the last epoch's set (the final row re-measures it)


def test_frozen_keeps_the_initial_set_and_random_adds_random_configurations(tmp_path):
    options = {**SMALL, "steps": 3, "rounds": 1}
    frozen = train(Workbench.load("tiny"), TrainOptions(search="frozen", **options), tmp_path / "frozen")
    t = read_search_tables(tmp_path / "frozen")
    assert t["rounds"]["n_new"].tolist() == [len(frozen.configs), 0, 0]
    assert len(frozen.configs) == len(t["pool"]) == t["rounds"].loc[0, "n_pool"]
    # (stratified draws: the trainer hands them the grown set's bits and the initial set's)
    train(Workbench.load("tiny"), TrainOptions(search="random", draws="stratified", **options), tmp_path / "random")
    t = read_search_tables(tmp_path / "random")
    assert t["pool"].groupby("source").size().to_dict() == {"initial": len(frozen.configs), "random": 3}
    # The last step (after the round) drew by the grown set's bits and the initial set's, both in bits order.
    history = t["history"]
    grown = history[(history["round"] == 1) & history["selected"]]
    by_id = {int(r["id"]): (r["avg_bits"], ModelConfig.from_option_indices(frozen.configs[0].layout, r["options"]).key())
             for _, r in t["pool"].iterrows()}
    members = sorted(by_id[int(i)] for i in grown["id"])  # bits_sorted: (bits, key)
    initial = sorted(b for b, _ in (by_id[int(i)] for i in t["pool"][t["pool"]["source"] == "initial"]["id"]))
    assert len(members) > len(initial)  # the set grew, so the draws differ from anchored ones in general
    expected = [members[p][1] for p in stratified_draws(0, 2, 2, [b for b, _ in members], initial)]
    assert read_metrics(tmp_path / "random")["configs"].iloc[-1] == expected
    # Both runs fixed the same plane from the same initial set: their hypervolumes are comparable.
    assert read_run_info(tmp_path / "frozen").search_plane == read_run_info(tmp_path / "random").search_plane


KILLER = """
import json, os, signal, sys
from coa_lora import Workbench
from coa_lora.lora.trainer import TrainOptions, train

def progress(done, total, message):
    if "evaluating proposals 2/" in message:  # the second proposal is evaluated and saved
        os.kill(os.getpid(), signal.SIGKILL)

options = json.loads(sys.argv[2])
train(Workbench.load("tiny"), TrainOptions(**{**options, "budgets": tuple(options["budgets"])}), sys.argv[1],
      progress=progress)
"""


def test_a_run_killed_during_a_search_round_keeps_its_evaluations_and_resumes_exactly(tmp_path):
    options = {**SMALL, "steps": 4, "rounds": 1, "search": "search"}
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLER, str(killed), json.dumps(options)], timeout=600,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    before = json.loads((killed / "search.json").read_text())
    n0 = before["rounds"][0]["n_pool"]
    assert before["round"] == 1 and len(before["rounds"]) == 1 and len(before["pool"]) == n0 + 2  # open round
    assert len(before["pending"]) == 3

    opts = TrainOptions(**{**options, "budgets": tuple(options["budgets"])})
    messages = []
    train(Workbench.load("tiny"), opts, killed, resume=True, progress=lambda d, t, m: messages.append(m))
    # The resumed round evaluated only the proposal it had not: progress jumps straight to the third.
    assert [m[-3:] for m in messages if "evaluating proposals" in m] == ["3/3"]
    train(Workbench.load("tiny"), opts, tmp_path / "whole")
    after = json.loads((killed / "search.json").read_text())
    whole = json.loads((tmp_path / "whole" / "search.json").read_text())
    # Nothing evaluated before the kill was lost, and round 1 closed on exactly the values measured before it.
    fields = ("id", "round", "source", "options")
    assert [{k: r[k] for k in fields} for r in after["pool"][: n0 + 2]] == [{k: r[k] for k in fields}
                                                                          for r in before["pool"]]
    closed = {h["id"]: h["f1"] for h in after["history"] if h["round"] == 1}
    assert all(closed[r["id"]] == r["f1"] for r in before["pool"])
    assert after["pool"] == whole["pool"] and after["history"] == whole["history"]
    assert [r["hv_pool"] for r in after["rounds"]] == [r["hv_pool"] for r in whole["rounds"]]
    a = read_safetensors(killed / CHECKPOINT_FILE)[0]
    b = read_safetensors(tmp_path / "whole" / CHECKPOINT_FILE)[0]
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
    assert os.path.getsize(killed / "search_pool.jsonl") > 0


def test_cli_search_flags(tmp_path, capsys):
    from coa_lora.cli import build_parser, main

    parser = build_parser()
    assert parser.parse_args(["train", "--out", "x", "--search"]).search == "search"
    args = parser.parse_args(["train", "--out", "x", "--search", "random", "--rounds", "2", "--proposals", "4"])
    assert (args.search, args.rounds, args.proposals) == ("random", 2, 4)
    assert parser.parse_args(["train", "--out", "x"]).search is None
    out = tmp_path / "run"
    assert main(["train", "--model", "tiny", "--method", "qlora", "--budgets", "3", "--search", "--out", str(out)]) == 2
    assert "search needs a configuration set" in capsys.readouterr().err and not out.exists()
