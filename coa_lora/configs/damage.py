"""Damage tables: ‖W_i − Q_c(W_i)‖²_F for every target matrix i and every option c, optionally Fisher-weighted.

The table is what the allocator minimises (METHOD.md §3). It is computed once per model and cached as safetensors,
keyed by a hash of the target weights (and of the Fisher settings), so changing the weights invalidates it.

Computation shares work across options: the block absmax depends only on B0, the double-quantized scales only on
(B0, b0, s, B1), so each matrix needs 3 absmax passes, 108 scale quantizations and 432 fused error passes.
"""
from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch

from coa_lora.configs.model_config import ModelLayout
from coa_lora.progress import ProgressFn, report
from coa_lora.quant import kernels
from coa_lora.quant.codebook import nf_table
from coa_lora.quant.quantizer import QUANTIZER_VERSION, dequantize_scales, quantize_scales, to_blocks
from coa_lora.quant.space import (ALL_OPTIONS, BITS, BLOCK_SIZES, SCALE_BITS, SCALE_BLOCK_SIZES, SCALE_DTYPES,
                                  TORCH_DTYPES, QuantOption)
from coa_lora.storage import read_safetensors, write_safetensors

TABLE_VERSION = "1"


@dataclass(frozen=True)
class DamageTable:
    """``values[i, k]``: damage of ``ALL_OPTIONS[k]`` on ``names[i]`` (float64).

    Attributes:
        names: target names, in layout order.
        values: ``(n_targets, 432)`` float64.
        weighting: ``"none"`` or ``"fisher"``.
        key: hash of the weights and settings the table was computed from.
        seconds: time it took to compute.
    """

    names: tuple[str, ...]
    values: torch.Tensor
    weighting: str
    key: str
    seconds: float

    def for_layout(self, layout: ModelLayout) -> "DamageTable":
        if self.names != layout.names:
            raise ValueError("This damage table was computed for a different model (its target matrices differ).")
        return self

    def damage(self, option_indices: torch.Tensor) -> float:
        """Total damage of a configuration given as ``(n_targets,)`` option indices."""
        return float(self.values.gather(1, option_indices.view(-1, 1)).sum())


def matrix_damage(
    weight: torch.Tensor, importance: Optional[torch.Tensor] = None, options: Sequence[QuantOption] = ALL_OPTIONS
) -> torch.Tensor:
    """Damage of each option on one matrix.

    Args:
        weight: the matrix (any shape), float.
        importance: optional non-negative element weights, same shape (a diagonal Fisher estimate).
        options: the options to return, in this order.

    Returns:
        ``(len(options),)`` float64.
    """
    tables = [nf_table(b) for b in BITS]
    scale_settings = list(itertools.product(SCALE_BITS, SCALE_DTYPES, SCALE_BLOCK_SIZES))
    out: dict[QuantOption, float] = {}
    for block_size in BLOCK_SIZES:
        blocks = to_blocks(weight, block_size)
        imp = None if importance is None else to_blocks(importance, block_size)
        absmax = blocks.abs().amax(1)
        scales = torch.stack([
            dequantize_scales(*quantize_scales(absmax, b0, b1, TORCH_DTYPES[s]), b0, b1) for b0, s, b1 in scale_settings
        ])
        errors = kernels.squared_errors(blocks, scales[:, :, None], tables, imp).tolist()
        for (b0, s, b1), row in zip(scale_settings, errors):
            for bits, e in zip(BITS, row):
                out[QuantOption(bits, b0, s, block_size, b1)] = e
    return torch.tensor([out[o] for o in options], dtype=torch.float64)


def compute_damage_table(
    weights: Mapping[str, torch.Tensor],
    importance: Optional[Mapping[str, torch.Tensor]] = None,
    progress: Optional[ProgressFn] = None,
) -> tuple[torch.Tensor, float]:
    """``(len(weights), 432)`` damage table over :data:`ALL_OPTIONS`, and the seconds it took."""
    start = time.perf_counter()
    rows = []
    for i, (name, w) in enumerate(weights.items()):
        rows.append(matrix_damage(w, None if importance is None else importance[name]))
        report(progress, i + 1, len(weights), name)
    return torch.stack(rows), time.perf_counter() - start


def table_key(weights: Mapping[str, torch.Tensor], weighting: str, extra: str = "") -> str:
    """sha256 over names, shapes and bytes of the weights, the quantizer's version, the weighting and any settings in
    ``extra``."""
    h = hashlib.sha256(f"v{TABLE_VERSION}|q{QUANTIZER_VERSION}|{weighting}|{extra}".encode())
    for name, w in weights.items():
        h.update(f"{name}{tuple(w.shape)}{w.dtype}".encode())
        h.update(w.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def load_or_compute(
    weights: Mapping[str, torch.Tensor],
    cache_dir: Path,
    importance: Optional[Mapping[str, torch.Tensor] | Callable[[], Mapping[str, torch.Tensor]]] = None,
    importance_settings: str = "",
    progress: Optional[ProgressFn] = None,
) -> DamageTable:
    """The damage table of ``weights`` from ``cache_dir`` if present, else computed and saved there (atomically).

    ``importance`` may be a zero-argument function: it is called only when the table is not cached (the cache key
    depends on ``importance_settings``, not on the values), so a cached Fisher table costs no backward passes."""
    weighting = "none" if importance is None else "fisher"
    key = table_key(weights, weighting, importance_settings)
    path = Path(cache_dir) / f"damage-{key}.safetensors"
    names = tuple(weights)
    if path.exists():
        try:
            tensors, meta = read_safetensors(path)
        except ValueError:  # a damaged cache entry is recomputed and replaced, never trusted
            tensors, meta = {}, {}
        values = tensors.get("values")
        shape_ok = values is not None and values.shape == (len(names), len(ALL_OPTIONS))
        if meta.get("names") == "\n".join(names) and shape_ok:
            return DamageTable(names, values, weighting, key, float(meta.get("seconds", "nan")))
    if callable(importance):
        importance = importance()
    values, seconds = compute_damage_table(weights, importance, progress)
    meta = {"names": "\n".join(names), "weighting": weighting, "seconds": f"{seconds:.3f}", "version": TABLE_VERSION}
    write_safetensors(path, {"values": values}, meta)
    return DamageTable(names, values, weighting, key, seconds)


def fisher_diagonal(
    model: torch.nn.Module,
    weights: Sequence[str] | Mapping[str, torch.nn.Parameter],
    batches: torch.Tensor,
    progress: Optional[ProgressFn] = None,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the named weights: the mean over sequences of the squared gradient of the LM loss.

    Args:
        model: a causal LM (its parameters' ``requires_grad`` flags are restored afterwards).
        weights: module names of the target linear layers, or ``{name: weight parameter}`` when wrappers (e.g. LoRA
            layers) hide the linear modules' ``weight`` attribute.
        batches: ``(n_sequences, length)`` token ids; one backward pass per sequence, so the estimate uses
            per-sequence gradients rather than the square of a batch mean.

    Returns:
        name -> float32 tensor shaped like the weight.
    """
    if not isinstance(weights, Mapping):
        weights = {n: model.get_submodule(n).weight for n in weights}
    names, params = list(weights), list(weights.values())
    flags = [p.requires_grad for p in params]
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():  # callers (a UI, an eval loop) may hold no_grad; the Fisher needs gradients
            for i, seq in enumerate(batches):
                ids = seq[None].to(params[0].device)
                loss = model(input_ids=ids, labels=ids).loss
                for f, g in zip(fisher, torch.autograd.grad(loss, params)):
                    f += g.float() ** 2
                report(progress, i + 1, len(batches), "fisher")
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return {n: f / len(batches) for n, f in zip(names, fisher)}
