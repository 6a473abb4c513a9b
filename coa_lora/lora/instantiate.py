"""Instantiate a configuration on a live model: swap each target's weight for its dequantized version, in place.

Dequantized weights are cached per (matrix, option) in a byte-bounded LRU, so re-applying a configuration whose
options were all seen before only swaps tensor pointers, and moving to a neighbouring configuration only quantizes
the matrices whose option changed. The original weights are kept (never modified) for :meth:`restore_`.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from coa_lora.configs.model_config import ModelConfig, ModelLayout
from coa_lora.progress import ProgressFn, report
from coa_lora.quant.quantizer import dequantize, quantize
from coa_lora.quant.space import QuantOption

DEFAULT_CACHE_BYTES = 2 * 1024**3


class WeightCache:
    """LRU of dequantized weights keyed by (target name, option), bounded by total bytes."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[str, QuantOption], torch.Tensor] = OrderedDict()

    def get(self, key: tuple[str, QuantOption]) -> Optional[torch.Tensor]:
        tensor = self._entries.get(key)
        if tensor is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return tensor

    def put(self, key: tuple[str, QuantOption], tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.nbytes -= old.numel() * old.element_size()
        self._entries[key] = tensor
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.nbytes -= evicted.numel() * evicted.element_size()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


def layout_of(model: torch.nn.Module, model_id: str = "model") -> ModelLayout:
    """The :class:`ModelLayout` of a Hugging Face causal LM (targets from :func:`~coa_lora.models.find_targets`)."""
    from coa_lora.models.loading import find_targets

    targets = tuple(find_targets(model))
    target_params = {id(model.get_submodule(t.name).weight) for t in targets}
    weight = model.get_submodule(targets[0].name).weight
    other = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in target_params)
    return ModelLayout(model_id, targets, other_bytes=other, weight_bytes=weight.element_size())


class QuantizedModel:
    """A model whose target weights can be switched to any :class:`ModelConfig` and back.

    Base weights are frozen: the swapped-in tensors are shared with the cache, so nothing may modify them in place.
    """

    def __init__(self, model: torch.nn.Module, layout: ModelLayout, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.model = model
        self.layout = layout
        self.cache = WeightCache(cache_bytes)
        self.config: Optional[ModelConfig] = None
        self._params = {t.name: model.get_submodule(t.name).weight for t in layout.targets}
        self._original = {name: p.data for name, p in self._params.items()}

    @classmethod
    def from_model(cls, model: torch.nn.Module, model_id: str = "model", **kwargs) -> "QuantizedModel":
        return cls(model, layout_of(model, model_id), **kwargs)

    @property
    def parameters(self) -> dict[str, torch.nn.Parameter]:
        """``{target: weight parameter}``: the live parameters this object swaps (found before any wrapping)."""
        return dict(self._params)

    def original_weight(self, name: str) -> torch.Tensor:
        """The full-precision weight of target ``name`` (never modified)."""
        return self._original[name]

    def quantized_weight(self, name: str, option: QuantOption) -> torch.Tensor:
        """The dequantized weight of target ``name`` under ``option`` (cached), in the model's dtype and device."""
        key = (name, option)
        weight = self.cache.get(key)
        if weight is None:
            original = self._original[name]
            weight = dequantize(quantize(original, option), dtype=original.dtype)
            self.cache.put(key, weight)
        return weight

    def apply_(self, config: ModelConfig, progress: Optional[ProgressFn] = None) -> "QuantizedModel":
        """Instantiate ``config`` in place; only targets whose option changed are touched."""
        if config.layout.names != self.layout.names:
            raise ValueError("This configuration was made for a different model (its target matrices differ).")
        current = self.config.options if self.config is not None else (None,) * len(config.options)
        total = len(config.options)
        for i, (name, option, now) in enumerate(zip(self.layout.names, config.options, current)):
            if option != now:
                self._params[name].data = self.quantized_weight(name, option)
            report(progress, i + 1, total, name)
        self.config = config
        return self

    def restore_(self) -> "QuantizedModel":
        """Put the original full-precision weights back."""
        for name, p in self._params.items():
            p.data = self._original[name]
        self.config = None
        return self

    @contextmanager
    def applied(self, config: ModelConfig) -> Iterator["QuantizedModel"]:
        """``with qm.applied(cfg):`` runs the block under ``cfg`` and restores the previous state after."""
        previous = self.config
        self.apply_(config)
        try:
            yield self
        finally:
            if previous is None:
                self.restore_()
            else:
                self.apply_(previous)
