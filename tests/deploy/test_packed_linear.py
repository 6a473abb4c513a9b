"""Packed weights at run time: load_packed(weights="packed") keeps every target matrix as its packed bytes in a
PackedLinear and gives the dequantized load's logits bit for bit, with an adapter as a LoRA branch equal to peft's."""
import pytest
import torch

from coa_lora import AdapterOptions, CoALoRAModel, ModelConfig, QuantOption, Workbench, load_packed, save_packed
from coa_lora.deploy.packed_linear import PackedLinear
from coa_lora.quant.quantizer import quantize

IDS = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def mixed_config(layout, seed):
    g = torch.Generator().manual_seed(seed)
    options = [QuantOption(3, 8, "fp32", 16, 256), QuantOption(2, 4, "bf16", 64, 64), QuantOption(4, 8, "fp16", 32, 16)]
    return ModelConfig(layout, tuple(options[int(torch.randint(3, (1,), generator=g))] for _ in range(len(layout))))


def test_packed_weights_give_the_dequantized_logits_bit_for_bit_holding_only_packed_bytes(tmp_path):
    wb = Workbench.load("tiny")
    config = mixed_config(wb.layout, 0)
    summary = save_packed(wb, config, tmp_path / "p")
    packed = load_packed(tmp_path / "p", weights="packed")
    layers = {n: m for n, m in packed.named_modules() if isinstance(m, PackedLinear)}
    assert sorted(layers) == sorted(wb.layout.names)
    assert sum(m.nbytes for m in layers.values()) == summary.target_bytes  # the folder's bytes, nothing dequantized
    assert not any(p.shape == t.shape for t in wb.layout.targets for p in packed.parameters())
    assert torch.equal(logits(packed), logits(load_packed(tmp_path / "p")))
    wb.qmodel.apply_(config)
    assert torch.equal(logits(packed), logits(wb.model))
    out = packed.generate(IDS[:1, :4], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 8)


def test_an_adapter_stays_a_lora_branch_that_computes_what_peft_computes(tmp_path):
    wb = Workbench.load("tiny")
    coa = CoALoRAModel(wb.qmodel, AdapterOptions(r=4)).train(False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in coa.wrappers.values():
            w.lora_B.weight.normal_(std=0.1, generator=g)
        coa.network.out.weight.normal_(std=0.1, generator=g)
    config = mixed_config(wb.layout, 1)
    coa.set_config(config)
    save_packed(wb, config, tmp_path / "p", adapter=coa)
    packed = load_packed(tmp_path / "p", weights="packed")
    assert torch.equal(logits(packed), logits(load_packed(tmp_path / "p", adapter="peft")))
    bare = load_packed(tmp_path / "p", weights="packed", adapter="none")
    assert torch.equal(logits(bare), logits(load_packed(tmp_path / "p", adapter="none")))
    assert (logits(bare) - logits(packed)).abs().max() > 1e-3


def test_a_packed_layer_refuses_what_does_not_fit_and_bad_modes_are_one_sentence(tmp_path):
    layer = PackedLinear(quantize(torch.randn(8, 16), QuantOption(4, 8, "fp32", 16, 16)))
    with pytest.raises(ValueError, match="do not fit a 8 x 16 layer"):
        layer.set_lora_(torch.zeros(2, 8), torch.zeros(8, 2), 1.0)
    x = torch.randn(3, 16)
    assert torch.equal(layer(x), x @ layer.dequantized_weight().T)
    wb = Workbench.load("tiny")
    save_packed(wb, ModelConfig.uniform(wb.layout, QuantOption(4, 8, "fp32", 64, 256)), tmp_path / "p")
    with pytest.raises(ValueError, match="weights must be one of"):
        load_packed(tmp_path / "p", weights="int4")
