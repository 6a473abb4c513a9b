"""A linear layer whose weight stays bit-packed at run time: the NF-k codes and double-quantized scales of one matrix
(exactly the bytes of the packed folder), dequantized on the fly in each forward, as bitsandbytes' Linear4bit, HQQ or
llama.cpp keep theirs.

    layer = PackedLinear(qt, bias)                    # qt: a QuantizedTensor of a (out, in) weight
    y = layer(x)                                      # = F.linear(x, dequantize(qt), bias), bit for bit

Memory: the packed bytes (about bits/32 of the float32 weight) plus, during one forward, one dequantized matrix at a
time. Speed: each call decodes its matrix again (torch code; compiled kernels where they help, see
:mod:`coa_lora.quant.kernels`); a fused dequantize-matmul kernel would not materialise the matrix at all.

An adapter stays a LoRA branch beside it (its own A ``(r, in)`` and B ``(out, r)``), computed as peft computes it,
``base(x) + B(A(x)) · scaling``, since it cannot be merged into packed weights without re-quantizing them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from coa_lora.quant.quantizer import QuantizedTensor, dequantize
from coa_lora.quant.space import QuantOption

PARTS = ("codes", "scale_codes", "group_max", "offset")


class PackedLinear(nn.Module):
    """``nn.Linear``'s contract (``in_features``, ``out_features``, ``bias``, ``forward``) over a packed weight."""

    def __init__(self, qt: QuantizedTensor, bias: torch.Tensor | None = None):
        super().__init__()
        if len(qt.shape) != 2:
            raise ValueError(f"A packed linear layer needs a 2-D weight, got shape {tuple(qt.shape)}.")
        self.out_features, self.in_features = qt.shape
        self.option: QuantOption = qt.option
        for part in PARTS:
            self.register_buffer(part, getattr(qt, part))
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.register_buffer("lora_A", None)  # (r, in) with an adapter branch
        self.register_buffer("lora_B", None)  # (out, r)
        self.scaling = 0.0
        # A module computing x @ Wᵀ from these codes (bitsandbytes' Linear4bit, :mod:`coa_lora.deploy.bnb`), or None
        # to dequantize here. Kept out of the module tree: it shares the codes and is not part of the state.
        object.__setattr__(self, "kernel", None)

    @property
    def quantized(self) -> QuantizedTensor:
        return QuantizedTensor(self.codes, self.scale_codes, self.group_max, self.offset,
                               (self.out_features, self.in_features), self.option)

    @property
    def nbytes(self) -> int:
        """Bytes held at run time: the packed parts, the bias, the LoRA branch."""
        held = [getattr(self, p) for p in PARTS] + [t for t in (self.bias, self.lora_A, self.lora_B) if t is not None]
        if self.kernel is not None:  # its codes are ours; its absmax is its own
            held.append(self.kernel.weight.quant_state.absmax)
        return sum(t.numel() * t.element_size() for t in held)

    def _apply(self, fn, recurse: bool = True):
        # A move or cast (model.to, .cuda(), .half()) copies the codes; a kernel built on the old ones would compute
        # on stale memory of another device, so it is dropped (load_packed maps kernels after its own move).
        object.__setattr__(self, "kernel", None)
        return super()._apply(fn, recurse)

    def set_kernel_(self, kernel: nn.Module | None) -> PackedLinear:
        """Compute ``x @ Wᵀ`` with ``kernel`` (it must use this layer's weight; None: dequantize in the forward)."""
        object.__setattr__(self, "kernel", kernel)
        return self

    def set_lora_(self, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> PackedLinear:
        """Attach an adapter branch: ``lora_A`` ``(r, in)``, ``lora_B`` ``(out, r)``, added as ``B(A(x)) · scaling``."""
        if lora_A.shape[1] != self.in_features or lora_B.shape[0] != self.out_features or \
                lora_A.shape[0] != lora_B.shape[1]:
            raise ValueError(f"LoRA factors {tuple(lora_A.shape)} and {tuple(lora_B.shape)} do not fit a "
                             f"{self.out_features} x {self.in_features} layer.")
        self.lora_A, self.lora_B, self.scaling = lora_A, lora_B, float(scaling)
        return self

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(out, in)`` the weight as the dequantized path loads it."""
        return dequantize(self.quantized, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in) -> (..., out)``."""
        if self.kernel is None:
            y = F.linear(x, self.dequantized_weight(x.dtype), self.bias)
        else:
            y = self.kernel(x) if self.bias is None else self.kernel(x) + self.bias
        if self.lora_A is not None:
            y = y + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling
        return y

    def extra_repr(self) -> str:
        o = self.option
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"NF{o.bits}/B0={o.block_size}, {o.bits_per_weight:.3f} bits, lora={self.lora_A is not None}, "
                f"kernel={'dequantize' if self.kernel is None else type(self.kernel).__name__}")
