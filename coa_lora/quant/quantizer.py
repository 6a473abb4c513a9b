"""Blockwise NF-b quantization with double quantization of the scales (METHOD.md §2).

``quantize(weight, option) -> QuantizedTensor`` and ``dequantize(qt) -> weight`` are a pair of pure functions.

Layout: the weight is flattened; blocks of ``B0`` consecutive weights share one absmax scale. A weight whose size is
not a multiple of ``B0`` is padded with zeros to whole blocks (the codes of the padding are stored, at most one block
of extra bytes, so that packed codes always hold whole blocks), and the scales are padded with zeros to whole groups
of ``B1`` for the group maxima only. Padding never changes an absmax or a group maximum and is dropped again after
dequantization.

Double quantization: with ``a_j`` the absmax of block j, the per-matrix offset ``o = min_j a_j`` is subtracted, and the
shifted scales are coded with an unsigned ``b0``-bit uniform code, one maximum ``m`` per group of ``B1`` scales stored
in dtype ``s`` (``m`` is rounded to ``s`` first, so the code and the stored ``m`` agree). Weights are then coded against
the DEQUANTIZED scale, so that dequantized weight = codebook value × that scale, exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from coa_lora.quant import kernels
from coa_lora.quant.codebook import nf_table
from coa_lora.quant.packing import pack_bits, unpack_bits
from coa_lora.quant.space import OFFSET_BYTES, QuantOption

# Bump when a change to quantize / dequantize (or their kernels) changes any dequantized value or error: results
# cached on disk under it (evaluations, damage tables) then stop matching instead of being served stale.
QUANTIZER_VERSION = 1


@dataclass(frozen=True)
class QuantizedTensor:
    """A packed quantized matrix.

    Attributes:
        codes: packed ``bits``-bit NF codes of the weights padded to whole blocks, uint8.
        scale_codes: packed ``scale_bits``-bit codes of the ``n_blocks`` shifted first-level scales, uint8.
        group_max: ``(n_groups,)`` second-level scales in the option's ``scale_dtype``.
        offset: ``()`` float32 per-matrix offset of the first-level scales.
        shape: shape of the original weight.
        option: the option used.
    """

    codes: torch.Tensor
    scale_codes: torch.Tensor
    group_max: torch.Tensor
    offset: torch.Tensor
    shape: tuple[int, ...]
    option: QuantOption

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Bytes of the packed representation (equals ``option.storage_bytes(numel)``)."""
        return (
            self.codes.numel()
            + self.scale_codes.numel()
            + self.group_max.numel() * self.group_max.element_size()
            + OFFSET_BYTES
        )


def to_blocks(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """``weight`` (any shape) flattened, zero-padded and viewed as ``(n_blocks, block_size)`` float32."""
    flat = weight.reshape(-1).float()
    pad = -flat.numel() % block_size
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.view(-1, block_size)


def quantize_scales(
    absmax: torch.Tensor, scale_bits: int, scale_block_size: int, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double-quantize first-level scales.

    Args:
        absmax: ``(n_blocks,)`` float32, non-negative.
        scale_bits: b0. scale_block_size: B1. scale_dtype: storage dtype of the group maxima.

    Returns:
        ``codes`` ``(n_blocks,)`` uint8 in ``[0, 2**b0)``, ``group_max`` ``(n_groups,)`` in ``scale_dtype``, ``offset``
        ``()`` float32.
    """
    offset = absmax.min()
    shifted = absmax - offset
    n = shifted.numel()
    pad = -n % scale_block_size
    groups = torch.nn.functional.pad(shifted, (0, pad)).view(-1, scale_block_size)
    group_max = groups.amax(1).to(scale_dtype)
    levels = 2**scale_bits - 1
    m = group_max.float()[:, None]
    inv = torch.where(m > 0, levels / m, torch.zeros_like(m))
    codes = torch.round(groups * inv).clamp_(0, levels).to(torch.uint8).reshape(-1)[:n]
    return codes, group_max, offset


def dequantize_scales(
    codes: torch.Tensor, group_max: torch.Tensor, offset: torch.Tensor, scale_bits: int, scale_block_size: int
) -> torch.Tensor:
    """Inverse of :func:`quantize_scales`: ``(n_blocks,)`` float32 scales ``code · m / (2**b0 - 1) + offset``."""
    n = codes.numel()
    step = group_max.float() / (2**scale_bits - 1)
    step = step.repeat_interleave(scale_block_size)[:n]
    return codes.float() * step + offset


def block_scales(blocks: torch.Tensor, option: QuantOption):
    """Double-quantized absmax of each block: (dequantized ``(n_blocks,)`` scales, codes, group_max, offset)."""
    absmax = blocks.abs().amax(1)
    codes, group_max, offset = quantize_scales(
        absmax, option.scale_bits, option.scale_block_size, option.torch_scale_dtype
    )
    scales = dequantize_scales(codes, group_max, offset, option.scale_bits, option.scale_block_size)
    return scales, codes, group_max, offset


def quantize(weight: torch.Tensor, option: QuantOption) -> QuantizedTensor:
    """Quantize a weight of any shape under ``option``; see the module docstring for the layout."""
    blocks = to_blocks(weight, option.block_size)
    scales, scale_codes, group_max, offset = block_scales(blocks, option)
    return QuantizedTensor(
        codes=kernels.encode_packed(blocks, scales[:, None], nf_table(option.bits)),
        scale_codes=pack_bits(scale_codes, option.scale_bits),
        group_max=group_max,
        offset=offset,
        shape=tuple(weight.shape),
        option=option,
    )


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The dequantized weight ``codebook[code] × scale``, shape ``qt.shape``, in ``dtype``."""
    o = qt.option
    n = qt.numel
    n_blocks = -(-n // o.block_size)
    scale_codes = unpack_bits(qt.scale_codes, o.scale_bits, n_blocks)
    scales = dequantize_scales(scale_codes, qt.group_max, qt.offset, o.scale_bits, o.scale_block_size)
    values = kernels.decode_packed(qt.codes, scales, nf_table(o.bits), o.block_size)
    return values[:n].view(qt.shape).to(dtype)


def quantize_blockwise(weight: torch.Tensor, bits: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-level NF quantization with float32 absmax scales (no double quantization), as bitsandbytes' 4-bit.

    Returns:
        packed codes of whole blocks (uint8, ``n_blocks * block_size * bits / 8``) and ``(n_blocks,)`` float32 absmax.
    """
    blocks = to_blocks(weight, block_size)
    absmax = blocks.abs().amax(1)
    return kernels.encode_packed(blocks, absmax[:, None], nf_table(bits)), absmax


def dequantize_blockwise(
    packed: torch.Tensor, absmax: torch.Tensor, bits: int, block_size: int, shape: tuple[int, ...]
) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise`; float32 of ``shape``."""
    n = 1
    for d in shape:
        n *= d
    return kernels.decode_packed(packed, absmax, nf_table(bits), block_size)[:n].view(shape)


def quantization_error(weight: torch.Tensor, option: QuantOption, importance: torch.Tensor | None = None) -> float:
    """``‖W − Q(W)‖²_F``, optionally weighted element-wise by ``importance`` (same shape as ``weight``)."""
    blocks = to_blocks(weight, option.block_size)
    scales = block_scales(blocks, option)[0]
    imp = None if importance is None else to_blocks(importance, option.block_size)
    return kernels.squared_error(blocks, scales[:, None], nf_table(option.bits), imp)


def warm_up(device: str | torch.device = "cpu") -> None:
    """Compile the quantizer's kernels for every (bits, block size) once, on a small matrix.

    Compilation is a one-off per process (seconds per variant, faster once inductor's on-disk cache is warm); call
    this at start-up so that the first real configuration switch is not charged for it.
    """
    from coa_lora.quant.space import BITS, BLOCK_SIZES

    # Large enough to be compiled; an odd size, so that no dimension coincides with a block size (dynamo would
    # specialise on the coincidence).
    w = torch.randn(137, 1000, generator=torch.Generator().manual_seed(0)).to(device)
    for bits in BITS:
        for block_size in BLOCK_SIZES:
            dequantize(quantize(w, QuantOption(bits=bits, block_size=block_size)))
