import pytest
import torch

from coa_lora.quant.codebook import NF4_TABLE, nf_formula, nf_table


def test_nf4_is_bitsandbytes_table_exactly():
    from bitsandbytes.functional import get_4bit_type

    assert torch.equal(nf_table(4).codebook, get_4bit_type("nf4", device="cpu"))
    # The quantile formula reproduces it closely (bitsandbytes built its table from float32 linspace).
    assert torch.allclose(nf_formula(4).float(), torch.tensor(NF4_TABLE), atol=2e-7, rtol=0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_codebook_shape_and_structure(bits):
    cb = nf_table(bits).codebook
    assert cb.numel() == 2**bits
    assert cb[0] == -1 and cb[-1] == 1
    assert (cb[1:] > cb[:-1]).all()
    assert (cb == 0).sum() == 1
    assert (cb < 0).sum() == 2 ** (bits - 1) - 1 and (cb > 0).sum() == 2 ** (bits - 1)


def test_nf2_golden():
    # linspace(0.5, p, 3)[1:] -> quantiles (0.5+p)/2 and p; normalised by the quantile at p.
    p = 0.9677083
    z = torch.special.ndtri(torch.tensor([(0.5 + p) / 2, p], dtype=torch.float64))
    expected = torch.tensor([-1.0, 0.0, float(z[0] / z[1]), 1.0])
    assert torch.allclose(nf_table(2).codebook, expected, atol=1e-7)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_lookup_table_matches_bucketize(bits):
    t = nf_table(bits)
    g = torch.Generator().manual_seed(bits)
    x = torch.cat([torch.rand(200_000, generator=g) * 2.4 - 1.2, t.midpoints, t.codebook, torch.tensor([0.0, -0.0])])
    j = ((x + 1) * (t.lut_base.numel() / 2)).to(torch.int64).clamp(0, t.lut_base.numel() - 1)
    lut = t.lut_base[j] + (x > t.lut_thresholds[j, 0]).int() + (x > t.lut_thresholds[j, 1]).int()
    assert torch.equal(lut, torch.bucketize(x, t.midpoints, out_int32=True))


def test_unknown_bits():
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 8\)"):
        nf_table(5)
