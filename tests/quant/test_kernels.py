"""The fused kernels against the straightforward reference: torch.bucketize + coa_lora.quant.packing; compiled against
eager at a real matrix size, with the path each call took checked (a failed compilation runs eager with a warning)."""
import pytest
import torch

from coa_lora.quant import kernels
from coa_lora.quant.codebook import nf_table
from coa_lora.quant.packing import pack_bits, unpack_bits
from coa_lora.quant.quantizer import dequantize_scales, quantize_scales, to_blocks
from coa_lora.quant.space import BITS


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
    kernels.reset_path_counts()
    return request.param


def ran_only(path, kernel_names):
    """Every call of these kernels since the last reset took ``path``, and each of them ran."""
    counts = kernels.path_counts()
    assert {k for k, _ in counts} == set(kernel_names) and {p for _, p in counts} == {path}, counts
    assert not kernels.compile_failed()


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
    ran_only(mode, ["encode_packed", "decode_packed"])


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
    ran_only(mode, ["squared_error"])


def real_matrix():
    """A SmolLM2 MLP-sized matrix (576 x 1536) in B0 = 64 blocks, with double-quantized scale variants as the damage
    table uses them: (S, n_blocks, 1) for b0 in {2, 8} at B1 = 256 and b0 = 4 at B1 = 16."""
    w = torch.randn(576, 1536, generator=torch.Generator().manual_seed(3)) * 0.02
    blocks = to_blocks(w, 64)
    absmax = blocks.abs().amax(1)
    scales = torch.stack([dequantize_scales(*quantize_scales(absmax, b0, b1, torch.float32), b0, b1)
                          for b0, b1 in ((2, 256), (8, 256), (4, 16))])
    return blocks, scales[:, :, None]


def test_compiled_equals_eager_at_a_real_matrix_size(monkeypatch):
    # The default threshold, not lowered: these inputs are large enough to take the compiled path on their own.
    blocks, scales = real_matrix()
    assert blocks.numel() >= kernels.COMPILE_MIN_ELEMENTS
    imp = torch.rand(blocks.shape, generator=torch.Generator().manual_seed(4))
    tables = [nf_table(b) for b in BITS]

    def run_all():
        out = {}
        for bits in (3, 4):
            packed = kernels.encode_packed(blocks, scales[1], nf_table(bits))
            out[f"encode{bits}"] = packed
            out[f"decode{bits}"] = kernels.decode_packed(packed, scales[1, :, 0], nf_table(bits), 64)
        out["error"] = kernels.squared_error(blocks, scales[0], nf_table(2), imp)
        out["errors"] = kernels.squared_errors(blocks, scales, tables)
        out["errors_weighted"] = kernels.squared_errors(blocks, scales, tables, imp)
        return out

    monkeypatch.setenv("COA_LORA_COMPILE", "1")
    kernels.reset_path_counts()
    compiled = run_all()
    assert kernels.path_counts() == {("encode_packed", "compiled"): 2, ("decode_packed", "compiled"): 2,
                                     ("squared_error", "compiled"): 1, ("squared_errors", "compiled"): 2}
    assert not kernels.compile_failed()
    monkeypatch.setenv("COA_LORA_COMPILE", "0")
    kernels.reset_path_counts()
    eager = run_all()
    assert {p for _, p in kernels.path_counts()} == {"eager"}
    for key in ("encode3", "encode4", "decode3", "decode4"):
        assert torch.equal(compiled[key], eager[key]), key
    assert compiled["error"] == pytest.approx(eager["error"], rel=1e-6)
    for key in ("errors", "errors_weighted"):  # (3 scale variants, 4 codebooks), float64
        assert compiled[key].shape == (3, 4)
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-6, atol=0)
    # And eager against the straightforward reference, one cell: NF3 codebook under the b0 = 8 scales.
    table = nf_table(3)
    diff = blocks - table.codebook[torch.bucketize(blocks * kernels.safe_inverse(scales[1]), table.midpoints)] * scales[1]
    assert float(eager["errors"][1, 1]) == pytest.approx(float((diff.double() ** 2).sum()), rel=1e-6)


def test_a_failed_compilation_warns_and_is_counted_as_eager(monkeypatch):
    monkeypatch.setenv("COA_LORA_COMPILE", "1")
    monkeypatch.setattr(kernels, "COMPILE_MIN_ELEMENTS", 0)
    monkeypatch.setattr(kernels, "_compile_failed", False)  # the sticky flag is put back after this test

    def _data_dependent(x):  # a Python branch on a tensor's value: fullgraph compilation must refuse it
        return x * 2 if float(x.sum()) > 0 else x

    kernels.reset_path_counts()
    with pytest.warns(UserWarning, match="torch.compile failed"):
        out = kernels._run(_data_dependent, torch.ones(8))
    assert torch.equal(out, torch.full((8,), 2.0))
    assert kernels.path_counts() == {("data_dependent", "eager"): 1} and kernels.compile_failed()
    assert not kernels.compile_enabled()
