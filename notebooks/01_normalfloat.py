# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1 · NormalFloat quantization from scratch
#
# A quantized model stores each weight as a few-bit *code* plus a little metadata to scale it back. How many bits,
# and how much metadata, is the whole trade-off this project is about: every bit saved shrinks the model, every bit
# lost adds error. This notebook builds the NormalFloat (NF-b) quantizer that QLoRA introduced, one piece at a time,
# on a real matrix of SmolLM2-135M, and checks each piece against the library (`coa_lora`) and against bitsandbytes.
#
# You will see: the NF codebooks for 2, 3, 4 and 8 bits over the weights they code; blockwise absmax scaling and
# double quantization of the scales; the error of all 432 quantization options of one matrix against their bits per
# weight; the bits formula checked against the packed bytes; the same NF4 codes as bitsandbytes.
#
# **Run time** with the defaults: about 30 s on 2 CPU cores (most of it loading the model and compiling the
# quantizer's kernels once).

# %% tags=["parameters"]
# Parameters. The defaults run in about 30 s; a larger matrix (an MLP projection, 1536 × 576) takes about 20 s more.
MODEL = "smollm2"  # the embedded model; "tiny" (random weights) or a Hugging Face id also work
MATRIX = "model.layers.10.self_attn.q_proj"  # any target name: see wb.layout.names
BLOCK = 64  # B0 used for the histogram of block-normalised weights
BUDGET = 3.2  # bits per weight of the closing exercise

# %%
import os

import pandas as pd
import torch

from coa_lora import ALL_OPTIONS, QuantOption, Workbench, dequantize, matrix_damage, plots, quantize
from coa_lora.quant import NF_P, dequantize_blockwise, nf_formula, nf_table, quantize_blockwise

# This notebook quantizes one matrix a handful of times: compiling the quantizer's kernels for each bit width and
# block size (seconds each) would cost more than it saves, so they run eagerly (same values, tests/quant/test_kernels.py).
os.environ["COA_LORA_COMPILE"] = "0"
wb = Workbench.load(MODEL)
W = wb.qmodel.original_weight(MATRIX)  # the unquantized weight, whatever configuration is applied
print(f"{MATRIX}: {tuple(W.shape)} = {W.numel():,} weights")

# %% [markdown]
# ## 1. The NF-b codebook
#
# Trained weights are roughly normally distributed, so NF-b spends its 2^b code values where a normal distribution
# has its mass: at evenly spaced *quantiles*. Take the normal quantile function Φ⁻¹, scale it so that
# Φ⁻¹(p) = 1 at p = 0.9677083 (so the values span [−1, 1]), and take 2^(b−1) − 1 negative values, an exact zero
# and 2^(b−1) positive ones. Here it is in five lines:

# %%
def nf_codebook(bits: int, p: float = NF_P) -> torch.Tensor:
    """NF-b from the quantile formula: (2**bits,) ascending values in [-1, 1]."""
    half = 2 ** (bits - 1)
    scale = torch.special.ndtri(torch.tensor(p, dtype=torch.float64))
    negative = torch.special.ndtri(torch.linspace(1 - p, 0.5, half, dtype=torch.float64)[:-1]) / scale
    positive = torch.special.ndtri(torch.linspace(0.5, p, half + 1, dtype=torch.float64)[1:]) / scale
    return torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive])


for bits in (2, 3, 4, 8):
    ours, library = nf_codebook(bits), nf_formula(bits)
    print(f"NF{bits}: {len(ours):3d} values, equal to the library's formula: {torch.equal(ours, library)}; "
          f"largest difference to the table the quantizer uses: {(ours.float() - nf_table(bits).codebook).abs().max():.1e}")

# %% [markdown]
# The quantizer uses bitsandbytes' published NF4 table verbatim (the formula reproduces it to about one float32
# ulp), so that our NF4 codes are bitsandbytes' codes bit for bit (section 5).
#
# ## 2. Blockwise absmax scaling
#
# A codebook in [−1, 1] needs the weights in [−1, 1]. Blockwise absmax scaling cuts the flattened matrix into blocks
# of B0 consecutive weights and divides each block by its largest magnitude. Each weight is then coded as the
# nearest codebook value.

# %%
blocks = W.reshape(-1, BLOCK)  # this matrix's size is a multiple of BLOCK; the library pads when it is not
normalised = (blocks / blocks.abs().amax(1, keepdim=True)).reshape(-1)
density, edges = torch.histogram(normalised, bins=161, range=(-1.0, 1.0), density=True)
histogram = pd.DataFrame({"x": (edges[1:] + edges[:-1]) / 2, "width": edges[1:] - edges[:-1], "density": density})
codebooks = {bits: nf_table(bits).codebook.tolist() for bits in (2, 3, 4, 8)}
plots.codebook_figure(codebooks, histogram, f"NF codebooks over {MATRIX} (blocks of {BLOCK})").show()

# %% [markdown]
# **Notice:** the normalised weights form a bell around 0, and the codebook ticks crowd where the bell is high: that
# is what "normal float" buys over evenly spaced integers. The spikes at ±1 are the absmax of each block itself (one
# weight per block lands exactly on ±1, and NF codes it exactly). NF2 has only four values: most weights round to 0
# or to ±0.5 of their block's maximum, which is why 2-bit models collapse without help.
#
# By hand: round every normalised weight to its nearest NF4 value, multiply back by the block's absmax, and compare
# with the library's single-level quantizer (`quantize_blockwise`, no double quantization yet).

# %%
cb = nf_table(4).codebook
codes = torch.bucketize(normalised, (cb[1:] + cb[:-1]) / 2)  # nearest value: compare against the midpoints
by_hand = (cb[codes].reshape(-1, BLOCK) * blocks.abs().amax(1, keepdim=True)).reshape(W.shape)
packed, absmax = quantize_blockwise(W, 4, BLOCK)
library = dequantize_blockwise(packed, absmax, 4, BLOCK, tuple(W.shape))
print(f"by hand == library: {torch.equal(by_hand, library)}; squared error ‖W − Q(W)‖² = "
      f"{float(((W - library) ** 2).sum()):.4f}")

# %% [markdown]
# ## 3. Block size and double quantization: the bits formula
#
# Every block stores one scale. In float32 that is 32 bits per 64 weights, half a bit per weight: a lot next to a
# 3-bit code. QLoRA's *double quantization* codes the block scales themselves: subtract one per-matrix offset (the
# smallest scale), code the shifted scales with a b0-bit unsigned integer, and keep one second-level scale per B1
# first-level ones, stored in dtype s (bf16, fp16 or fp32). An option is the tuple (b, b0, s, B0, B1), and it costs
#
# $$\text{bits per weight} = b + \frac{b_0}{B_0} + \frac{s_\text{bits}}{B_0 B_1}.$$
#
# The formula ignores padding and the one float32 offset per matrix. `quantize` returns the packed tensors: count
# their bytes and compare.

# %%
examples = [QuantOption(4, 8, "fp32", 64, 256), QuantOption(4, 8, "fp32", 16, 256), QuantOption(3, 2, "bf16", 16, 16),
            QuantOption(2, 8, "fp32", 64, 256), QuantOption(8, 8, "fp32", 64, 256)]
rows = []
for option in examples:
    qt = quantize(W, option)
    rows.append({"option": option.name, "bits per weight": option.bits_per_weight,
                 "formula bytes": option.bits_per_weight * W.numel() / 8, "packed bytes": qt.nbytes,
                 "storage_bytes()": option.storage_bytes(W.numel()),
                 "error": float(((W - dequantize(qt)) ** 2).sum())})
pd.DataFrame(rows)

# %% [markdown]
# **Notice:** the packed bytes exceed the formula by a handful of bytes (the 4-byte offset, and the last partial
# group's scale when the blocks do not fill it), and `storage_bytes()` predicts them exactly. Smaller blocks (B0 = 16)
# cost bits in scales but cut the error; that trade is what the next section maps out.
#
# ## 4. All 432 options of one matrix
#
# 4 × 4 × 3 × 3 × 3 = 432 options per matrix. `matrix_damage` computes the error of every one of them in one pass
# (the block maxima depend only on B0, the coded scales only on (B0, b0, s, B1), so most of the work is shared).

# %% tags=["key-figure"]
errors = matrix_damage(W)  # (432,) squared errors, in the order of ALL_OPTIONS
frame = plots.option_frame(errors, ALL_OPTIONS)
front = frame[frame["on_front"]].sort_values("bits_per_weight")
print(f"{len(front)} of {len(frame)} options are on this matrix's Pareto front")
plots.options_figure(frame, color="bits", title=f"Error against bits per weight: every option of {MATRIX}").show()

# %% [markdown]
# **Notice:** the options form four clouds, one per code width b, and the error falls several-fold from each cloud to
# the next (by far the most from 4 to 8 bits): the code bits matter most. Inside a cloud the scale metadata (b0, s, B0, B1) moves an
# option by fractions of a bit and changes the error by up to a few times. The black staircase is the front: only
# those options are worth considering for this matrix (the allocator of notebook 2 throws the others away before it
# solves anything). Colour by another field to see which metadata choices the front uses:

# %%
nf3 = frame[frame["bits"] == 3]
plots.options_figure(nf3, color="block_size", title="NF3 options only, coloured by block size B0").show()
front[["name", "bits_per_weight", "error"]]

# %% [markdown]
# **Notice:** within NF3, smaller blocks (B0 = 16) sit lower (less error) and further right (more scale bits); the
# front alternates between block sizes and scale codings rather than using one of them everywhere, so a mixed choice
# per matrix pays off even before any matrix is compared with another.
#
# ## 5. The same NF4 codes as bitsandbytes
#
# bitsandbytes' 4-bit quantization (`quantize_4bit`, quant_type "nf4") is single-level NF4 with float32 absmax per
# block. Our `quantize_blockwise` with b = 4 must produce the very same packed bytes (two codes per byte, high nibble
# first) and the same absmax. (On CPU, bitsandbytes' *de*quantization is wrong for blocks ≥ 128; 64 is fine.)

# %%
import bitsandbytes.functional as F

bnb_packed, state = F.quantize_4bit(W, blocksize=64, quant_type="nf4")
ours_packed, ours_absmax = quantize_blockwise(W, 4, 64)
print("packed codes identical:", torch.equal(ours_packed, bnb_packed.reshape(-1)))
print("absmax identical:      ", torch.equal(ours_absmax, state.absmax))
print("dequantized identical: ", torch.equal(dequantize_blockwise(ours_packed, ours_absmax, 4, 64, tuple(W.shape)),
                                             F.dequantize_4bit(bnb_packed, state)))

# %% [markdown]
# ## What you have seen
#
# NF-b spends its codes where the weights are; blockwise absmax scaling makes one codebook fit every block; double
# quantization makes small blocks affordable; and 432 options per matrix span 2.03 to 8.6 bits with a clear front.
# Next, notebook 2 gives each of SmolLM2's 210 matrices its own option under one average-bit budget.
#
# ## Try this
#
# You may spend at most `BUDGET` bits per weight (3.2 by default) on this matrix. Which option gives the least error?
# Guess from the figures above (look at the front near that budget), write its name (like `nf3·dq8-fp32·32x256`)
# into `my_answer`, and run the cell. Then change `MATRIX` to an MLP projection and see whether the answer changes.

# %%
my_answer = None  # your guess, e.g. "nf3·dq8-fp32·32x256"

best = frame[frame["bits_per_weight"] <= BUDGET].nsmallest(1, "error").iloc[0]
if my_answer is None:
    print(f"Write your guess into my_answer and run this cell again ({len(frame[frame['bits_per_weight'] <= BUDGET])}"
          f" options fit within {BUDGET} bits).")
elif my_answer == best["name"]:
    print(f"Right: {best['name']} ({best['bits_per_weight']:.4f} bits, error {best['error']:.4g}); on the front: "
          f"{bool(best['on_front'])}.")
else:
    mine = frame[frame["name"] == my_answer]
    detail = (f"yours has error {mine['error'].iloc[0]:.4g} at {mine['bits_per_weight'].iloc[0]:.4f} bits"
              if len(mine) else "that is not an option name (see frame['name'])")
    print(f"Not quite: {detail}; the best within {BUDGET} bits is {best['name']} (error {best['error']:.4g}).")
