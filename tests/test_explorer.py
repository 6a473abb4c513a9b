"""The explorer's shared model on the tiny model: concurrent users each get their own configuration's result,
adapters of runs attach and detach cleanly, runs are read with clear errors, compact copies evaluate but never
resume."""
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from coa_lora import ModelConfig, Workbench, preset
from coa_lora.explorer import PACKED_RUNTIME, Explorer
from coa_lora.lora.trainer import TrainOptions, load_trained, train
from coa_lora.runs import CHECKPOINT_FILE, compact_run, read_safetensors
from coa_lora.search.run_view import open_run

TINY_RUN = Path(__file__).parent / "data" / "tiny_search_run"


def logprobs(result):
    return [lp for item in result.items for lp in item.logprobs]


def test_two_users_evaluating_different_budgets_at_once_each_get_their_own_configuration(task_file):
    ex = Explorer(Workbench.load("tiny"))
    configs = [ModelConfig.uniform(ex.layout, preset(p)) for p in ("nf2", "nf4")]
    expected = [logprobs(Explorer(Workbench.load("tiny")).evaluate(task_file, c)) for c in configs]
    assert expected[0] != expected[1]
    start, out = threading.Barrier(2), [None, None]

    def user(i):
        start.wait()
        for _ in range(3):  # interleave: each thread re-applies its configuration while the other one waits
            ex.evaluator._memory.clear()
            out[i] = logprobs(ex.evaluate(task_file, configs[i]))
    threads = [threading.Thread(target=user, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == expected


def test_bare_model_after_an_adapter_equals_a_never_wrapped_model_and_adapters_switch(task_file, tmp_path):
    ex = Explorer(Workbench.load("tiny"))
    config = ModelConfig.uniform(ex.layout, preset("nf3"))
    fresh = Explorer(Workbench.load("tiny")).evaluate(task_file, config)
    shared = tmp_path / "shared"
    wb = Workbench.load("tiny")
    train(wb, TrainOptions(method="shared", steps=2, budgets=(3.0, 4.0), checkpoint_every=1, eval_every=2), shared)
    with_coa = ex.evaluate(task_file, config, run=TINY_RUN)
    with_shared = ex.evaluate(task_file, config, run=shared)
    bare = ex.evaluate(task_file, config)
    assert logprobs(bare) == logprobs(fresh)
    assert logprobs(with_coa) != logprobs(bare) and logprobs(with_shared) != logprobs(with_coa)
    # A second explorer that attaches the runs in the other order gets the same numbers (switching is clean).
    other = Explorer(Workbench.load("tiny"))
    assert logprobs(other.evaluate(task_file, config, run=shared)) == logprobs(with_shared)
    assert logprobs(other.evaluate(task_file, config, run=TINY_RUN)) == logprobs(with_coa)


def test_searched_configuration_is_the_least_probe_loss_within_the_budget():
    ex = Explorer(Workbench.load("tiny"))
    view = ex.open_run(TINY_RUN)
    searched = view.searched_set(ex.layout)
    assert searched and [c.avg_bits for c, _ in searched] == sorted(c.avg_bits for c, _ in searched)
    budget = searched[-1][0].avg_bits
    config, f1 = ex.searched_configuration(view, budget)
    assert config.avg_bits <= budget and f1 == min(f for c, f in searched if c.avg_bits <= budget)
    with pytest.raises(ValueError, match="has no configuration within 2.00 bits; its smallest has"):
        ex.searched_configuration(view, 2.0)


def test_run_view_lists_each_proposal_with_its_prediction_and_the_gp_per_round():
    view = open_run(TINY_RUN)
    proposals = view.proposals()
    assert len(proposals) == 10 and sorted(proposals["round"].unique()) == [1, 2]
    assert proposals[["predicted", "predicted_sd", "measured", "distance_bits"]].notna().all().all()
    pool = view.pool.set_index("id")
    assert (proposals["measured"].values == pool.loc[proposals["id"], "measured_f1"].values).all()
    gp = view.gp_hyperparameters()
    assert gp["round"].tolist() == [1, 2] and (gp["noise"] > 0).all() and gp["lengthscale"].map(len).eq(5).all()


def test_run_view_refuses_what_is_not_a_readable_run_of_this_model(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="is empty"):
        open_run(empty)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="is not a coa-lora run folder"):
        open_run(foreign)
    with pytest.raises(ValueError, match="was trained on tiny-llama, not on the loaded model"):
        open_run(TINY_RUN, weight_hash="0" * 64)
    broken = tmp_path / "broken"
    shutil.copytree(TINY_RUN, broken)
    (broken / "search_history.jsonl").write_text('{"round": 0, "id"')
    with pytest.raises(ValueError, match="search_history.jsonl is corrupt"):
        open_run(broken)
    view = open_run(TINY_RUN)
    assert view.has_search and view.round_numbers()[0] == 0 and len(view.segment_edges()) == view.segments + 1


def test_compact_copy_evaluates_like_the_run_within_half_precision_and_refuses_resume(tmp_path, task_file):
    wb = Workbench.load("tiny")
    run = tmp_path / "run"
    options = TrainOptions(method="coa", steps=2, budgets=(3.0, 4.0), checkpoint_every=1, eval_every=2)
    train(wb, options, run)
    copy = compact_run(run, tmp_path / "copy", "float16")
    tensors, meta = read_safetensors(copy / CHECKPOINT_FILE)
    assert meta["compact_dtype"] == "float16" and all(t.dtype == torch.float16 for t in tensors.values())
    assert (copy / CHECKPOINT_FILE).stat().st_size * 4 < (run / CHECKPOINT_FILE).stat().st_size
    full, _, _ = load_trained(Workbench.load("tiny"), run)
    half, _, _ = load_trained(Workbench.load("tiny"), copy)
    for name, p in full.named_parameters().items():
        assert torch.allclose(half.named_parameters()[name], p, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="compact copy .* not resumed"):
        train(Workbench.load("tiny"), options, copy, resume=True)
    with pytest.raises(ValueError, match="already exists"):
        compact_run(run, copy)


def test_a_waiting_evaluation_says_how_many_are_ahead_and_can_be_cancelled_while_it_waits(task_file):
    from coa_lora import EvaluationCancelled

    ex = Explorer(Workbench.load("tiny"))
    ex.lock.poll = 0.01
    config = ModelConfig.uniform(ex.layout, preset("nf3"))
    seen, stop, outcome = [], threading.Event(), []

    def user():
        try:
            ex.evaluate(task_file, config, should_stop=stop.is_set, on_wait=seen.append)
            outcome.append("ran")
        except EvaluationCancelled:
            outcome.append("cancelled")

    ex.lock.acquire()  # another session's job holds the model
    try:
        thread = threading.Thread(target=user)
        thread.start()
        while not seen:
            time.sleep(0.005)
        assert ex.queue_length == 2 and set(seen) == {1}  # one job (the holder) ahead
        stop.set()
        thread.join(10)
    finally:
        ex.lock.release()
    assert outcome == ["cancelled"] and ex.queue_length == 0
    assert ex.instantiate(config, timeout=0.5) is not None  # nobody stale holds the model


def test_presets_are_measured_under_the_runs_adapter_as_its_search_measured_f1_and_cached_on_disk(tmp_path):
    from coa_lora.lora.trainer import probe_windows
    from coa_lora.runs import read_run_info
    from coa_lora.search.in_run import probe_loss

    presets = {name: preset(name) for name in ("nf2", "nf4")}
    ex = Explorer(Workbench.load("tiny"), eval_cache_dir=tmp_path)
    got = ex.preset_losses(TINY_RUN, presets)
    # By hand: the run's adapter under the uniform configuration, on the run's probe windows.
    hyper = read_run_info(TINY_RUN).hyper
    wb = Workbench.load("tiny")
    coa, _, _ = load_trained(wb, TINY_RUN)
    windows = probe_windows(wb.tokenizer, hyper["seq_length"], hyper["probe_windows"])
    for name, option in presets.items():
        config = ModelConfig.uniform(wb.layout, option)
        coa.set_config(config)
        assert got[name] == pytest.approx((config.avg_bits, probe_loss(coa.model, windows, hyper["batch_size"])),
                                          rel=1e-5)
    assert got["nf2"][1] > got["nf4"][1]  # fewer bits, more loss
    assert len(list((tmp_path / "presets").glob("*.json"))) == 1
    again = Explorer(Workbench.load("tiny"), eval_cache_dir=tmp_path)  # a new server: read from disk
    again.wb.qmodel.apply_ = None  # any measurement would need to quantize: the cached file must answer
    assert again.preset_losses(TINY_RUN, presets) == got


def test_the_deployed_packed_model_evaluates_as_the_configuration_it_deploys_and_is_cached_apart(task_file, tmp_path):
    ex = Explorer(Workbench.load("tiny"), eval_cache_dir=tmp_path)
    config = ModelConfig.uniform(ex.layout, preset("nf3"))
    shared = ex.evaluate(task_file, config)
    deployed = ex.evaluate(task_file, config, deployed=True)
    assert deployed is not shared and logprobs(deployed) == logprobs(shared)  # bit for bit without an adapter
    assert ex.evaluate("ppl", config, limit=1, deployed=True).perplexity == ex.evaluate("ppl", config, limit=1).perplexity
    # With a run's adapter folded into the export: its log-probabilities within float32 noise of the shared model's.
    with_adapter = ex.evaluate(task_file, config, TINY_RUN, deployed=True)
    expected = ex.evaluate(task_file, config, TINY_RUN)
    assert torch.allclose(torch.tensor(logprobs(with_adapter)), torch.tensor(logprobs(expected)), atol=1e-4)
    assert [i.correct for i in with_adapter.items] == [i.correct for i in expected.items]
    # Cached apart, on disk: a new explorer answers from the file without exporting or loading the deployed model.
    again = Explorer(Workbench.load("tiny"), eval_cache_dir=tmp_path)
    assert logprobs(again.cached(task_file, config, TINY_RUN, deployed=True)) == logprobs(with_adapter)
    assert logprobs(again.evaluate(task_file, config, TINY_RUN, deployed=True)) == logprobs(with_adapter)
    assert again._deployed is None
    stored = [json.loads(f.read_text())["key"] for f in tmp_path.glob("*.json")]
    assert {k.get("runtime") for k in stored} == {None, PACKED_RUNTIME}  # the packed format is part of the key
    assert again.cached(task_file, ModelConfig.uniform(ex.layout, preset("nf4")), deployed=True) is None
    with pytest.raises(ValueError, match="nothing to deploy"):
        ex.evaluate(task_file, None, deployed=True)
