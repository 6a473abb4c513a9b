import pytest
import torch

from coa_lora.quant import kernels
from coa_lora.quant.codebook import nf_table
from coa_lora.quant.packing import unpack_bits
from coa_lora.quant.quantizer import (dequantize, dequantize_blockwise, dequantize_scales, quantization_error, quantize,
                                      quantize_blockwise, quantize_scales)
from coa_lora.quant.space import ALL_OPTIONS, QuantOption


def weight(shape=(256, 384), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 0.02


@pytest.mark.parametrize("block_size", [32, 64])
def test_nf4_matches_bitsandbytes_bit_for_bit(block_size):
    import bitsandbytes.functional as F

    w = weight((512, 384))
    packed, absmax = quantize_blockwise(w, 4, block_size)
    bnb_packed, state = F.quantize_4bit(w, blocksize=block_size, quant_type="nf4")
    assert torch.equal(packed, bnb_packed.reshape(-1))
    assert torch.equal(absmax, state.absmax)
    ours = dequantize_blockwise(packed, absmax, 4, block_size, tuple(w.shape))
    assert torch.equal(ours, F.dequantize_4bit(bnb_packed, state))


OPTIONS = [QuantOption(), QuantOption(3, 2, "bf16", 16, 16), QuantOption(2, 3, "fp16", 32, 64)]


@pytest.mark.parametrize("option", OPTIONS)
def test_every_value_is_codebook_times_block_scale(option):
    w = weight((100, 97))  # 9700 weights: not a multiple of B0·B1
    qt = quantize(w, option)
    deq = dequantize(qt).reshape(-1)
    n_blocks = -(-w.numel() // option.block_size)
    scale_codes = unpack_bits(qt.scale_codes, option.scale_bits, n_blocks)
    scales = dequantize_scales(scale_codes, qt.group_max, qt.offset, option.scale_bits, option.scale_block_size)
    per_weight_scale = scales.repeat_interleave(option.block_size)[: w.numel()]
    ratio = deq / per_weight_scale
    cb = nf_table(option.bits).codebook
    assert torch.isclose(ratio[:, None], cb[None, :], atol=1e-6).any(1).all()
    # The codes were chosen against the dequantized scale: each value is the NEAREST codebook value.
    normalized = w.reshape(-1) / per_weight_scale
    nearest = cb[(normalized[:, None] - cb[None, :]).abs().argmin(1)]
    assert torch.allclose(ratio, nearest, atol=1e-6)


def test_storage_bytes_and_shape():
    for option in ALL_OPTIONS[::37]:
        w = weight((64, 300), seed=option.bits)
        qt = quantize(w, option)
        assert qt.nbytes == option.storage_bytes(w.numel())
        # Within padding: one block of codes, one group of scale codes, one group scale, the offset.
        slack = option.block_size * option.bits / 8 + option.scale_bits + 4 + 4
        assert 0 <= qt.nbytes - option.bits_per_weight * w.numel() / 8 < slack
        assert dequantize(qt).shape == w.shape


def test_error_falls_as_bits_rise():
    w = weight()
    errors = [quantization_error(w, QuantOption(bits=b)) for b in (2, 3, 4, 8)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 1000


def test_double_quantization_error_falls_as_scale_bits_rise():
    w = weight((512, 512))
    errors = [quantization_error(w, QuantOption(bits=4, scale_bits=b0, block_size=16)) for b0 in (2, 3, 4, 8)]
    assert errors == sorted(errors, reverse=True)


def test_fused_error_equals_explicit_error():
    w = weight()
    imp = torch.rand(w.shape, generator=torch.Generator().manual_seed(1))
    for option in ALL_OPTIONS[::53]:
        deq = dequantize(quantize(w, option))
        assert quantization_error(w, option) == pytest.approx(((w - deq) ** 2).sum().item(), rel=1e-5)
        assert quantization_error(w, option, imp) == pytest.approx((imp * (w - deq) ** 2).sum().item(), rel=1e-5)


def test_scale_double_quantization_golden():
    # absmax 1,2,3,5 -> offset 1, shifted 0,1,2,4; b0 = 2 (3 levels), one group (max 4): codes round(x*3/4).
    absmax = torch.tensor([1.0, 2.0, 3.0, 5.0])
    codes, gmax, offset = quantize_scales(absmax, 2, 16, torch.float32)
    assert codes.tolist() == [0, 1, 2, 3] and gmax.tolist() == [4.0] and offset.item() == 1.0
    assert dequantize_scales(codes, gmax, offset, 2, 16).tolist() == pytest.approx([1.0, 1 + 4 / 3, 1 + 8 / 3, 5.0])


def test_zero_blocks_and_constant_scales():
    w = torch.zeros(4, 64)
    w[1] = 0.5
    for option in (QuantOption(block_size=64), QuantOption(block_size=16)):
        deq = dequantize(quantize(w, option))
        assert torch.equal(deq, w)


def test_compiled_and_eager_quantizers_agree(monkeypatch):
    w = weight((128, 200), seed=3)
    monkeypatch.setattr(kernels, "COMPILE_MIN_ELEMENTS", 0)
    compiled = [quantize(w, o) for o in ALL_OPTIONS[::61]]
    monkeypatch.setenv("COA_LORA_COMPILE", "0")
    assert not kernels.compile_enabled()
    eager = [quantize(w, o) for o in ALL_OPTIONS[::61]]
    for a, b in zip(compiled, eager):
        assert torch.equal(a.codes, b.codes)
        assert torch.equal(dequantize(a), dequantize(b))
