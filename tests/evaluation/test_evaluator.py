"""Live evaluation on the tiny model: the result cache (memory and disk, keyed by configuration, adapter, task and
limit), adapters under a configuration, and the ``eval`` command."""
import json

import pytest
import torch

from coa_lora import ModelConfig, QuantizedModel, Workbench, preset
from coa_lora.cli import main
from coa_lora.evaluation import evaluator as evaluator_module
from coa_lora.evaluation.evaluator import Evaluator
from coa_lora.lora.adapter import AdapterOptions, CoALoRAModel
from coa_lora.models.loading import load_model, tiny_model, weight_hash
from coa_lora.quant.quantizer import QUANTIZER_VERSION


class Calls:
    """A progress callback that counts its calls: zero calls means nothing was computed."""

    def __init__(self):
        self.n = 0

    def __call__(self, done, total, message=""):
        self.n += 1


def logprobs(result):
    return [lp for item in result.items for lp in item.logprobs]


def perturb_(coa, seed=0):
    """Non-zero B and U_θ's last layer, so that the adapter changes every answer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in coa.wrappers.values():
            w.lora_B.weight.normal_(std=0.2, generator=g)
        coa.network.out.weight.normal_(std=0.2, generator=g)


def test_results_are_cached_in_memory_and_on_disk_by_configuration_and_limit(task_file, hand_rows, tmp_path):
    wb = Workbench.load("tiny")
    config = ModelConfig.uniform(wb.layout, preset("nf2"))
    ev = Evaluator(wb, cache_dir=tmp_path / "evals")
    calls = Calls()
    fp = ev.run(task_file, progress=calls)
    assert calls.n > 0 and fp.n == 4
    quantized = ev.run(task_file, config)
    assert logprobs(quantized) != logprobs(fp)  # a different key, computed under NF2
    assert wb.qmodel.config is None  # the evaluator puts back what was applied before

    again, fresh = Calls(), Calls()
    assert ev.run(task_file, config, progress=again) == quantized and again.n == 0
    other = Evaluator(Workbench.load("tiny"), cache_dir=tmp_path / "evals")  # a new process: from disk
    assert other.run(task_file, config, progress=fresh) == quantized and fresh.n == 0
    assert len(list((tmp_path / "evals").glob("*.json"))) == 2
    assert ev.run(task_file, config, limit=2).n == 2
    # Editing the task file changes its fingerprint: never a stale hit.
    (tmp_path / "hand.jsonl").write_text(json.dumps({**hand_rows[0], "gold": 0}) + "\n")
    assert ev.run(task_file, config).n == 1


def test_an_adapter_is_evaluated_under_its_configuration_and_cached_apart(task_file):
    wb = Workbench.load("tiny")
    config = ModelConfig.uniform(wb.layout, preset("nf3"))
    ev = Evaluator(wb)
    bare = ev.run(task_file, config)
    coa = CoALoRAModel(wb.qmodel, AdapterOptions())
    assert logprobs(ev.run(task_file, config, adapter=coa)) == pytest.approx(logprobs(bare), abs=1e-5)
    perturb_(coa)
    key = coa.fingerprint()
    adapted = ev.run(task_file, config, adapter=coa)
    assert logprobs(adapted) != pytest.approx(logprobs(bare), abs=1e-3)
    assert ev.cached(task_file, config, adapter_key=key) == adapted and ev.cached(task_file, config) == bare
    with pytest.raises(ValueError, match="depends on the configuration"):
        ev.run(task_file, None, adapter=coa)


@pytest.mark.parametrize("uniform", [None, "nf3"])
def test_bare_results_switch_every_adapter_off_and_equal_a_never_wrapped_model(uniform, task_file, tmp_path):
    wb = Workbench.load("tiny")
    config = None if uniform is None else ModelConfig.uniform(wb.layout, preset(uniform))
    coa = CoALoRAModel(wb.qmodel, AdapterOptions(lora_dropout=0.5))
    perturb_(coa)
    other_config = ModelConfig.uniform(wb.layout, preset("nf2"))
    adapted = Evaluator(wb).run(task_file, other_config, adapter=coa)  # the adapter was used: U set, wrappers on
    coa.train(True)  # and left in training mode, dropout on, as a trainer leaves it
    ev = Evaluator(wb, cache_dir=tmp_path / "evals")
    bare = ev.run(task_file, config)
    assert all(w.enabled for w in coa.wrappers.values()) and coa.model.training  # both put back after the run

    plain = Workbench.load("tiny")
    never = Evaluator(plain).run(task_file, config)  # no cache: computed on a model that never had wrappers
    assert logprobs(bare) == logprobs(never)
    assert logprobs(Evaluator(wb).run(task_file, other_config)) != pytest.approx(logprobs(adapted), abs=1e-3)
    # Cached as the bare model's: the never-wrapped model's evaluator finds it on disk without computing.
    calls = Calls()
    assert Evaluator(plain, cache_dir=tmp_path / "evals").run(task_file, config, progress=calls) == bare
    assert calls.n == 0


def test_an_adapter_runs_without_dropout_whatever_mode_it_was_left_in(task_file):
    wb = Workbench.load("tiny")
    config = ModelConfig.uniform(wb.layout, preset("nf3"))
    coa = CoALoRAModel(wb.qmodel, AdapterOptions(lora_dropout=0.5))
    perturb_(coa)
    coa.train(False)
    want = Evaluator(wb).run(task_file, config, adapter=coa)
    coa.train(True)
    assert logprobs(Evaluator(wb).run(task_file, config, adapter=coa)) == logprobs(want)
    assert coa.model.training
    with pytest.raises(ValueError, match="pass the adapter itself"):
        Evaluator(wb).run(task_file, config, adapter_key=coa.fingerprint())  # a key alone can only look up


def test_weight_hash_is_the_unquantized_models_whatever_is_applied_or_wrapped():
    want = weight_hash(load_model("tiny"))
    wb = Workbench.load("tiny")
    coa = CoALoRAModel(wb.qmodel, AdapterOptions())
    perturb_(coa)
    coa.set_config(ModelConfig.uniform(wb.layout, preset("nf2")))  # before the first use of weight_hash
    assert wb.weight_hash == want
    model = tiny_model(seed=1).eval().requires_grad_(False)
    assert Workbench("tiny", model, QuantizedModel.from_model(model, "tiny-llama")).weight_hash != want


def test_cache_key_follows_the_weights_and_the_quantizer_version(task_file, tmp_path, monkeypatch):
    wb = Workbench.load("tiny")
    config = ModelConfig.uniform(wb.layout, preset("nf3"))
    first = Evaluator(wb, cache_dir=tmp_path).run(task_file, config)
    model = tiny_model(seed=1).eval().requires_grad_(False)
    other = Workbench("tiny", model, QuantizedModel.from_model(model, "tiny-llama"))  # same name, other weights
    assert other.layout.model_id == wb.layout.model_id
    calls = Calls()
    assert logprobs(Evaluator(other, cache_dir=tmp_path).run(task_file, config, progress=calls)) != logprobs(first)
    assert calls.n > 0
    hit, bumped = Calls(), Calls()
    assert Evaluator(Workbench.load("tiny"), cache_dir=tmp_path).run(task_file, config, progress=hit) == first
    monkeypatch.setattr(evaluator_module, "QUANTIZER_VERSION", QUANTIZER_VERSION + 1)  # as after a quantizer fix
    Evaluator(Workbench.load("tiny"), cache_dir=tmp_path).run(task_file, config, progress=bumped)
    assert hit.n == 0 and bumped.n > 0


def test_eval_command_prints_json_and_a_table(task_file, capsys):
    assert main(["eval", "--model", "tiny", "--tasks", task_file, "--limit", "3", "--no-cache", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    result = out["results"][task_file]
    assert out["config"] == "full-precision" and out["limit"] == 3 and result["n"] == 3
    assert 0 <= result["acc"] <= 1 and 0 <= result["acc_norm"] <= 1 and result["chance"] == pytest.approx(7 / 18)
    assert main(["eval", "--model", "tiny", "--tasks", task_file, "--uniform", "nf3", "--no-cache"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "average bits" in table[0] and table[1].split() == ["task", "metric", "value", "stderr", "n"]
    assert [line.split()[1] for line in table[2:]] == ["acc", "acc_norm"]


@pytest.mark.parametrize("args,needle", [
    (["--tasks", "no_such_task"], "no_such_task"),
    (["--tasks", ","], "--tasks is empty"),
    (["--tasks", "ppl", "--limit", "0"], "--limit must be a positive integer"),
    (["--tasks", "ppl", "--run", "/nonexistent/run"], "not a run folder"),
    (["--tasks", "ppl", "--uniform", "nf5"], "Unknown preset 'nf5'"),
])
def test_eval_bad_input_is_one_sentence(args, needle, capsys):
    assert main(["eval", "--model", "tiny", "--no-cache", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_eval_rejects_a_bad_row_naming_the_task_and_row(tmp_path, hand_rows, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(hand_rows[0]) + "\n" + json.dumps({**hand_rows[1], "choices": ["only one"]}) + "\n")
    assert main(["eval", "--model", "tiny", "--tasks", str(bad), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "bad" in err and "2" in err and "at least 2 choices" in err
