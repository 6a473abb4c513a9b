"""The CLI end to end on the tiny model, in a subprocess, with the cache in a temp folder."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args, cache):
    # The tiny model needs no prepared assets; a private cache keeps its damage tables out of the user's.
    # HF_HUB_OFFLINE: this machine has no internet, so an unknown hub id should fail at once, not after retries.
    env = {**os.environ, "COA_LORA_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "coa_lora", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("damage")


def test_allocate_json_and_out(cache, tmp_path):
    out = tmp_path / "cfg.json"
    r = run("allocate", "--model", "tiny", "--budget", "3.0", "--weighting", "none", "--json", "--out", str(out),
            cache=cache)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert {"avg_bits", "size_bytes", "damage", "config"} <= set(result)
    assert result["avg_bits"] <= 3.0 and result["size_bytes"] < result["full_size_bytes"]
    assert json.loads(out.read_text())["options"] == result["config"]["options"]
    shown = run("show", "--model", "tiny", "--config", str(out), "--weighting", "none", "--json", cache=cache)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["damage"] == pytest.approx(result["damage"])


def test_summary(cache):
    r = run("allocate", "--model", "tiny", "--budget", "2.5", "--weighting", "none", cache=cache)
    assert r.returncode == 0, r.stderr
    assert "average bits per weight" in r.stdout and "MiB unquantized" in r.stdout
    assert len(r.stdout.splitlines()) == 3 + 2  # header lines + one line per block


@pytest.mark.parametrize("args,needle", [
    (["train", "--model", "tiny", "--out", "/nonexistent/run", "--u-lr-scale", "0"], "u_lr_scale must be a positive"),
    (["allocate", "--model", "tiny", "--budget", "1.0", "--weighting", "none"], "feasible range"),
    (["allocate", "--model", "tiny", "--budget", "9", "--weighting", "none"], "feasible range"),
    (["allocate", "--model", "no-such-model-anywhere", "--budget", "3"], "smollm2"),
    (["show", "--model", "tiny", "--config", "/nonexistent/cfg.json"], "Cannot read"),
])
def test_bad_input_is_one_sentence(cache, args, needle):
    r = run(*args, cache=cache)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


def test_default_fisher_weighting_needs_prepared_text(cache):
    # The default damage is Fisher-weighted, which reads calibration text: with an empty cache the error names the
    # command that prepares it.
    r = run("allocate", "--model", "tiny", "--budget", "3.0", cache=cache)
    assert r.returncode == 2 and "python -m coa_lora prepare" in r.stderr, r.stderr


# ---- eval and export take the model a run was trained on ------------------------------------------------------------
# In process (a subprocess would load torch again): the shipped tiny run was trained on "tiny", and without --model
# both commands must load that model, not the smollm2 default (whose weights the run's checkpoint does not fit).
TINY_RUN = Path(__file__).parent / "data" / "tiny_search_run"


def test_eval_and_export_take_the_model_from_the_run(tmp_path, capsys):
    from coa_lora import ModelConfig, Workbench, preset
    from coa_lora.cli import main

    task = tmp_path / "hand.jsonl"
    task.write_text(json.dumps({"context": "The capital of France is", "choices": ["Paris", "Rome"], "gold": 0}) + "\n")
    assert main(["eval", "--run", str(TINY_RUN), "--uniform", "nf3", "--tasks", str(task), "--no-cache",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "tiny-llama" and out["adapter"] is not None and out["results"][str(task)]["n"] == 1

    config = tmp_path / "cfg.json"
    config.write_text(ModelConfig.uniform(Workbench.load("tiny").layout, preset("nf3")).to_json())
    assert main(["export", "--run", str(TINY_RUN), "--config", str(config), "--adapter-only",
                 "--out", str(tmp_path / "peft")]) == 0
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("recorded, given, name", [
    ("SmolLM2-135M-Instruct", None, "smollm2"),  # the embedded models' display names map back to their load names
    ("tiny-llama", None, "tiny"),
    ("/models/my-llama", None, "/models/my-llama"),  # a folder or hub id loads as recorded
    ("tiny-llama", "smollm2", "smollm2"),  # an explicit --model wins (load_trained then refuses a mismatch)
])
def test_the_model_name_comes_from_the_run_unless_given(tmp_path, recorded, given, name):
    from argparse import Namespace

    from coa_lora.commands import _model_name
    from coa_lora.runs import RunInfo, write_run_info

    write_run_info(tmp_path, RunInfo(recorded, "0" * 64, "coa", {}, 0, {}))
    assert _model_name(Namespace(model=given, run=tmp_path)) == name
    assert _model_name(Namespace(model=None, run=None)) == "smollm2"


def test_train_flag_choices_are_the_options_own():
    # The parser lists choices literally (importing the options at parse time would load the adapter and search
    # modules); this keeps the two lists from drifting apart.
    import argparse

    from coa_lora.cli import build_parser
    from coa_lora.lora.options import DRAWS, METHODS, OBJECTIVES
    from coa_lora.search.in_run import SEARCH_MODES

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    choices = {a.dest: a.choices for a in sub.choices["train"]._actions if a.choices}
    assert set(choices["method"]) == set(METHODS) and set(choices["draws"]) == set(DRAWS)
    assert set(choices["objective"]) == set(OBJECTIVES) and set(choices["search"]) == set(SEARCH_MODES)


def test_train_passes_u_thetas_learning_rate_and_init_to_the_run(tmp_path):
    # The two levers of U_θ (#37) as flags reach the saved options. In-process: training reads the prepared text,
    # which the private cache of `run` does not have.
    from coa_lora.cli import main
    from coa_lora.lora.options import TrainOptions
    from coa_lora.runs import read_run_info

    out = tmp_path / "run"
    assert main(["train", "--model", "tiny", "--out", str(out), "--steps", "1", "--rank", "8", "--budgets", "2.5,4",
                 "--seq-length", "32", "--batch-size", "2", "--u-lr-scale", "10", "--u-init-std", "1e-3"]) == 0
    options = TrainOptions.saved(read_run_info(out).hyper)
    assert (options.u_lr_scale, options.u_init_std) == (10.0, 1e-3)
