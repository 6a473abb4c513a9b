"""The fused kernels against the straightforward reference: torch.bucketize + coa_lora.packing."""
import pytest
import torch

from coa_lora import kernels
from coa_lora.codebook import nf_table
from coa_lora.packing import pack_bits, unpack_bits


def data(seed, n_blocks=300, block_size=64):
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randn(n_blocks, block_size, generator=g)
    blocks[0] = 0  # an all-zero block (scale 0)
    scale = blocks.abs().amax(1, keepdim=True) * (0.9 + 0.2 * torch.rand(n_blocks, 1, generator=g))  # |y| up to ~1.1
    return blocks, scale


@pytest.fixture(params=["compiled", "eager"])
def mode(request, monkeypatch):
    monkeypatch.setenv("COA_LORA_COMPILE", "1" if request.param == "compiled" else "0")
    monkeypatch.setattr(kernels, "COMPILE_MIN_ELEMENTS", 0)  # compile even these small inputs
    return request.param


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("block_size", [16, 64])
def test_encode_decode_match_reference(mode, bits, block_size):
    blocks, scale = data(bits, block_size=block_size)
    table = nf_table(bits)
    ref_codes = torch.bucketize(blocks * kernels.safe_inverse(scale), table.midpoints).reshape(-1)
    packed = kernels.encode_packed(blocks, scale, table)
    assert torch.equal(packed, pack_bits(ref_codes, bits))
    values = kernels.decode_packed(packed, scale[:, 0], table, block_size)
    ref_values = (table.codebook[unpack_bits(packed, bits, ref_codes.numel()).long()].view_as(blocks) * scale)
    assert torch.equal(values, ref_values.reshape(-1))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_squared_error_matches_reference(mode, bits):
    blocks, scale = data(10 + bits)
    table = nf_table(bits)
    imp = torch.rand(blocks.shape, generator=torch.Generator().manual_seed(0))
    codes = torch.bucketize(blocks * kernels.safe_inverse(scale), table.midpoints)
    diff = blocks - table.codebook[codes] * scale
    assert kernels.squared_error(blocks, scale, table) == pytest.approx(float((diff.double() ** 2).sum()), rel=1e-6)
    assert kernels.squared_error(blocks, scale, table, imp) == pytest.approx(
        float((imp.double() * diff.double() ** 2).sum()), rel=1e-6
    )
