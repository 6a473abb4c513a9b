"""Bit-packing of small unsigned integer codes into bytes.

Layout: codes are written most-significant-first. A group of ``8 / gcd(8, b)`` codes fills exactly
``b / gcd(8, b)`` bytes (2 codes per byte for b = 4, 8 codes in 3 bytes for b = 3), so ``n`` codes take
``n * b / 8`` bytes up to the padding of one group. For b = 4 the layout is bitsandbytes' (first code in the high
nibble); for b = 8 it is the identity.
"""
from __future__ import annotations

from math import gcd

import torch

SUPPORTED_BITS = (1, 2, 3, 4, 5, 6, 7, 8)


def group_size(bits: int) -> tuple[int, int]:
    """(codes, bytes) of one packing group: (2, 1) for 4 bits, (8, 3) for 3 bits."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}.")
    g = gcd(8, bits)
    return 8 // g, bits // g


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of ``bits`` bits occupy once packed."""
    codes, nbytes = group_size(bits)
    return -(-n // codes) * nbytes


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes into bytes.

    Args:
        codes: ``(n,)`` integer tensor with values in ``[0, 2**bits)`` (any integer dtype).
        bits: bits per code, 1..8.

    Returns:
        ``(packed_nbytes(n, bits),)`` uint8 tensor.
    """
    group, nbytes = group_size(bits)
    codes = codes.reshape(-1)
    pad = -codes.numel() % group
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    if nbytes == 1:
        # Whole codes per byte: all arithmetic stays in uint8.
        c = codes.to(torch.uint8).view(-1, group)
        out = c[:, 0] << (bits * (group - 1)) if group > 1 else c[:, 0].clone()
        for k in range(1, group):
            out |= c[:, k] << (bits * (group - 1 - k))
        return out
    # A group of 8 codes is one 8b-bit word (at most 56 bits, fits int64), split into b bytes.
    c = codes.to(torch.int64).view(-1, group)
    word = c[:, 0] << (bits * (group - 1))
    for k in range(1, group):
        word |= c[:, k] << (bits * (group - 1 - k))
    shifts = torch.arange(8 * (nbytes - 1), -1, -8, device=codes.device)
    return ((word[:, None] >> shifts) & 0xFF).to(torch.uint8).reshape(-1)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`.

    Args:
        packed: ``(packed_nbytes(n, bits),)`` uint8 tensor.
        bits: bits per code, 1..8.
        n: number of codes to return (drops the padding).

    Returns:
        ``(n,)`` uint8 tensor of codes.
    """
    group, nbytes = group_size(bits)
    if packed.numel() != packed_nbytes(n, bits):
        raise ValueError(f"{packed.numel()} packed bytes cannot hold exactly {n} codes of {bits} bits.")
    mask = (1 << bits) - 1
    if nbytes == 1:
        if group == 1:
            return packed.reshape(-1)
        shifts = torch.arange(bits * (group - 1), -1, -bits, device=packed.device, dtype=torch.uint8)
        return ((packed.reshape(-1, 1) >> shifts) & mask).reshape(-1)[:n]
    b = packed.to(torch.int64).view(-1, nbytes)
    word = b[:, 0] << (8 * (nbytes - 1))
    for j in range(1, nbytes):
        word |= b[:, j] << (8 * (nbytes - 1 - j))
    shifts = torch.arange(bits * (group - 1), -1, -bits, device=packed.device)
    return ((word[:, None] >> shifts) & mask).to(torch.uint8).reshape(-1)[:n]
