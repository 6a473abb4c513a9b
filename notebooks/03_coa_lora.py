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
# # 3 · Configuration-aware LoRA: one adapter for every configuration
#
# Quantization damages the model; a LoRA adapter fine-tuned on top of the quantized model repairs some of it. But the
# damage differs per configuration, so QLoRA-style training needs one adapter per configuration. CoA-LoRA trains ONE
# adapter plus a small network U_θ that turns a configuration into a per-matrix correction. For target matrix i with
# LoRA factors A_i (r × in), B_i (out × r) and scaling s = lora_alpha / r:
#
# $$y = x\,\tilde W_i^\top + s \cdot B_i\,(I_r + U_\theta(q_i))\,A_i\,x$$
#
# W̃_i is the dequantized weight under the current configuration, and q_i describes matrix i's option. U_θ is one
# network shared by all matrices; its last layer starts at zero, so at step 0 the adapter is a plain LoRA.
#
# You will: train a CoA-LoRA adapter for a few steps on the tiny test model (and see the command that trains the real
# one); look at what U_θ sees and what it changes on the shipped SmolLM2 reference run (I + U against U = 0, across
# budgets); and fold U into a standard peft adapter that peft loads back.
#
# **Run time** with the defaults: about 80 s on 2 CPU cores (a 12-step tiny training run and six short perplexity
# measurements on SmolLM2).

# %% tags=["parameters"]
# Parameters. TINY_STEPS costs about 1 s a step; more PPL_WINDOWS steady the perplexities (about 1 s each per
# configuration and column at 128 tokens); each budget adds three measurements.
TINY_STEPS = 12
TINY_BUDGETS = (2.5, 3.0, 4.0, 6.0)  # the tiny run's initial configuration set (allocator budgets)
RUN = "data/reference/coa_search"  # a CoA-LoRA run of SmolLM2, relative to the repository root
BUDGETS = (3.0, 4.0)  # where I + U and U = 0 are compared
PPL_WINDOWS = 1  # held-out windows per play (three plays)
PPL_LENGTH = 128  # tokens per window

# %%
import os
import tempfile
from pathlib import Path

import pandas as pd
import torch

from coa_lora import (PerplexityOptions, QuantizedModel, TrainOptions, Workbench, export_peft, heldout_perplexity,
                      load_trained, plots)
from coa_lora.lora import config_features
from coa_lora import Explorer, train
from coa_lora.models import load_model
from coa_lora.search import open_run

# Two SmolLM2 configurations are applied here: compiling the quantizer's kernels (seconds per bit width and block
# size) would cost more than it saves, so they run eagerly (same values, tests/quant/test_kernels.py).
os.environ["COA_LORA_COMPILE"] = "0"
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "data" / "reference").is_dir())
WORK = Path(tempfile.mkdtemp(prefix="coa_tutorial_"))  # the tiny run and the exported adapter go here

# %% [markdown]
# ## 1. A short training run on the tiny model
#
# `coa_lora.lora.trainer.train` is what `python -m coa_lora train` runs. It allocates the initial configuration set (one
# configuration per budget), wraps every target linear layer in a LoRA wrapper, builds U_θ, and at every step draws
# k = 2 configurations of the set and averages the gradients of the same batch under each. The tiny model has
# random weights (a 2-block Llama with SmolLM2's vocabulary), so its loss starts near ln(49,152) ≈ 10.8 and falls
# only a little: watch the mechanics, not the numbers.

# %%
tiny = Workbench.load("tiny")
options = TrainOptions(method="coa", steps=TINY_STEPS, budgets=TINY_BUDGETS, seq_length=32, batch_size=4, lr=5e-3,
                       warmup=2, eval_every=4, probe_windows=4)
result = train(tiny, options, WORK / "tiny_run")
tiny_view = open_run(WORK / "tiny_run")
plots.training_figure(tiny_view.metrics, tiny_view.label).show()

# %% [markdown]
# **Notice:** the training loss (grey) is noisy, since each step sees other windows under other configurations; the
# probe losses, on fixed held-out windows under the lowest-, middle- and highest-bit configurations of the set, fall
# together, each at its own level: one adapter, several configurations.
#
# The real run on SmolLM2 is one command (the reference run in `data/reference/coa_search` was made with it; its
# run.json records the steps, rounds and seed it used, and notebook 4 prints them; the default 60 steps take about
# 15 minutes on 2 CPU cores, and `--search` adds its rounds, see notebook 4):
#
# ```bash
# python -m coa_lora train --model smollm2 --method coa --search --out runs/ref_coa_search
# ```
#
# ## 2. What U_θ sees
#
# For each target matrix U_θ gets seven integers: the ordinals of the option's five fields (b, b0, s, B0, B1), the
# block index and the module kind. Each has a learned embedding; concatenated, they go through LayerNorm → Linear →
# SiLU → Linear to r × r numbers. All matrices of a configuration are one batched call, made once per configuration
# switch, not per forward pass.

# %%
config = result.configs[0]
features = config_features(config, result.coa.kinds)
pd.DataFrame(features.numpy(), columns=["b", "b0", "s", "B0", "B1", "block", "kind"],
             index=[t.name for t in config.layout.targets]).head(7)

# %% [markdown]
# ## 3. What U_θ changes: the SmolLM2 reference run
#
# The shipped reference run trained the adapter and U_θ on SmolLM2 (for the steps its run.json records). Load it,
# and for configurations at a few budgets compare held-out perplexity three ways: the quantized base alone, the
# adapter with U = 0 (a plain shared LoRA made of the same A and B), and the adapter with its configuration-aware
# I + U.

# %%
wb = Workbench.load("smollm2")
explorer = Explorer(wb)
coa, run_options, run_configs = load_trained(wb, ROOT / RUN)  # wraps wb's model; eval mode
ppl = PerplexityOptions(length=PPL_LENGTH, stride=PPL_LENGTH)


def perplexity() -> float:
    return heldout_perplexity(wb.model, wb.tokenizer, ppl, limit=PPL_WINDOWS).perplexity


rows, corrections = [], {}
with torch.no_grad():
    for budget in BUDGETS:
        config = explorer.allocate(budget).config
        coa.set_config(config)  # quantized weights of this configuration, and U for every matrix
        corrections[budget] = [w.correction.clone() for w in coa.wrappers.values()]
        with coa.adapters_disabled():
            rows.append(("quantized base (no adapter)", budget, config.avg_bits, perplexity()))
        rows.append(("adapter, I + U (CoA-LoRA)", budget, config.avg_bits, perplexity()))
        for wrapper in coa.wrappers.values():
            wrapper.correction = None  # U = 0: the same A and B as a plain LoRA
        rows.append(("adapter, U = 0", budget, config.avg_bits, perplexity()))
results = pd.DataFrame(rows, columns=["column", "budget", "avg_bits", "value"]).assign(metric="perplexity",
                                                                                       task="ppl", stderr=None)
plots.budget_figure(results, "perplexity", title="Held-out perplexity of the reference run: what U adds").show()
results.pivot(index="budget", columns="column", values="value").style.format("{:.2f}")

# %% [markdown]
# **Notice:** the adapter lowers perplexity well below the quantized base at every budget. The two adapter lines
# show what the configuration-aware correction adds on top of the shared A and B: on an earlier 24-step reference
# run the two were within a few percent of each other (U = 0 slightly ahead), so most of the gain came from A and B;
# how far apart are they on this run? One short window per play is noisy, so raise `PPL_WINDOWS` before concluding
# (`bench/config_dependence.py` measures the same with longer windows). Where does U act? The size of each matrix's
# correction at the first budget:

# %% tags=["key-figure"]
first = BUDGETS[0]
norms = plots.target_frame(wb.layout, u_norm=[float(torch.linalg.matrix_norm(u)) for u in corrections[first]])
plots.target_heatmap(norms, "u_norm", f"‖U‖ (Frobenius) of each matrix at {first:g} bits, reference run").show()

# %% [markdown]
# **Notice:** the corrections are not small next to I (‖I‖ = √r ≈ 2.8 for the reference run's r = 8; new runs
# default to r = 64 since #37) and they differ from matrix to matrix: U_θ does reshape the adapter per matrix and
# option. Whether that reshaping helps is what the perplexity comparison above measures.
#
# ## 4. Fold U into a standard peft adapter and load it back with peft
#
# For a fixed configuration, B(I + U) is just another matrix, so the adapter folds into a plain LoRA (B' = B(I + U))
# that peft can load, with no run-time cost. `export_peft` writes it; peft's `PeftModel` loads it onto a separately
# quantized copy of the base model, and its logits must match ours. (Done on the tiny run to keep it quick; the
# same call on the reference run is `coa_lora export --run ... --adapter-only`.)

# %%
from peft import PeftModel

tiny_config = result.configs[-1]
folder = export_peft(result.coa, WORK / "peft_adapter", tiny_config)
print(sorted(p.name for p in folder.iterdir()))

base = load_model("tiny")  # a fresh copy of the same base weights
QuantizedModel.from_model(base, "tiny").apply_(tiny_config)  # quantized to the same configuration
peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
ids = tiny.tokenizer("Now is the winter of our discontent", return_tensors="pt").input_ids
with torch.no_grad():
    result.coa.train(False)
    result.coa.set_config(tiny_config)
    ours, theirs = result.coa.model(input_ids=ids).logits, peft_model(input_ids=ids).logits
    with result.coa.adapters_disabled():
        bare = result.coa.model(input_ids=ids).logits
print(f"largest logit difference, peft vs CoA-LoRA: {(ours - theirs).abs().max():.2e} "
      f"(the adapter itself moves them by {(ours - bare).abs().max():.2e})")

# %% [markdown]
# ## Try this
#
# At which of the `BUDGETS` does the configuration-aware correction help most (or hurt least), measured as the
# perplexity with U = 0 divided by the perplexity with I + U? Guess from the figure, then run the cell. Then add 2.5 to `BUDGETS`, rerun
# the notebook, and see whether the lowest budget changes the answer.

# %%
my_answer = None  # one of BUDGETS, e.g. 4.0

table = results.pivot(index="budget", columns="column", values="value")
gain = table["adapter, U = 0"] / table["adapter, I + U (CoA-LoRA)"]
if my_answer is None:
    print("Write your guess into my_answer and run this cell again.")
else:
    verdict = "Right" if my_answer == gain.idxmax() else f"Not quite: it is {gain.idxmax():g} bits"
    print(f"{verdict}. Perplexity ratio U = 0 / I + U by budget:\n{gain.round(4).to_string()}")
