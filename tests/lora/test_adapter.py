import json

import pytest
import torch

from coa_lora import ModelConfig, QuantizedModel
from coa_lora.lora.adapter import AdapterOptions, CoALoRAModel, LoraLinear, export_peft
from coa_lora.models.loading import load_model

IDS = torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(0))


def random_config(layout, seed):
    g = torch.Generator().manual_seed(seed)
    return ModelConfig.from_option_indices(layout, torch.randint(0, 432, (len(layout),), generator=g))


def quantized_base(config):
    qm = QuantizedModel.from_model(load_model("tiny"), "tiny")
    qm.apply_(config)
    return qm


def make_coa(**kwargs):
    qm = QuantizedModel.from_model(load_model("tiny"), "tiny")  # before wrapping: it holds the Linear weights
    return CoALoRAModel(qm, AdapterOptions(**kwargs))


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def perturb_(coa, seed=1):
    """Non-zero B and U_θ's last layer, so that the adapter and the correction both matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in coa.wrappers.values():
            w.lora_B.weight.normal_(std=0.1, generator=g)
        coa.network.out.weight.normal_(std=0.1, generator=g)


def test_fresh_adapter_equals_quantized_base_exactly():
    coa = make_coa().train(False)
    config = random_config(coa.layout, 0)
    coa.set_config(config)
    assert torch.equal(logits(coa.model), logits(quantized_base(config).model))


def test_wrappers_replace_modules_and_use_peft_init():
    coa = make_coa(r=4)
    for name, w in coa.wrappers.items():
        assert coa.model.get_submodule(name) is w and isinstance(w, LoraLinear)
        assert torch.count_nonzero(w.lora_B.weight) == 0
        bound = 1 / w.lora_A.weight.shape[1] ** 0.5  # kaiming_uniform(a=√5) bound = 1/sqrt(fan_in)
        assert w.lora_A.weight.abs().max() <= bound and w.lora_A.weight.std() > bound / 3


def test_corrections_have_shape_r_by_r_and_are_zero_at_init():
    coa = make_coa(r=4)
    coa.set_config(random_config(coa.layout, 0))
    for w in coa.wrappers.values():
        assert w.correction.shape == (4, 4)
        assert torch.count_nonzero(w.correction) == 0


def test_switching_config_changes_base_weights_and_corrections():
    coa = make_coa(r=4)
    perturb_(coa)
    a, b = random_config(coa.layout, 0), random_config(coa.layout, 1)
    name = coa.layout.names[0]
    coa.set_config(a)
    w_a, u_a = coa.wrappers[name].base_layer.weight.detach().clone(), coa.wrappers[name].correction.detach()
    coa.set_config(b)
    assert not torch.equal(w_a, coa.wrappers[name].base_layer.weight)
    assert not torch.equal(u_a, coa.wrappers[name].correction)
    assert torch.equal(coa.wrappers[name].base_layer.weight, coa.qmodel.quantized_weight(name, b.options[0]))


def test_gradient_reaches_A_B_and_theta_but_not_the_base():
    coa = make_coa(r=4)
    perturb_(coa)
    coa.set_config(random_config(coa.layout, 0))
    coa.model(input_ids=IDS, labels=IDS).loss.backward()
    for name, p in coa.named_parameters().items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in coa.model.parameters() if not p.requires_grad)


def test_state_dict_round_trip_and_mismatch_changes_nothing():
    coa, other = make_coa(r=4), make_coa(r=2)
    perturb_(coa)
    state = coa.state_dict()
    fresh = make_coa(r=4)
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.state_dict()[n], t) for n, t in state.items())
    before = other.state_dict()
    with pytest.raises(ValueError, match="does not fit"):
        other.load_state_dict(state)
    assert all(torch.equal(other.state_dict()[n], t) for n, t in before.items())


def test_peft_export_loads_with_the_same_logits(tmp_path):
    from peft import PeftModel

    coa = make_coa(r=4, lora_dropout=0.1).train(False)
    perturb_(coa)
    config = random_config(coa.layout, 3)
    coa.set_config(config)
    expected = logits(coa.model)
    folder = export_peft(coa, tmp_path / "adapter")
    meta = json.loads((folder / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LORA" and meta["r"] == 4 and meta["task_type"] == "CAUSAL_LM"
    assert ModelConfig.from_json((folder / "quant_config.json").read_text(), coa.layout) == config
    peft_model = PeftModel.from_pretrained(quantized_base(config).model, str(folder)).eval()
    assert (logits(peft_model) - expected).abs().max() < 1e-4
    # Folding matters: the plain-B adapter would differ.
    assert (logits(quantized_base(config).model) - expected).abs().max() > 1e-3


def test_fisher_of_a_wrapped_model_is_the_bare_base_models():
    # The allocator's Fisher weighting must not see a trained adapter wrapped around the base (export calls it then).
    from coa_lora import fisher_diagonal
    from coa_lora.lora.adapter import adapters_disabled

    ids = torch.randint(0, 49152, (2, 16), generator=torch.Generator().manual_seed(3))
    bare = load_model("tiny")
    expected = fisher_diagonal(bare, QuantizedModel.from_model(bare, "tiny").layout.names, ids)
    coa = make_coa().train(False)
    perturb_(coa)
    with adapters_disabled(coa.model):
        got = fisher_diagonal(coa.model, coa.qmodel.parameters, ids)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
    wrapped = fisher_diagonal(coa.model, coa.qmodel.parameters, ids)  # adapter on: a different Fisher
    assert not all(torch.allclose(wrapped[n], expected[n]) for n in expected)
    assert all(w.enabled for w in coa.wrappers.values())


def test_workbench_fisher_under_an_adapter_and_a_configuration_is_the_bare_base_models():
    # The Fisher the allocator uses on a cache miss, asked for while a trained adapter is wrapped around the model
    # and a configuration is applied (what export and the app do), inside no_grad.
    from coa_lora import Workbench, fisher_diagonal
    from coa_lora.lora.workbench import FISHER_LENGTH, FISHER_SEED, FISHER_SEQUENCES
    from coa_lora.models.data import calibration_batches
    from coa_lora.quant.space import preset

    wb = Workbench.load("tiny")
    coa = CoALoRAModel(wb.qmodel, AdapterOptions())
    perturb_(coa)
    config = ModelConfig.uniform(wb.layout, preset("nf3"))
    coa.set_config(config)
    with torch.no_grad():
        got = wb._fisher()
    assert wb.qmodel.config == config  # the configuration is back
    bare = load_model("tiny")
    batches = calibration_batches(wb.tokenizer, FISHER_SEQUENCES, FISHER_LENGTH, FISHER_SEED)
    expected = fisher_diagonal(bare, list(got), batches)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])


@pytest.mark.smollm2
def test_peft_export_on_smollm2_gives_our_logits_on_a_separately_quantized_copy(tmp_path, smollm2_wb):
    from peft import PeftModel

    from coa_lora import Workbench

    wb = smollm2_wb
    coa = CoALoRAModel(wb.qmodel, AdapterOptions()).train(False)
    perturb_(coa)
    config = random_config(wb.layout, 5)  # a mixed configuration over all 432 options
    coa.set_config(config)
    ids = wb.tokenizer("Now is the winter of our discontent made glorious summer", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = coa.model(input_ids=ids).logits
        with coa.adapters_disabled():
            bare = coa.model(input_ids=ids).logits
    folder = export_peft(coa, tmp_path / "adapter")
    coa.remove_()  # the shared model goes back bare
    # Another process's view: a fresh copy, quantized from the exported quant_config.json, plus peft's own loader.
    copy = Workbench.load("smollm2")
    copy.qmodel.apply_(ModelConfig.from_json((folder / "quant_config.json").read_text(), copy.layout))
    peft_model = PeftModel.from_pretrained(copy.model, str(folder)).eval()
    with torch.no_grad():
        got = peft_model(input_ids=ids).logits
    print({"peft_vs_ours": float((got - expected).abs().max()), "bare_vs_ours": float((bare - expected).abs().max())})
    assert (got - expected).abs().max() < 1e-3
    assert (bare - expected).abs().max() > 1.0  # the adapter matters, so agreement is not agreement of two bases
