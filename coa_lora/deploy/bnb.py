"""bitsandbytes' ``Linear4bit`` as the kernel of a packed NF4 layer, where bitsandbytes has a working backend.

A coa-lora NF4 matrix with blocks of 64 is bitsandbytes' NF4 layout byte for byte: the same codebook, the first code
in the high nibble, one absmax per block of 64 (tests/quant/test_quantizer.py). Only the absmax storage differs:
coa-lora double-quantizes it with its own option, bitsandbytes with an 8-bit dynamic map. The mapping hands
bitsandbytes the absmax values coa-lora's dequantization produces, as float32 (0.5 bit per weight instead of the
option's scale bits), so ``Linear4bit`` computes with exactly the weights of the dequantized path; the codes are
shared with the :class:`~coa_lora.deploy.packed_linear.PackedLinear`, not copied.

    use_bitsandbytes_(model)      # after load_packed(..., weights="packed"); returns the number of layers mapped
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from coa_lora.deploy.packed_linear import PackedLinear
from coa_lora.quant.packing import unpack_bits
from coa_lora.quant.quantizer import dequantize_scales

BNB_BITS, BNB_BLOCK = 4, 64  # the option fields bitsandbytes' NF4 layout fixes


def fits_bitsandbytes(layer: PackedLinear) -> bool:
    """Whether ``layer``'s option is NF4 with blocks of 64 (bitsandbytes' layout; the scale fields may be anything)
    and its rows hold whole blocks: bitsandbytes 0.50's CPU ``dequantize_4bit`` disagrees with its own
    ``quantize_4bit`` when a block spans two rows (a 48 x 96 matrix round-trips wrongly, a 48 x 128 one exactly)."""
    return (layer.option.bits == BNB_BITS and layer.option.block_size == BNB_BLOCK
            and layer.in_features % BNB_BLOCK == 0)


@functools.cache
def bitsandbytes_works(device: str) -> bool:
    """Whether bitsandbytes is installed and its 4-bit matmul runs on ``device`` (tried once per device type)."""
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as F

        weight = torch.linspace(-1, 1, 64 * 32, device=device).reshape(32, 64)
        packed, state = F.quantize_4bit(weight, blocksize=BNB_BLOCK, quant_type="nf4")
        layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4", device=device)
        layer.support_avx512bf16_for_cpu = False  # see linear4bit
        layer.weight = bnb.nn.Params4bit(packed, requires_grad=False, quant_state=state, blocksize=BNB_BLOCK,
                                         quant_type="nf4", bnb_quantized=True)
        x = torch.ones(1, 64, device=device)
        return bool(torch.allclose(layer(x), x @ F.dequantize_4bit(packed, state).T, atol=1e-4))
    except Exception:  # no package, no backend for this device, or a backend that computes something else
        return False


def linear4bit(layer: PackedLinear, dtype: torch.dtype) -> nn.Module:
    """A ``bitsandbytes.nn.Linear4bit`` that computes ``F.linear(x, layer.dequantized_weight(dtype), layer.bias)`` from
    the layer's own codes (shared storage) and its dequantized absmax (float32); same device as the layer."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    if not fits_bitsandbytes(layer):
        raise ValueError(f"bitsandbytes' NF4 layout needs {BNB_BITS}-bit codes in blocks of {BNB_BLOCK} and rows of "
                         f"whole blocks, this layer has {layer.option.bits}-bit codes in blocks of "
                         f"{layer.option.block_size} and rows of {layer.in_features}.")
    o = layer.option
    n_blocks = -(-layer.in_features * layer.out_features // o.block_size)
    absmax = dequantize_scales(unpack_bits(layer.scale_codes, o.scale_bits, n_blocks), layer.group_max,
                               layer.offset, o.scale_bits, o.scale_block_size).float()
    device = layer.codes.device
    state = F.QuantState(absmax=absmax, shape=torch.Size((layer.out_features, layer.in_features)),
                         code=F.get_4bit_type("nf4", device=device), blocksize=BNB_BLOCK, quant_type="nf4",
                         dtype=dtype)
    out = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=False, compute_dtype=dtype,
                            quant_type="nf4", device=device)
    # On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks the weight in place on its first forward (a copy in
    # another layout, and only for out_features % 32 == 0): the codes would stop being shared.
    out.support_avx512bf16_for_cpu = False
    out.weight = bnb.nn.Params4bit(layer.codes.reshape(-1, 1), requires_grad=False, quant_state=state,
                                   blocksize=BNB_BLOCK, quant_type="nf4", bnb_quantized=True)
    return out


def use_bitsandbytes_(model: nn.Module) -> int:
    """Give every NF4/B64 :class:`PackedLinear` of ``model`` a ``Linear4bit`` kernel when bitsandbytes works on the
    model's device; the others keep dequantizing on the fly. Returns how many layers were mapped."""
    first = next(model.parameters())
    if not bitsandbytes_works(first.device.type):
        return 0
    mapped = 0
    for module in model.modules():
        if isinstance(module, PackedLinear) and fits_bitsandbytes(module):
            module.set_kernel_(linear4bit(module, first.dtype))
            mapped += 1
    return mapped


__all__ = ["bitsandbytes_works", "fits_bitsandbytes", "linear4bit", "use_bitsandbytes_"]
