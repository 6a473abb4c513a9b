"""Quantizer throughput: NF4 (B0 = 64, 2048x2048 fp32) quantize + dequantize, ours vs bitsandbytes, same tensor,
same run, interleaved repetitions; plus NF2/NF3/NF8 and double quantization relative to NF4.

    python bench/quantizer.py [--reps 15]

Prints a table and, last, one JSON object with the ratios (higher = ours faster).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from coa_lora import QuantOption, dequantize, quantize
from coa_lora.quant import dequantize_blockwise, quantize_blockwise


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    import bitsandbytes.functional as F

    w = torch.randn(2048, 2048, generator=torch.Generator().manual_seed(0)) * 0.02
    shape = tuple(w.shape)

    def ours_nf4():
        packed, absmax = quantize_blockwise(w, 4, 64)
        return dequantize_blockwise(packed, absmax, 4, 64, shape)

    def bnb_nf4():
        packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
        return F.dequantize_4bit(packed, state)

    def ours_option(option):
        return lambda: dequantize(quantize(w, option))

    cases = {
        "bitsandbytes nf4": bnb_nf4,
        "ours nf4": ours_nf4,
        "ours nf2": lambda: dequantize_blockwise(*quantize_blockwise(w, 2, 64), 2, 64, shape),
        "ours nf3": lambda: dequantize_blockwise(*quantize_blockwise(w, 3, 64), 3, 64, shape),
        "ours nf8": lambda: dequantize_blockwise(*quantize_blockwise(w, 8, 64), 8, 64, shape),
        "ours nf4 + dq8 fp32 B1=256": ours_option(QuantOption(4, 8, "fp32", 64, 256)),
    }
    assert torch.equal(ours_nf4(), bnb_nf4()), "ours and bitsandbytes disagree"
    for fn in cases.values():  # warm-up: compilation, allocator
        fn()
    times = {name: [] for name in cases}
    for _ in range(args.reps):  # interleave so drift hits every case alike
        for name, fn in cases.items():
            times[name] += timed(fn, 1)
    med = {name: statistics.median(t) for name, t in times.items()}
    mel = w.numel() / 1e6
    print(f"{'case':32s} {'median ms':>10s} {'M weights/s':>12s}")
    for name, t in med.items():
        print(f"{name:32s} {t * 1e3:10.2f} {mel / t:12.1f}")
    result = {
        "speedup_vs_bitsandbytes_nf4": med["bitsandbytes nf4"] / med["ours nf4"],
        "nf2_time_vs_nf4": med["ours nf2"] / med["ours nf4"],
        "nf3_time_vs_nf4": med["ours nf3"] / med["ours nf4"],
        "nf8_time_vs_nf4": med["ours nf8"] / med["ours nf4"],
        "double_quant_time_vs_nf4": med["ours nf4 + dq8 fp32 B1=256"] / med["ours nf4"],
        "threads": torch.get_num_threads(),
        "reps": args.reps,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
