"""The quantization configuration space: per-matrix options, the 432-option table, whole-model configurations.

An option is the paper's (b, b0, s, B0, B1) (METHOD.md §2):

- ``bits`` (b): bits of the NormalFloat code of each weight.
- ``scale_bits`` (b0): bits of the unsigned code of each first-level (absmax) scale — double quantization.
- ``scale_dtype`` (s): storage dtype of the second-level scales.
- ``block_size`` (B0): weights per first-level scale.
- ``scale_block_size`` (B1): first-level scales per second-level scale.

``bits_per_weight = b + b0 / B0 + s_bits / (B0 * B1)``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from typing import Mapping, Sequence

import torch

from coa_lora.quant.packing import packed_nbytes

BITS = (2, 3, 4, 8)
SCALE_BITS = (2, 3, 4, 8)
SCALE_DTYPES = ("bf16", "fp16", "fp32")
BLOCK_SIZES = (16, 32, 64)
SCALE_BLOCK_SIZES = (16, 64, 256)

#: Allowed values of each option field, in the ordinal order used by the vector encodings.
FIELD_VALUES: dict[str, tuple] = {
    "bits": BITS,
    "scale_bits": SCALE_BITS,
    "scale_dtype": SCALE_DTYPES,
    "block_size": BLOCK_SIZES,
    "scale_block_size": SCALE_BLOCK_SIZES,
}
DTYPE_BITS = {"bf16": 16, "fp16": 16, "fp32": 32}
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OFFSET_BYTES = 4  # the per-matrix offset of the first-level scales is one fp32 number


@dataclass(frozen=True, order=True)
class QuantOption:
    """One matrix's quantization option (b, b0, s, B0, B1); validated on construction."""

    bits: int = 4
    scale_bits: int = 8
    scale_dtype: str = "fp32"
    block_size: int = 64
    scale_block_size: int = 256

    def __post_init__(self) -> None:
        for f in fields(self):
            allowed = FIELD_VALUES[f.name]
            value = getattr(self, f.name)
            if value not in allowed or isinstance(value, bool):
                raise ValueError(f"QuantOption.{f.name} must be one of {allowed}, got {value!r}.")

    @property
    def bits_per_weight(self) -> float:
        """b + b0/B0 + s_bits/(B0·B1)."""
        return (
            self.bits
            + self.scale_bits / self.block_size
            + DTYPE_BITS[self.scale_dtype] / (self.block_size * self.scale_block_size)
        )

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.scale_dtype]

    def storage_bytes(self, numel: int) -> int:
        """Exact bytes of a packed matrix of ``numel`` weights: codes of whole blocks, scale codes, group scales and
        the offset."""
        n_blocks = -(-numel // self.block_size)
        n_groups = -(-n_blocks // self.scale_block_size)
        return (
            packed_nbytes(n_blocks * self.block_size, self.bits)
            + packed_nbytes(n_blocks, self.scale_bits)
            + n_groups * DTYPE_BITS[self.scale_dtype] // 8
            + OFFSET_BYTES
        )

    @property
    def name(self) -> str:
        """Compact label, e.g. ``nf4·dq8-fp32·64x256``."""
        return f"nf{self.bits}·dq{self.scale_bits}-{self.scale_dtype}·{self.block_size}x{self.scale_block_size}"

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "QuantOption":
        names = [f.name for f in fields(cls)]
        if not isinstance(d, Mapping) or set(d) != set(names):
            raise ValueError(f"A quantization option must be an object with exactly the keys {names}, got {d!r}.")
        return cls(**{k: d[k] for k in names})

    def ordinals(self) -> tuple[int, ...]:
        """Index of each field's value in :data:`FIELD_VALUES` (the GP's ordinal encoding)."""
        return tuple(FIELD_VALUES[f.name].index(getattr(self, f.name)) for f in fields(self))

    @classmethod
    def from_ordinals(cls, idx: Sequence[int]) -> "QuantOption":
        values = list(FIELD_VALUES.values())
        if len(idx) != len(values) or any(not 0 <= int(i) < len(v) for i, v in zip(idx, values)):
            raise ValueError(f"Ordinals must be 5 indices within {[len(v) for v in values]}, got {list(idx)}.")
        return cls(*(v[int(i)] for v, i in zip(values, idx)))


#: All 4·4·3·3·3 = 432 options, in ordinal (lexicographic) order.
ALL_OPTIONS: tuple[QuantOption, ...] = tuple(
    QuantOption(*values) for values in itertools.product(*FIELD_VALUES.values())
)
OPTION_INDEX: dict[QuantOption, int] = {o: i for i, o in enumerate(ALL_OPTIONS)}
MIN_BITS = min(o.bits_per_weight for o in ALL_OPTIONS)
MAX_BITS = max(o.bits_per_weight for o in ALL_OPTIONS)

#: Uniform configurations every plot draws as baselines; QLoRA's NF4 is ``nf4``.
PRESETS: dict[str, QuantOption] = {
    "nf2": QuantOption(2, 8, "fp32", 64, 256),
    "nf3": QuantOption(3, 8, "fp32", 64, 256),
    "nf4": QuantOption(4, 8, "fp32", 64, 256),
    "nf8": QuantOption(8, 8, "fp32", 64, 256),
    "nf3-b16": QuantOption(3, 8, "fp32", 16, 256),
    "min": min(ALL_OPTIONS, key=lambda o: o.bits_per_weight),
    "max": max(ALL_OPTIONS, key=lambda o: o.bits_per_weight),
}


def preset(name: str) -> QuantOption:
    """The option of a named uniform preset."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name]
