"""Fused element-wise kernels of the quantizer: encode+pack, unpack+decode, and the quantization error.

Each kernel is plain torch over a lookup table (:class:`~coa_lora.quant.codebook.NFTable`), written so that
``torch.compile`` fuses it into one vectorised loop per block: on 2 CPU cores that is several times faster than
``torch.bucketize`` followed by separate packing and gathering passes. The results are identical to the
straightforward reference (``torch.bucketize`` + :mod:`coa_lora.quant.packing`), which tests/quant/test_kernels.py
checks. Compilation is on by default for inputs of at least ``COMPILE_MIN_ELEMENTS``; ``COA_LORA_COMPILE=0`` switches it
off, and a machine where it fails (no C++ compiler) falls back to eager execution of the same functions with a warning.
Every call is counted by kernel and path (:func:`path_counts`), so a test or a bench can assert that the compiled
path really ran instead of trusting that no warning went by.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from typing import Callable, Optional

import torch

from coa_lora.quant.codebook import LUT_BINS, NFTable
from coa_lora.quant.packing import group_size

_compiled: dict[str, Callable] = {}
_compile_failed = False
_paths: Counter[tuple[str, str]] = Counter()


def compile_enabled() -> bool:
    return os.environ.get("COA_LORA_COMPILE", "1") != "0" and not _compile_failed


def compile_failed() -> bool:
    """True once a compilation failed in this process: every kernel runs eagerly from then on."""
    return _compile_failed


def path_counts() -> dict[tuple[str, str], int]:
    """Calls since the last :func:`reset_path_counts`, by (kernel, ``"compiled"`` or ``"eager"``).

    Kernel names: ``encode_packed``, ``decode_packed``, ``squared_error``, ``squared_errors``. A compiled call that
    failed and was rerun eagerly counts as eager.
    """
    return dict(_paths)


def reset_path_counts() -> None:
    _paths.clear()


# Bit widths and block sizes are compile-time constants of the kernels (each pair gets its own specialised graph):
# 4 widths x 3 block sizes exceed dynamo's default of 8 graphs per function, after which it would silently run eager.
RECOMPILE_LIMIT = 64


# Compiling costs seconds per process; it pays off only on matrices of real models, so small inputs (tests, tiny
# models) run the very same functions eagerly.
COMPILE_MIN_ELEMENTS = 1 << 16


def _run(fn: Callable, *args):
    """Run ``fn`` compiled (one compiled function per kernel) when compilation is enabled and the first argument is
    large enough to repay it, else eagerly."""
    global _compile_failed
    name = fn.__name__.lstrip("_")
    if compile_enabled() and args[0].numel() >= COMPILE_MIN_ELEMENTS:
        if fn.__name__ not in _compiled:
            # fullgraph: a graph break raises instead of silently running part of the kernel eagerly.
            _compiled[fn.__name__] = torch.compile(fn, dynamic=True, fullgraph=True)
        try:
            # Past the limit dynamo would fall back to eager without a word; make it raise (and be counted) instead.
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
                out = _compiled[fn.__name__](*args)
            _paths[(name, "compiled")] += 1
            return out
        except Exception as exc:  # noqa: BLE001 — inductor raises many types; we surface it and run eagerly.
            _compile_failed = True
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); using eager kernels.", stacklevel=3)
    _paths[(name, "eager")] += 1
    return fn(*args)


def _lut_codes(y: torch.Tensor, base: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Nearest-codebook codes of normalised values ``y`` (any shape) from the lookup table; int32, same shape."""
    j = ((y + 1) * (LUT_BINS / 2)).to(torch.int64).clamp(0, LUT_BINS - 1)
    return base[j] + (y > thresholds[j, 0]).to(torch.int32) + (y > thresholds[j, 1]).to(torch.int32)


def _encode_packed(blocks, inv_scale, base, thresholds, bits: int, group: int, nbytes: int):
    y = (blocks * inv_scale).view(blocks.shape[0], -1, group)
    codes = _lut_codes(y, base, thresholds)
    # Unrolled over the (static) group: the compiler then emits one straight-line vectorised loop.
    word = codes[..., 0] << (bits * (group - 1))
    for k in range(1, group):
        word = word | (codes[..., k] << (bits * (group - 1 - k)))
    parts = [(word >> (8 * (nbytes - 1 - j))) & 0xFF for j in range(nbytes)]
    return torch.stack(parts, -1).to(torch.uint8).reshape(-1)


def _decode_packed(packed, scales, codebook, bits: int, block_size: int, group: int, nbytes: int):
    p = packed.view(scales.shape[0], block_size // group, nbytes).to(torch.int32)
    word = p[..., 0] << (8 * (nbytes - 1))
    for j in range(1, nbytes):
        word = word | (p[..., j] << (8 * (nbytes - 1 - j)))
    mask = (1 << bits) - 1
    s = scales[:, None]
    values = [codebook[(word >> (bits * (group - 1 - k))) & mask] * s for k in range(group)]
    return torch.stack(values, -1).reshape(-1)


def _squared_error(blocks, scale, inv_scale, base, thresholds, codebook, importance):
    codes = _lut_codes(blocks * inv_scale, base, thresholds)
    diff = blocks - codebook[codes] * scale
    sq = diff * diff if importance is None else diff * diff * importance
    return sq.sum(dtype=torch.float64)


def _squared_errors(blocks, scales, bases, thresholds, codebooks, importance):
    inv = torch.where(scales > 0, 1.0 / scales, torch.zeros_like(scales))
    y = blocks[None] * inv  # (S, n_blocks, block_size), fused away by the compiler
    j = ((y + 1) * (LUT_BINS / 2)).to(torch.int64).clamp(0, LUT_BINS - 1)
    out = []
    for k in range(bases.shape[0]):
        codes = bases[k][j] + (y > thresholds[k][j, 0]).to(torch.int32) + (y > thresholds[k][j, 1]).to(torch.int32)
        diff = blocks[None] - codebooks[k][codes] * scales
        sq = diff * diff if importance is None else diff * diff * importance[None]
        out.append(sq.sum(dim=(1, 2), dtype=torch.float64))
    return torch.stack(out, 1)


_device_tables: dict[tuple[int, str], tuple[torch.Tensor, ...]] = {}


def _tables(table: NFTable, device: torch.device) -> tuple[torch.Tensor, ...]:
    key = (table.bits, str(device))
    if key not in _device_tables:
        _device_tables[key] = tuple(t.to(device) for t in (table.lut_base, table.lut_thresholds, table.codebook))
    return _device_tables[key]


def safe_inverse(scale: torch.Tensor) -> torch.Tensor:
    """``1 / scale``, 0 where the scale is 0 (an all-zero block then encodes as the code of 0).

    Multiplying by the reciprocal (not dividing) is what bitsandbytes does; it keeps our codes bit-identical.
    """
    return torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))


def encode_packed(blocks: torch.Tensor, scale: torch.Tensor, table: NFTable) -> torch.Tensor:
    """Nearest-codebook codes of ``blocks / scale``, bit-packed (layout of :mod:`coa_lora.quant.packing`).

    Args:
        blocks: ``(n_blocks, block_size)`` float32; ``block_size`` a multiple of 8.
        scale: ``(n_blocks, 1)`` float32, non-negative.
        table: the NF table.

    Returns:
        ``(n_blocks * block_size * bits / 8,)`` uint8.
    """
    base, thresholds, _ = _tables(table, blocks.device)
    group, nbytes = group_size(table.bits)
    return _run(_encode_packed, blocks, safe_inverse(scale), base, thresholds, table.bits, group, nbytes)


def decode_packed(packed: torch.Tensor, scales: torch.Tensor, table: NFTable, block_size: int) -> torch.Tensor:
    """Inverse of :func:`encode_packed`: ``codebook[code] * scale``.

    Args:
        packed: ``(n_blocks * block_size * bits / 8,)`` uint8.
        scales: ``(n_blocks,)`` float32.

    Returns:
        ``(n_blocks * block_size,)`` float32.
    """
    _, _, codebook = _tables(table, packed.device)
    group, nbytes = group_size(table.bits)
    return _run(_decode_packed, packed, scales, codebook, table.bits, block_size, group, nbytes)


def squared_error(
    blocks: torch.Tensor, scale: torch.Tensor, table: NFTable, importance: Optional[torch.Tensor] = None
) -> float:
    """``sum(importance * (blocks - decode(encode(blocks))) ** 2)`` in float64, without materialising codes.

    Args:
        blocks: ``(n_blocks, block_size)`` float32.
        scale: ``(n_blocks, 1)`` float32.
        importance: optional ``(n_blocks, block_size)`` non-negative weights (a diagonal Fisher estimate).
    """
    base, thresholds, codebook = _tables(table, blocks.device)
    return float(_run(_squared_error, blocks, scale, safe_inverse(scale), base, thresholds, codebook, importance))


def squared_errors(
    blocks: torch.Tensor, scales: torch.Tensor, tables: list[NFTable], importance: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """:func:`squared_error` for many scale variants and codebooks in one fused pass (the damage table's kernel).

    Args:
        blocks: ``(n_blocks, block_size)`` float32.
        scales: ``(S, n_blocks, 1)`` float32: S variants of the block scales (e.g. double-quantization settings).
        tables: K NF tables.
        importance: optional ``(n_blocks, block_size)`` non-negative weights.

    Returns:
        ``(S, K)`` float64 errors.
    """
    per_table = [_tables(t, blocks.device) for t in tables]
    bases = torch.stack([t[0] for t in per_table])
    thresholds = torch.stack([t[1] for t in per_table])
    size = max(t[2].numel() for t in per_table)
    codebooks = torch.stack([torch.nn.functional.pad(t[2], (0, size - t[2].numel())) for t in per_table])
    return _run(_squared_errors, blocks, scales, bases, thresholds, codebooks, importance)
