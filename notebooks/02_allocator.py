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
# # 2 · The configuration space and the budget allocator
#
# Notebook 1 quantized one matrix. A model has many: SmolLM2-135M has 30 blocks × 7 linear layers = 210 target
# matrices, each with 432 options, so 432²¹⁰ configurations. Users do not want to pick one; they have a memory
# budget ("3 bits per weight on average") and want the best configuration that fits. That is a multiple-choice
# knapsack: one option per matrix, least total damage, average bits within the budget. `coa_lora` solves it exactly
# with HiGHS' mixed-integer solver over a *damage table* (the error of every option on every matrix).
#
# You will see: which layers and modules are sensitive (plain squared error against the Fisher-weighted damage the
# allocator uses); what the allocator chooses at 2.5, 3 and 4 bits and why; and what that buys in held-out perplexity
# against uniform configurations of the same size.
#
# **Run time** with the defaults: about 60 s on 2 CPU cores (loading the model, compiling the quantizer once, and six
# short perplexity measurements).

# %% tags=["parameters"]
# Parameters. Each budget of PPL_BUDGETS adds two configurations to measure (about 10 s); more windows give steadier
# perplexities (each extra window per play adds about 1 s per configuration at 128 tokens). FULL_PLAIN_TABLE computes the unweighted damage table of all 432 options × 210 matrices once (about
# 10 minutes on 2 cores, then cached) and adds its allocations to the comparison.
MODEL = "smollm2"
BUDGETS = (2.5, 3.0, 4.0)  # average bits per weight: what the allocator chooses
PPL_BUDGETS = (3.0, 4.0)  # allocated against uniform in held-out perplexity (2.5: both collapse)
OPTION = "nf3"  # the preset whose damage the sensitivity maps show (nf2, nf3, nf4, nf8, ...)
PPL_WINDOWS = 1  # held-out windows per play (three plays)
PPL_LENGTH = 128  # tokens per window
FULL_PLAIN_TABLE = False
EXERCISE_BUDGET = 3.5

# %%
import os

import pandas as pd

from coa_lora import EvalOptions, Evaluator, PerplexityOptions, Workbench, plots, preset, quantization_error
from coa_lora import Explorer
from coa_lora.quant import OPTION_INDEX

# A handful of SmolLM2 configurations are applied here: compiling the quantizer's kernels (seconds per bit width and
# block size) would cost more than it saves, so they run eagerly (same values, tests/quant/test_kernels.py).
os.environ["COA_LORA_COMPILE"] = "0"
wb = Workbench.load(MODEL)
explorer = Explorer(wb)  # the allocator with the shipped grid of exact answers, as the app uses it
evaluator = Evaluator(wb, EvalOptions(perplexity=PerplexityOptions(length=PPL_LENGTH, stride=PPL_LENGTH)))
layout = wb.layout
matrices = plots.target_frame(layout)
print(f"{layout.model_id}: {len(layout)} target matrices, {layout.total_numel:,} weights to quantize")
matrices.groupby("kind", sort=False).agg(matrices=("target", "size"), weights_each=("numel", "first"))

# %% [markdown]
# ## 1. Which matrices are sensitive?
#
# The plain damage of an option on a matrix is its squared error ‖W − Q(W)‖². It treats every weight alike, but a
# model does not: an error on a weight the loss is sensitive to costs more. The library weights each squared error by
# a diagonal Fisher estimate (the mean squared gradient of the loss with respect to that weight, from 8 × 256 tokens of
# the training plays), and that weighted damage is what the allocator minimises. Both, for every matrix, under one
# uniform option:

# %%
option = preset(OPTION)
plain = [quantization_error(wb.qmodel.original_weight(name), option) for name in layout.names]
fisher_table = wb.damage_table("fisher")  # shipped with the package: no Fisher pass needed
fisher = fisher_table.values[:, OPTION_INDEX[option]]
matrices = plots.target_frame(layout, plain=plain, fisher=fisher)
plots.target_heatmap(matrices, "plain", f"Plain squared error under {option.name} (log colour)", log=True).show()

# %% [markdown]
# **Notice:** the plain error follows the matrix size first (the MLP projections have 2.7× the weights of q and o,
# 8× those of k and v) and the size of the weights second; it says little about what the model needs.

# %%
plots.target_heatmap(matrices, "fisher", f"Fisher-weighted damage under {option.name} (log colour)", log=True).show()
by_kind = matrices.groupby("kind", sort=False)[["plain", "fisher"]].sum()
(by_kind / by_kind.sum()).rename(columns=lambda c: f"share of {c}").style.format("{:.1%}")

# %% [markdown]
# **Notice:** weighted by the Fisher, the damage varies by orders of magnitude from matrix to matrix and no longer
# follows size: on SmolLM2 the brightest cells are a few down_proj (first and last blocks) and the v_proj of the early
# blocks. The shares by kind show it: v_proj holds a few percent of the plain error but about a fifth of the
# weighted damage.
#
# ## 2. What the allocator chooses
#
# For each budget the allocator returns the least-damage configuration within it (instant here: the package ships
# its exact answers on a 0.05-bit grid, and any answer that fits a smaller budget is optimal there too).

# %%
allocations = {budget: explorer.allocate(budget) for budget in BUDGETS}
bits = {f"bits at {budget:g}": a.config.bits_per_matrix().tolist() for budget, a in allocations.items()}
chosen = plots.target_frame(layout, **bits)
chosen.groupby("kind", sort=False)[list(bits)].mean().style.format("{:.2f}").set_caption(
    "average bits per weight by module kind")

# %%
middle = allocations[sorted(BUDGETS)[len(BUDGETS) // 2]]
plots.bits_heatmap(middle.config, f"Bits per weight chosen at {middle.budget:g} bits "
                                  f"({middle.avg_bits:.3f} used)").show()

# %% [markdown]
# **Notice:** the allocation is far from uniform: some matrices keep 4 bits or more while others drop to 2, and the
# pattern follows the Fisher map above, not the plain one (on SmolLM2, v_proj gets the most bits at every budget). Why those? The allocator buys bits
# where they remove the most weighted damage per bit. The next figure puts each matrix's damage at the option below
# against the bits it was given:

# %%
chosen["fisher damage"] = matrices["fisher"]
column = f"bits at {middle.budget:g}"
plots.target_scatter(chosen, "fisher damage", column, title=f"Sensitivity ({option.name} damage) against the bits "
                     f"chosen at {middle.budget:g} bits", log_x=True).show()

# %% [markdown]
# **Notice:** the more a matrix's Fisher-weighted damage, the more bits it gets: the cloud rises to the right. The
# exceptions are matrices whose damage falls little with one more bit (the trade-off is per bit, not per damage).
#
# ## 3. Does it pay? Allocated against uniform, in held-out perplexity
#
# A user without an allocator would give every matrix one option: the best uniform configuration that fits the same
# budget (`Explorer.uniform_counterpart`). Held-out perplexity on the three held-out plays (a short measurement:
# `PPL_WINDOWS` window(s) of `PPL_LENGTH` tokens per play) settles it.

# %% tags=["key-figure"]
allocated = {b: explorer.allocate(b).config for b in PPL_BUDGETS}
columns = {"allocator (Fisher-weighted)": allocated,
           "uniform (best single option that fits)": {b: explorer.uniform_counterpart(c) for b, c in allocated.items()}}
if FULL_PLAIN_TABLE:
    plain_allocator = wb.allocator("none")  # computes the unweighted table once (about 10 minutes), then cached
    columns["allocator (plain squared error)"] = {b: plain_allocator.allocate(b).config for b in PPL_BUDGETS}
frames = []
for name, configs in columns.items():
    for budget, config in configs.items():
        result = evaluator.run("ppl", config, limit=PPL_WINDOWS)
        frames.append(plots.results_frame({name: {"ppl": result}}).assign(avg_bits=config.avg_bits, budget=budget))
reference = evaluator.run("ppl", None, limit=PPL_WINDOWS)  # the unquantized reference (see the README)
results = pd.concat(frames, ignore_index=True)
plots.budget_figure(results, "perplexity", title="Held-out perplexity: allocated against uniform",
                    references={"unquantized reference": reference.perplexity}).show()
results.pivot(index="budget", columns="column", values="value").style.format("{:,.1f}")

# %% [markdown]
# **Notice:** at 3 bits the uniform configuration collapses (every NF3 option costs more than 3 bits with its scales,
# so the best uniform one that fits is NF2 everywhere), while the allocated one stays usable; at 4 bits the gap is
# smaller but still clear (uniform means NF3 with small blocks there). The allocated configuration is what makes 3 bits usable at all; the
# adapter (notebook 3) and the search (notebook 4) then work on what is left. With one short window per play the
# numbers are noisy: raise `PPL_WINDOWS` for steadier ones.
#
# ## Try this
#
# At `EXERCISE_BUDGET` (3.5 bits by default), which module kind (q_proj, k_proj, …, down_proj) gets the most bits
# per weight on average? Look at the heat map and the table above and guess, then run the cell.

# %%
my_answer = None  # a module kind, e.g. "q_proj"

exercise = plots.target_frame(layout, bits=explorer.allocate(EXERCISE_BUDGET).config.bits_per_matrix().tolist())
means = exercise.groupby("kind")["bits"].mean().sort_values(ascending=False)
if my_answer is None:
    print("Write your guess into my_answer and run this cell again.")
else:
    verdict = "Right" if my_answer == means.index[0] else f"Not quite: it is {means.index[0]}"
    print(f"{verdict}. Average bits by kind at {EXERCISE_BUDGET} bits:\n{means.round(3).to_string()}")
