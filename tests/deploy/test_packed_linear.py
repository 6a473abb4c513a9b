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


def test_nf4_blocks_of_64_run_on_bitsandbytes_linear4bit_with_our_weights_and_codes():
    import bitsandbytes.functional as F

    from coa_lora.deploy.bnb import bitsandbytes_works, fits_bitsandbytes, linear4bit

    assert bitsandbytes_works("cpu")  # bitsandbytes' CPU backend (requirements.txt pins it)
    g = torch.Generator().manual_seed(0)
    option = QuantOption(4, 4, "bf16", 64, 64)  # bitsandbytes' code layout; our own double quantization of the scales
    layer = PackedLinear(quantize(torch.randn(40, 128, generator=g) * 0.02, option), torch.randn(40, generator=g))
    x = torch.randn(3, 5, 128, generator=g)
    want = layer(x)  # dequantized on the fly
    kernel = linear4bit(layer, torch.float32)
    assert kernel.weight.data_ptr() == layer.codes.data_ptr()  # the codes are shared, not copied
    assert torch.equal(F.dequantize_4bit(kernel.weight, kernel.weight.quant_state), layer.dequantized_weight())
    layer.set_kernel_(kernel)
    torch.testing.assert_close(layer(x), want, rtol=0, atol=1e-6)
    assert layer.to(torch.float64).kernel is None  # a move or cast copies the codes: the kernel is dropped, not stale
    torch.testing.assert_close(layer(x.double()), want.double(), rtol=0, atol=1e-6)
    layer = layer.to(torch.float32).set_kernel_(linear4bit(layer.to(torch.float32), torch.float32))
    assert layer.nbytes == sum(getattr(layer, p).nbytes for p in ("codes", "scale_codes", "group_max", "offset")) + \
        layer.bias.nbytes + kernel.weight.quant_state.absmax.nbytes  # the float32 absmax is the mapping's cost
    # Rows that are not whole blocks stay with our decode (bitsandbytes' CPU round trip is wrong there); so do 3 bits.
    for shape, other in (((40, 96), option), ((40, 128), QuantOption(3, 8, "fp32", 64, 256))):
        odd = PackedLinear(quantize(torch.randn(*shape, generator=g), other))
        assert not fits_bitsandbytes(odd)
        with pytest.raises(ValueError, match="needs 4-bit codes in blocks of 64 and rows of whole blocks"):
            linear4bit(odd, torch.float32)


def test_kernel_choice_is_checked_and_dequantize_keeps_every_layer_in_torch(tmp_path):
    wb = Workbench.load("tiny")
    save_packed(wb, ModelConfig.uniform(wb.layout, QuantOption(4, 8, "fp32", 64, 256)), tmp_path / "p")
    plain = load_packed(tmp_path / "p", weights="packed", kernel="dequantize")
    assert all(m.kernel is None for m in plain.modules() if isinstance(m, PackedLinear))
    with pytest.raises(ValueError, match="kernel must be one of"):
        load_packed(tmp_path / "p", weights="packed", kernel="cuda")
