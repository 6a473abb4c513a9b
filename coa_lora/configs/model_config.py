"""Whole-model quantization configurations: one :class:`QuantOption` per target matrix.

A :class:`ModelLayout` describes what a configuration is over (the target matrices, their shapes, and the bytes of
everything that stays unquantized); a :class:`ModelConfig` is a layout plus one option per target. Configurations
round-trip through versioned JSON and through the integer / float vectors the Gaussian process of the search uses.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from coa_lora.quant.space import ALL_OPTIONS, FIELD_VALUES, OPTION_INDEX, QuantOption

FORMAT_VERSION = 1
N_FIELDS = len(FIELD_VALUES)
_FIELD_SIZES = torch.tensor([len(v) for v in FIELD_VALUES.values()])


@dataclass(frozen=True)
class Target:
    """A quantized matrix: its module name (as in ``model.named_modules()``), weight shape, block index and kind."""

    name: str
    shape: tuple[int, int]
    layer: int
    kind: str

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass(frozen=True)
class ModelLayout:
    """The target matrices of a model and the bytes it keeps unquantized.

    Attributes:
        model_id: display name of the model.
        targets: the target matrices, in a fixed order (by layer, then module order).
        other_bytes: bytes of all parameters that are not targets (embeddings, norms, lm_head), at their dtype.
        weight_bytes: bytes per element of the unquantized target weights (4 for float32).
    """

    model_id: str
    targets: tuple[Target, ...]
    other_bytes: int
    weight_bytes: int = 4

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)

    @property
    def numels(self) -> torch.Tensor:
        """``(n_targets,)`` int64."""
        return torch.tensor([t.numel for t in self.targets], dtype=torch.int64)

    @property
    def total_numel(self) -> int:
        return sum(t.numel for t in self.targets)

    @property
    def full_size_bytes(self) -> int:
        """Size of the unquantized model at its stored dtype."""
        return self.total_numel * self.weight_bytes + self.other_bytes

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class ModelConfig:
    """One option per target matrix of ``layout`` (``options[i]`` belongs to ``layout.targets[i]``)."""

    layout: ModelLayout
    options: tuple[QuantOption, ...]

    def __post_init__(self) -> None:
        if len(self.options) != len(self.layout.targets):
            raise ValueError(
                f"A configuration needs one option per target matrix: {len(self.layout.targets)} targets, "
                f"{len(self.options)} options."
            )

    # ----- construction -----------------------------------------------------------------------------------------
    @classmethod
    def uniform(cls, layout: ModelLayout, option: QuantOption) -> "ModelConfig":
        """Every target matrix gets ``option``."""
        return cls(layout, (option,) * len(layout.targets))

    @classmethod
    def from_option_indices(cls, layout: ModelLayout, indices: Sequence[int] | torch.Tensor) -> "ModelConfig":
        """From ``(n_targets,)`` indices into :data:`~coa_lora.quant.space.ALL_OPTIONS`."""
        return cls(layout, tuple(ALL_OPTIONS[int(i)] for i in indices))

    def option_indices(self) -> torch.Tensor:
        """``(n_targets,)`` int64 indices into :data:`~coa_lora.quant.space.ALL_OPTIONS`."""
        return torch.tensor([OPTION_INDEX[o] for o in self.options], dtype=torch.int64)

    # ----- size ---------------------------------------------------------------------------------------------------
    def bits_per_matrix(self) -> torch.Tensor:
        """``(n_targets,)`` float64 bits per weight of each target."""
        return torch.tensor([o.bits_per_weight for o in self.options], dtype=torch.float64)

    @property
    def avg_bits(self) -> float:
        """Average bits per weight over the targets, weighted by their number of elements."""
        numels = self.layout.numels.double()
        return float((self.bits_per_matrix() * numels).sum() / numels.sum())

    @property
    def size_bytes(self) -> int:
        """Whole-model size: packed targets plus the unquantized parameters at their dtype."""
        packed = sum(o.storage_bytes(t.numel) for o, t in zip(self.options, self.layout.targets))
        return packed + self.layout.other_bytes

    def bits_by_layer(self) -> dict[int, float]:
        """Average bits of each block (numel-weighted over its targets)."""
        acc: dict[int, list[float]] = {}
        for o, t in zip(self.options, self.layout.targets):
            s = acc.setdefault(t.layer, [0.0, 0.0])
            s[0] += o.bits_per_weight * t.numel
            s[1] += t.numel
        return {layer: bits / n for layer, (bits, n) in sorted(acc.items())}

    # ----- encodings for the Gaussian process ----------------------------------------------------------------------
    def to_ordinals(self) -> torch.Tensor:
        """``(n_targets, 5)`` int64: each field's index in its allowed values (see ``QuantOption.ordinals``)."""
        return torch.tensor([o.ordinals() for o in self.options], dtype=torch.int64)

    @classmethod
    def from_ordinals(cls, layout: ModelLayout, ordinals: torch.Tensor) -> "ModelConfig":
        """Inverse of :meth:`to_ordinals`; accepts ``(n_targets, 5)`` or the flat ``(5 * n_targets,)``."""
        ordinals = torch.as_tensor(ordinals).reshape(-1, N_FIELDS)
        return cls(layout, tuple(QuantOption.from_ordinals(row.tolist()) for row in ordinals))

    def to_vector(self) -> torch.Tensor:
        """``(5 * n_targets,)`` float64 in [0, 1]: ordinals divided by (number of values - 1), target-major."""
        return (self.to_ordinals().double() / (_FIELD_SIZES - 1)).reshape(-1)

    @classmethod
    def from_vector(cls, layout: ModelLayout, vector: torch.Tensor) -> "ModelConfig":
        """Inverse of :meth:`to_vector`; values are rounded to the nearest allowed ordinal and clamped to [0, 1]."""
        v = torch.as_tensor(vector, dtype=torch.float64).reshape(-1, N_FIELDS).clamp(0, 1)
        return cls.from_ordinals(layout, torch.round(v * (_FIELD_SIZES - 1)).long())

    # ----- JSON -----------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "model": self.layout.model_id,
            "avg_bits": self.avg_bits,
            "size_bytes": self.size_bytes,
            "options": {t.name: o.to_dict() for t, o in zip(self.layout.targets, self.options)},
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping, layout: ModelLayout) -> "ModelConfig":
        """Read a configuration written by :meth:`to_dict` for ``layout``; any mismatch raises ValueError."""
        if not isinstance(d, Mapping) or "options" not in d:
            raise ValueError("A configuration must be a JSON object with an 'options' mapping.")
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"Unsupported configuration format_version {d.get('format_version')!r}; this version reads "
                f"{FORMAT_VERSION}."
            )
        opts = d["options"]
        missing = [n for n in layout.names if n not in opts]
        extra = [n for n in opts if n not in set(layout.names)]
        if missing or extra:
            raise ValueError(
                f"The configuration does not match the model's {len(layout)} target matrices "
                f"(missing: {missing[:3]}{'...' if len(missing) > 3 else ''}; "
                f"unknown: {extra[:3]}{'...' if len(extra) > 3 else ''})."
            )
        return cls(layout, tuple(QuantOption.from_dict(opts[n]) for n in layout.names))

    @classmethod
    def from_json(cls, text: str, layout: ModelLayout) -> "ModelConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"The configuration is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
        return cls.from_dict(d, layout)

    def key(self) -> str:
        """A short stable hash of (target names, options): use it to key caches of results."""
        h = hashlib.sha256()
        for name, idx in zip(self.layout.names, self.option_indices().tolist()):
            h.update(f"{name}={idx};".encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"ModelConfig({self.layout.model_id}, {len(self.options)} targets, {self.avg_bits:.3f} bits)"
