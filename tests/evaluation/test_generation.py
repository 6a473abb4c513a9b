"""Generation on the tiny model: greedy equals transformers' generate under any configuration, a seed fixes a sampled
text, each token's reference log-probability is the unquantized model's, two sessions at different budgets each get
their own configuration's text, and a cancel stops it."""
import threading

import pytest
import torch

from coa_lora import EvaluationCancelled, Explorer, ModelConfig, Workbench, preset
from coa_lora.evaluation import GenerateOptions, first_divergence, prompt_ids

PROMPT = "Now is the winter of our discontent"


@pytest.fixture(scope="module")
def ex():
    return Explorer(Workbench.load("tiny"))


def test_greedy_is_transformers_generate_under_the_configuration(ex):
    ids = prompt_ids(ex.wb.tokenizer, PROMPT)
    config = ModelConfig.uniform(ex.layout, preset("nf2"))
    got = ex.generate(ids, config, options=GenerateOptions(max_new_tokens=10))
    ex.wb.qmodel.apply_(config)
    with torch.no_grad():
        expected = ex.wb.model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:].tolist()
    ex.wb.qmodel.restore_()
    assert got.tokens == expected and got.text == ex.wb.tokenizer.decode(expected)
    reference = ex.generate(ids, None, options=GenerateOptions(max_new_tokens=10))
    assert first_divergence(reference.tokens, reference.tokens) is None
    assert first_divergence(got.tokens, reference.tokens) == next(
        (i for i, (a, b) in enumerate(zip(got.tokens, reference.tokens)) if a != b), None)


def test_reference_log_probabilities_are_the_unquantized_models(ex):
    ids = prompt_ids(ex.wb.tokenizer, PROMPT)
    got = ex.generate(ids, ModelConfig.uniform(ex.layout, preset("nf3")), options=GenerateOptions(max_new_tokens=5))
    full = torch.cat([ids, torch.tensor([got.tokens])], 1)
    with torch.no_grad():
        logprobs = ex.wb.model(input_ids=full).logits[0].log_softmax(-1)  # the model is back to unquantized
    n = ids.shape[1]
    expected = [float(logprobs[n - 1 + i, t]) for i, t in enumerate(got.tokens)]
    assert got.reference_logprobs == pytest.approx(expected, abs=1e-4)


def test_a_seed_fixes_a_sampled_text(ex):
    ids = prompt_ids(ex.wb.tokenizer, PROMPT)
    a, b, c = (ex.generate(ids, None, options=GenerateOptions(max_new_tokens=8, sample=True, seed=s))
               for s in (3, 3, 4))
    assert a.tokens == b.tokens and a.tokens != c.tokens


def test_two_sessions_at_different_budgets_each_get_their_configurations_text(ex):
    ids = prompt_ids(ex.wb.tokenizer, PROMPT)
    configs = [ModelConfig.uniform(ex.layout, preset(p)) for p in ("nf2", "nf4")]
    alone = [ex.generate(ids, c, options=GenerateOptions(max_new_tokens=8)).tokens for c in configs]
    start, out = threading.Barrier(2), [None, None]

    def user(i):
        start.wait()
        out[i] = ex.generate(ids, configs[i], options=GenerateOptions(max_new_tokens=8)).tokens

    threads = [threading.Thread(target=user, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == alone


def test_a_cancel_stops_it_and_bad_input_is_one_sentence(ex):
    ids = prompt_ids(ex.wb.tokenizer, PROMPT)
    seen = []
    with pytest.raises(EvaluationCancelled):
        ex.generate(ids, None, options=GenerateOptions(max_new_tokens=50), on_token=seen.append,
                    should_stop=lambda: len(seen) >= 3)
    assert len(seen) == 3 and ex.queue_length == 0
    with pytest.raises(ValueError, match="max_new_tokens must be an integer from 1 to 1024"):
        GenerateOptions(max_new_tokens=0)
    with pytest.raises(ValueError, match="prompt is empty"):
        prompt_ids(ex.wb.tokenizer, "  ")
    chat = ex.wb.tokenizer.decode(prompt_ids(ex.wb.tokenizer, "Who wrote Hamlet?", chat=True)[0])
    assert chat.rstrip().endswith("<|im_start|>assistant") and "Who wrote Hamlet?" in chat


def test_the_deployed_packed_model_generates_the_text_of_the_configuration_it_deploys(tmp_path):
    from pathlib import Path

    from coa_lora.deploy.packed_linear import PackedLinear
    from coa_lora.evaluation.evaluator import model_as

    run = Path(__file__).resolve().parents[1] / "data" / "tiny_search_run"
    ex = Explorer(Workbench.load("tiny"), eval_cache_dir=tmp_path)
    ids = prompt_ids(ex.wb.tokenizer, PROMPT)
    config = ModelConfig.uniform(ex.layout, preset("nf3"))
    options = GenerateOptions(max_new_tokens=8)
    base = ex.generate(ids, config, options=options, deployed=True)
    assert base.tokens == ex.generate(ids, config, options=options).tokens  # bit for bit without an adapter
    packed = ex.deployed_model(config)
    assert packed is ex.deployed_model(config)  # held: asked again, not exported again
    assert any(isinstance(m, PackedLinear) for m in packed.modules())
    # With the run's adapter folded in: the packed model's logits are the shared model's under the adapter.
    ex.adapter(run)
    ex.instantiate(ModelConfig.uniform(ex.layout, preset("nf4")))  # another session's configuration on the model
    before = {name: p.detach().clone() for name, p in ex.wb.qmodel.parameters.items()}
    with_adapter = ex.deployed_model(config, run)
    # Exporting (which sets the adapter to the configuration) left the shared model as it found it.
    assert ex.wb.qmodel.config.key() == ModelConfig.uniform(ex.layout, preset("nf4")).key()
    assert all(torch.equal(p, before[n]) for n, p in ex.wb.qmodel.parameters.items())
    assert with_adapter is not packed and len(list((tmp_path / "deployed").iterdir())) == 1  # one export kept
    with torch.no_grad():
        got = with_adapter(input_ids=ids).logits
        with model_as(ex.wb, config, ex.adapter(run)):
            expected = ex.wb.model(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4), float((got - expected).abs().max())
    assert ex.generate(ids, config, run, options, deployed=True).tokens == \
        ex.generate(ids, config, run, options).tokens
    (folder,) = (tmp_path / "deployed").iterdir()
    written = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = Explorer(Workbench.load("tiny"), eval_cache_dir=tmp_path)  # a new server reads the export from disk
    assert again.generate(ids, config, run, options, deployed=True).tokens == \
        ex.generate(ids, config, run, options).tokens
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == written
    with pytest.raises(ValueError, match="nothing to deploy"):
        ex.generate(ids, None, options=options, deployed=True)
