"""NormalFloat (NF-b) codebooks and the lookup tables that encode against them.

The NF-b codebook generalises QLoRA's NF4 (METHOD.md §2): quantiles of a standard normal, scaled so that the
quantile at ``p = 0.9677083`` is 1, with an exact zero; ``2**(b-1) - 1`` negative and ``2**(b-1)`` positive values.
For b = 4 we use bitsandbytes' published table verbatim (the formula reproduces it to 1 ulp), so codes and
dequantized values match bitsandbytes bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

NF_P = 0.9677083
# bitsandbytes' NF4 table (bitsandbytes/functional.py), as float32.
NF4_TABLE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
# Bins of the encoding lookup table over [-1, 1]: fine enough that a window of three bins holds at most two midpoints
# for every b <= 8 (NF8's narrowest gap is ~0.005, three bins span 0.0015).
LUT_BINS = 4096


def nf_formula(bits: int) -> torch.Tensor:
    """NF-b codebook from the quantile formula, ``(2**bits,)`` float64 in [-1, 1], ascending."""
    half = 2 ** (bits - 1)
    ppf = lambda q: torch.special.ndtri(q)  # noqa: E731 — the standard normal quantile function
    scale = ppf(torch.tensor(NF_P, dtype=torch.float64))
    neg = ppf(torch.linspace(1 - NF_P, 0.5, half, dtype=torch.float64)[:-1]) / scale
    pos = ppf(torch.linspace(0.5, NF_P, half + 1, dtype=torch.float64)[1:]) / scale
    return torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos])


@dataclass(frozen=True)
class NFTable:
    """A codebook with its rounding boundaries and encoding lookup table (all on CPU, float32).

    Attributes:
        codebook: ``(2**b,)`` ascending values in [-1, 1].
        midpoints: ``(2**b - 1,)`` boundaries; a value x gets code ``#{midpoints < x}`` (nearest value; a tie at a
            midpoint goes to the lower code, as ``torch.bucketize`` does).
        lut_base: ``(LUT_BINS,)`` int32: midpoints below the window of each bin.
        lut_thresholds: ``(LUT_BINS, 2)``: the (at most two) midpoints inside the window, +inf where fewer.
    """

    bits: int
    codebook: torch.Tensor
    midpoints: torch.Tensor
    lut_base: torch.Tensor
    lut_thresholds: torch.Tensor


@lru_cache(maxsize=None)
def nf_table(bits: int) -> NFTable:
    """The cached :class:`NFTable` for NF-``bits``."""
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"NF codebooks exist for bits in (2, 3, 4, 8), got {bits!r}.")
    codebook = torch.tensor(NF4_TABLE) if bits == 4 else nf_formula(bits).float()
    midpoints = (codebook[1:] + codebook[:-1]) / 2
    # Bin j nominally covers [e_j, e_j + w); its window [e_j - w, e_j + 2w) absorbs any float error in computing j,
    # so base + #{thresholds < x} is exact for every x whose computed bin is j (and for |x| > 1 via clamping).
    w = 2.0 / LUT_BINS
    lo = torch.linspace(-1, 1, LUT_BINS + 1, dtype=torch.float64)[:-1] - w
    hi = lo + 3 * w
    mids = midpoints.double()
    base = (mids[None, :] < lo[:, None]).sum(1)
    inside = (mids[None, :] >= lo[:, None]) & (mids[None, :] < hi[:, None])
    if int(inside.sum(1).max()) > 2:
        raise AssertionError("LUT_BINS is too coarse for this codebook.")
    thresholds = torch.full((LUT_BINS, 2), float("inf"))
    for j in torch.nonzero(inside.any(1)).flatten().tolist():
        m = midpoints[inside[j]]
        thresholds[j, : m.numel()] = m
    return NFTable(bits, codebook, midpoints, base.to(torch.int32), thresholds)
