"""Quantizer throughput: NF4 (B0 = 64, 2048x2048 fp32) quantize + dequantize, ours vs bitsandbytes, same tensor,
same run, interleaved repetitions; plus NF2/NF3/NF8 and double quantization relative to NF4.

    python bench/quantizer.py [--reps 15] [--cold]

The medians leave out each case's first call, which for our kernels includes ``torch.compile`` (once per process and
kernel variant): that first call is reported too, as ``first_call_s`` and ``compile_s`` (first call minus median),
so the one-off cost is visible rather than hidden. ``--cold`` points inductor at an empty cache folder, so the
compile time is what a first run on a new machine pays (otherwise inductor's on-disk cache may shorten it). The
kernels' path counters confirm our timed calls ran compiled. Prints a table and, last, one JSON object with the
ratios (higher = ours faster).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

if "--cold" in sys.argv:  # before torch is imported: inductor reads its cache folder once
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")

import torch  # noqa: E402

from coa_lora import QuantOption, dequantize, quantize  # noqa: E402
from coa_lora.quant import kernels  # noqa: E402
from coa_lora.quant.quantizer import dequantize_blockwise, quantize_blockwise  # noqa: E402


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
    parser.add_argument("--cold", action="store_true", help="compile with an empty inductor cache folder")
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
    first = {name: timed(fn, 1)[0] for name, fn in cases.items()}  # untimed warm-up; includes compilation
    assert torch.equal(ours_nf4(), bnb_nf4()), "ours and bitsandbytes disagree"
    kernels.reset_path_counts()
    times = {name: [] for name in cases}
    for _ in range(args.reps):  # interleave so drift hits every case alike
        for name, fn in cases.items():
            times[name] += timed(fn, 1)
    paths = kernels.path_counts()
    if any(path == "eager" for _, path in paths) or kernels.compile_failed():
        raise SystemExit(f"Our kernels did not all run compiled ({paths}); the timings would not be the compiled ones.")
    med = {name: statistics.median(t) for name, t in times.items()}
    compile_s = {name: first[name] - med[name] for name in cases if name.startswith("ours")}
    mel = w.numel() / 1e6
    print(f"{'case':32s} {'median ms':>10s} {'M weights/s':>12s} {'first call s':>12s}")
    for name, t in med.items():
        print(f"{name:32s} {t * 1e3:10.2f} {mel / t:12.1f} {first[name]:12.2f}")
    ours_compile = sum(compile_s.values())
    print(f"left out of the medians: {ours_compile:.1f} s of first calls beyond their median (compilation, "
          f"{'empty' if args.cold else 'existing'} inductor cache)")
    result = {
        "speedup_vs_bitsandbytes_nf4": med["bitsandbytes nf4"] / med["ours nf4"],
        "nf2_time_vs_nf4": med["ours nf2"] / med["ours nf4"],
        "nf3_time_vs_nf4": med["ours nf3"] / med["ours nf4"],
        "nf8_time_vs_nf4": med["ours nf8"] / med["ours nf4"],
        "double_quant_time_vs_nf4": med["ours nf4 + dq8 fp32 B1=256"] / med["ours nf4"],
        "first_call_s": first,
        "compile_s": compile_s,
        "ours_compile_s_total": ours_compile,
        "inductor_cache": "empty" if args.cold else "existing",
        "kernel_calls": {f"{k}:{p}": n for (k, p), n in paths.items()},
        "threads": torch.get_num_threads(),
        "reps": args.reps,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
