import pytest
import torch

from coa_lora import ModelConfig, QuantizedModel, QuantOption, dequantize, layout_of, quantize
from coa_lora.models.loading import load_model
from coa_lora.quant.space import ALL_OPTIONS


@pytest.fixture()
def qm():
    return QuantizedModel.from_model(load_model("tiny"), "tiny")


def logits(model, seed=0):
    ids = torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_layout_counts_every_parameter_once(qm):
    model, layout = qm.model, qm.layout
    assert len(layout) == 2 * 7
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # tied embeddings appear once
    assert layout.full_size_bytes == total


def test_apply_sets_dequantized_weights_and_restore_brings_back_originals(qm):
    originals = {n: qm.model.get_submodule(n).weight.detach().clone() for n in qm.layout.names}
    before = logits(qm.model)
    g = torch.Generator().manual_seed(0)
    config = ModelConfig.from_option_indices(qm.layout, torch.randint(0, 432, (len(qm.layout),), generator=g))
    qm.apply_(config)
    for name, option in zip(qm.layout.names, config.options):
        expected = dequantize(quantize(originals[name], option))
        assert torch.equal(qm.model.get_submodule(name).weight, expected)
    assert not torch.allclose(logits(qm.model), before)
    qm.restore_()
    for name in qm.layout.names:
        assert torch.equal(qm.model.get_submodule(name).weight, originals[name])
    assert torch.equal(logits(qm.model), before)


def test_reapply_hits_cache_and_neighbour_only_touches_changed(qm):
    nf4 = ModelConfig.uniform(qm.layout, QuantOption())
    qm.apply_(nf4)
    assert qm.cache.misses == len(qm.layout) and qm.cache.hits == 0
    qm.restore_()
    qm.apply_(nf4)
    assert qm.cache.misses == len(qm.layout) and qm.cache.hits == len(qm.layout)
    neighbour = ModelConfig(qm.layout, (QuantOption(bits=3),) + nf4.options[1:])
    qm.apply_(neighbour)
    assert qm.cache.misses == len(qm.layout) + 1 and qm.cache.hits == len(qm.layout)


def test_cache_is_bounded_by_bytes():
    qm = QuantizedModel.from_model(load_model("tiny"), "tiny", cache_bytes=200_000)
    for option in ALL_OPTIONS[:5]:
        qm.apply_(ModelConfig.uniform(qm.layout, option))
        assert qm.cache.nbytes <= 200_000
    assert len(qm.cache) > 0


def test_applied_context_restores_previous_state(qm):
    nf4 = ModelConfig.uniform(qm.layout, QuantOption())
    nf2 = ModelConfig.uniform(qm.layout, QuantOption(bits=2))
    with qm.applied(nf4):
        inner = logits(qm.model)
        with qm.applied(nf2):
            pass
        assert qm.config == nf4 and torch.equal(logits(qm.model), inner)
    assert qm.config is None


def test_config_for_another_model_is_refused(qm):
    other = layout_of(load_model("tiny"), "tiny")
    renamed = type(other)("x", tuple(type(t)("x" + t.name, t.shape, t.layer, t.kind) for t in other.targets), 0)
    with pytest.raises(ValueError, match="different model"):
        qm.apply_(ModelConfig.uniform(renamed, QuantOption()))
