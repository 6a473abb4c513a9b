"""Run-time memory and speed of a deployed configuration: packed weights (PackedLinear) against today's dequantized
load and the unquantized model, each measured in its own fresh process.

    python bench/deploy_memory.py                      # SmolLM2 at 2.5, 3 and 4 bits
    python bench/deploy_memory.py --model tiny --bits 3
    python bench/deploy_memory.py --bits 3 nf4             # nf4: uniform NF4/B64 with 8-bit scales (QLoRA's format)

For each budget the allocator's configuration is exported once (artifacts/deploy_memory/<model>-<bits>bits). Each
measurement process loads one model, then runs a 256-token forward and a greedy generation of 64 new tokens
(``--new-tokens``); it
reports RSS after loading, its peak RSS after the forward (VmHWM of /proc/self/status: the load itself included; not
ru_maxrss, which Linux carries over from the parent across fork and exec), and tokens/s of the generation. The parent
holds no model while the measurements run (the exports are made in a child process too).
A last process per budget measures what bounds the packed runtime (``limits``): the RSS floor (libraries imported, no
model, plus the bytes the packed model must hold) and the time to decode every matrix once, which per-call decoding
adds to each token. Last line: one JSON object with the 3-bit figures the issue asks for, the ratios and the limits.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# packed: PackedLinear with kernel="auto" (bitsandbytes' Linear4bit for NF4/B64 layers); packed_torch: every layer
# decoded in torch code (kernel="dequantize"); dequantized: today's float load; unquantized: the original model.
MODES = ("packed", "packed_torch", "dequantized", "unquantized")


def _vm_hwm_mib() -> float:
    """This process's peak resident set (a new address space starts at exec, so the parent's is not counted)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def export(model_name: str, bits: str, folder: Path) -> None:
    """In a child process: the allocator's configuration at ``bits`` (``nf4``: uniform NF4/B64) as a packed folder."""
    from coa_lora import ModelConfig, QuantOption, Workbench, save_packed

    wb = Workbench.load(model_name)
    config = ModelConfig.uniform(wb.layout, QuantOption()) if bits == "nf4" else wb.allocate(float(bits)).config
    save_packed(wb, config, folder)


def measure(model_name: str, folder: str, mode: str, new_tokens: int = 64) -> dict:
    """In this (fresh) process: load, forward 256 tokens, generate ``new_tokens``; memory in MiB, speed in tokens/s."""
    import psutil
    import torch

    from coa_lora import load_packed
    from coa_lora.models import load_model

    torch.manual_seed(0)
    t0 = time.perf_counter()
    if mode == "unquantized":
        model = load_model(model_name)
    else:
        model = load_packed(folder, weights="dequantized" if mode == "dequantized" else "packed", adapter="none",
                            kernel="dequantize" if mode == "packed_torch" else "auto")
    load_s = time.perf_counter() - t0
    rss_loaded = psutil.Process().memory_info().rss / 2**20
    ids = torch.randint(0, model.config.vocab_size, (1, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(input_ids=ids)
        peak = _vm_hwm_mib()
        t0 = time.perf_counter()
        out = model.generate(ids[:, :16], max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        gen_s = time.perf_counter() - t0
    assert out.shape[1] == 16 + new_tokens
    return {"mode": mode, "load_s": load_s, "rss_loaded_mib": rss_loaded, "peak_rss_mib": peak,
            "tokens_per_s": new_tokens / gen_s}


def limits(folder: str) -> dict:
    """In this (fresh) process: what bounds the packed runtime from below, measured apart.

    * memory floor: the RSS of the process with torch, transformers and coa_lora imported and no model, plus the bytes
      the packed model must hold (packed matrices, and what stays unquantized: the tied embedding, norms);
    * decode time: dequantizing every packed matrix once in torch code (compiled kernels, warmed up), which the
      per-call path pays for every generated token on top of the dequantized model's own forward.
    """
    import psutil
    import torch
    import transformers  # noqa: F401 — part of the floor: every path imports it

    from coa_lora import load_packed
    from coa_lora.deploy.packed_linear import PackedLinear

    rss_imports = psutil.Process().memory_info().rss / 2**20
    model = load_packed(folder, weights="packed", adapter="none", kernel="dequantize")
    layers = [m for m in model.modules() if isinstance(m, PackedLinear)]
    packed = sum(m.nbytes for m in layers)
    seen = {id(t) for m in layers for t in (*m.parameters(), *m.buffers())}
    rest = {id(t): t for t in (*model.parameters(), *model.buffers()) if id(t) not in seen}  # tied: counted once
    unquantized = sum(t.numel() * t.element_size() for t in rest.values())
    with torch.no_grad():
        for m in layers:  # compiles each (bits, block size) once
            m.dequantized_weight()
        t0 = time.perf_counter()
        for _ in range(3):
            for m in layers:
                m.dequantized_weight()
        decode_s = (time.perf_counter() - t0) / 3
    return {"mode": "limits", "rss_imports_mib": rss_imports, "packed_mib": packed / 2**20,
            "unquantized_mib": unquantized / 2**20, "decode_all_s": decode_s,
            "weights": sum(m.in_features * m.out_features for m in layers)}


def _limit_rows(rows: list[dict]) -> dict:
    """The bounds at each budget: the packed model's RSS cannot go below the floor, and per-call decoding adds
    ``decode_all_s`` to every token of the dequantized path."""
    out = {}
    for bits in dict.fromkeys(r["bits"] for r in rows):
        by = {r["mode"]: r for r in rows if r["bits"] == bits}
        if "limits" not in by or "dequantized" not in by:
            continue
        lim, deq = by["limits"], by["dequantized"]
        floor = lim["rss_imports_mib"] + lim["packed_mib"] + lim["unquantized_mib"]
        per_token = 1 / deq["tokens_per_s"]
        out[str(bits)] = {
            "rss_floor_mib": floor, "rss_floor_ratio_to_dequantized": floor / deq["peak_rss_mib"],
            "decode_all_s": lim["decode_all_s"],
            "speed_ceiling_ratio_per_call_decode": per_token / (per_token + lim["decode_all_s"]),
            "decode_weights_per_s": lim["weights"] / lim["decode_all_s"],
        }
        print(f"{bits} bits limits: floor {floor:.0f} MiB = imports {lim['rss_imports_mib']:.0f} + packed "
              f"{lim['packed_mib']:.0f} + unquantized {lim['unquantized_mib']:.0f} "
              f"({floor / deq['peak_rss_mib']:.2f}x the dequantized peak); decoding every matrix once takes "
              f"{lim['decode_all_s']:.3f} s ({lim['weights'] / lim['decode_all_s'] / 1e6:.0f} M weights/s), so "
              f"per-call decoding runs at most {out[str(bits)]['speed_ceiling_ratio_per_call_decode']:.2f}x the "
              f"dequantized path's speed", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--bits", nargs="+", default=["2.5", "3", "4"],
                        help="budgets in bits, or nf4 for a uniform NF4/B64 configuration")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens generated per measurement")
    parser.add_argument("--measure", nargs=2, metavar=("FOLDER", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--export", nargs=2, metavar=("BITS", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        folder, mode = args.measure
        print(json.dumps(limits(folder) if mode == "limits" else measure(args.model, folder, mode, args.new_tokens)))
        return
    if args.export:
        export(args.model, args.export[0], Path(args.export[1]))
        return
    from coa_lora import read_summary

    rows = []
    for bits in args.bits:
        bits = bits if bits == "nf4" else float(bits)
        folder = ROOT / "artifacts" / "deploy_memory" / f"{args.model}-{bits if bits == 'nf4' else f'{bits:g}bits'}"
        if not folder.is_dir():
            subprocess.run([sys.executable, __file__, "--model", args.model, "--export", str(bits), str(folder)],
                           check=True)
        summary = read_summary(folder)
        for mode in (*MODES, "limits"):
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            done = subprocess.run([sys.executable, __file__, "--model", args.model, "--measure", str(folder), mode,
                                   "--new-tokens", str(args.new_tokens)],
                                  check=True, capture_output=True, text=True, env=env)
            row = {"bits": bits, "disk_mib": summary.size_bytes / 2**20, **json.loads(done.stdout.splitlines()[-1])}
            rows.append(row)
            if mode == "limits":
                continue
            print(f"{bits} bits {mode:12s} load {row['load_s']:5.1f} s  RSS loaded {row['rss_loaded_mib']:7.0f} MiB  "
                  f"peak {row['peak_rss_mib']:7.0f} MiB  {row['tokens_per_s']:6.1f} tokens/s  "
                  f"(disk {row['disk_mib']:.0f} MiB)", flush=True)
    at3 = {r["mode"]: r for r in rows if r["bits"] == 3.0}
    out = {"model": args.model, "rows": rows, "limits": _limit_rows(rows)}
    if len(at3) == len(MODES):
        out.update({
            "rss_packed_mib": at3["packed"]["peak_rss_mib"], "rss_dequantized_mib": at3["dequantized"]["peak_rss_mib"],
            "rss_unquantized_mib": at3["unquantized"]["peak_rss_mib"],
            "tokens_per_s_packed": at3["packed"]["tokens_per_s"],
            "tokens_per_s_dequantized": at3["dequantized"]["tokens_per_s"],
            "tokens_per_s_unquantized": at3["unquantized"]["tokens_per_s"],
            "rss_ratio_packed_to_dequantized": at3["packed"]["peak_rss_mib"] / at3["dequantized"]["peak_rss_mib"],
            "speed_ratio_packed_to_dequantized": at3["packed"]["tokens_per_s"] / at3["dequantized"]["tokens_per_s"],
        })
    nf4 = {r["mode"]: r for r in rows if r["bits"] == "nf4"}
    if len(nf4) == len(MODES):  # the same NF4 weights through bitsandbytes' Linear4bit and through our torch decode
        out.update({
            "nf4_tokens_per_s": {m: r["tokens_per_s"] for m, r in nf4.items()},
            "nf4_peak_rss_mib": {m: r["peak_rss_mib"] for m, r in nf4.items()},
            "nf4_speed_bitsandbytes_over_torch": nf4["packed"]["tokens_per_s"] / nf4["packed_torch"]["tokens_per_s"],
            "nf4_speed_bitsandbytes_over_dequantized": nf4["packed"]["tokens_per_s"] / nf4["dequantized"]["tokens_per_s"],
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
