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
# # 5 · Evaluate and deploy
#
# A configuration is worth deploying when it scores well at its size. This notebook measures the shipped CoA-LoRA
# reference run across budgets, in held-out perplexity and zero-shot multiple-choice accuracy, against the same
# configurations with the adapter off (the quantized base) and against the uniform NF presets of the same size; shows
# on one item exactly how a multiple-choice answer is scored (the way lm-evaluation-harness scores it, so numbers are
# comparable with published ones); and exports one configuration as a packed, deployable folder that loads back.
#
# **Run time** with the defaults: about 90 s on 2 CPU cores (six short evaluations of a few items and windows each,
# and one export). Raise `ITEMS` and `PPL_WINDOWS` for numbers worth quoting: each evaluation then takes roughly
# 0.6 s per item and 1 s per window.

# %% tags=["parameters"]
# Parameters. The budgets are the sizes of uniform presets, so every column is compared at the same size.
RUN = "data/reference/coa_search"  # relative to the repository root
PRESET_NAMES = ("nf3", "nf4")  # uniform presets; the allocator is asked for the same average bits
TASK = None  # an embedded task name (None: the first of coa_lora.evaluation.tasks.embedded_tasks()) or a JSONL path
ITEMS = 6  # multiple-choice items per evaluation
PPL_WINDOWS = 1  # held-out windows per play (three plays)
PPL_LENGTH = 128  # tokens per window

# %%
import os
import tempfile
from pathlib import Path

import pandas as pd
import torch

from coa_lora import (EvalOptions, Evaluator, ModelConfig, PerplexityOptions, Workbench, load_packed, load_trained,
                      plots, preset, read_summary, save_packed)
from coa_lora import Explorer
from coa_lora.evaluation import encode_pair
from coa_lora.evaluation import embedded_tasks

# Four SmolLM2 configurations are applied here: compiling the quantizer's kernels (seconds per bit width and block
# size) would cost more than it saves, so they run eagerly (same values, tests/quant/test_kernels.py).
os.environ["COA_LORA_COMPILE"] = "0"
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "data" / "reference").is_dir())
WORK = Path(tempfile.mkdtemp(prefix="coa_tutorial_"))
task = TASK or embedded_tasks()[0]

wb = Workbench.load("smollm2")
explorer = Explorer(wb)
coa, _, _ = load_trained(wb, ROOT / RUN)  # the run's adapter, wrapped around wb's model
evaluator = Evaluator(wb, EvalOptions(perplexity=PerplexityOptions(length=PPL_LENGTH, stride=PPL_LENGTH)))
print(f"embedded tasks: {embedded_tasks()}; evaluating {task} ({ITEMS} items) and held-out perplexity")

# %% [markdown]
# ## 1. Across budgets: the run, the quantized base, the uniform presets
#
# At each preset's size: the allocator's configuration with the run's adapter (CoA-LoRA), the same configuration with
# every adapter off (the quantized base), and the uniform preset itself.

# %% tags=["key-figure"]
frames = []
for name in PRESET_NAMES:
    uniform = ModelConfig.uniform(wb.layout, preset(name))
    allocated = explorer.allocate(uniform.avg_bits).config
    columns = {"CoA-LoRA (reference run)": (allocated, coa), "quantized base (allocator)": (allocated, None),
               "uniform preset": (uniform, None)}
    for column, (config, adapter) in columns.items():
        results = {t: evaluator.run(t, config, limit=limit, adapter=adapter)
                   for t, limit in (("ppl", PPL_WINDOWS), (task, ITEMS))}
        frames.append(plots.results_frame({column: results}).assign(avg_bits=config.avg_bits, preset=name))
frame = pd.concat(frames, ignore_index=True)
reference = evaluator.run("ppl", None, limit=PPL_WINDOWS)
plots.budget_figure(frame, "perplexity", title="Held-out perplexity at the presets' sizes",
                    references={"unquantized reference": reference.perplexity}).show()

# %% [markdown]
# **Notice:** the adapter lowers the allocator's perplexity at both sizes, towards the reference. Against the uniform
# preset, the allocator wins clearly at NF3's size; at NF4's the two are close and either may lead in a short
# measurement (the allocator minimises Fisher-weighted squared error, a proxy for the loss, and at 4 bits little is
# left to allocate). (The unquantized
# reference is the GGUF's Q4_1 weights dequantized, not true full precision: see the README.)

# %%
plots.budget_figure(frame, "acc", task=task, title=f"Zero-shot accuracy on {task} ({ITEMS} items, ±1 s.e.)").show()
frame.pivot_table(index=["preset", "column"], columns=["task", "metric"], values="value").style.format("{:.3f}")

# %% [markdown]
# **Notice:** with a handful of items the error bars (±1 standard error) overlap: accuracy needs hundreds of items to
# separate configurations that perplexity already tells apart. Raise `ITEMS` and watch the bars shrink as 1/√n.
#
# ## 2. How one multiple-choice item is scored
#
# lm-evaluation-harness scores a choice by the summed log-probability of `" " + choice` given the context; `acc` takes
# the argmax, `acc_norm` the argmax of log-probability divided by the choice's length in characters. The context is
# encoded together with the continuation and split where the context's own encoding ends. Here is the first item,
# with the log-probabilities the evaluator recorded for the quantized base at the last preset's size:

# %%
base_result = evaluator.run(task, allocated, limit=ITEMS)  # cached: computed above
item = base_result.items[0]
print(item.context[-400:])
rows = []
for k, (context, continuation) in enumerate(evaluator.task(task, ITEMS).items[0].requests()):
    context_ids, continuation_ids = encode_pair(wb.tokenizer, context, continuation)
    rows.append({"choice": repr(continuation), "context tokens": len(context_ids),
                 "continuation tokens": len(continuation_ids), "log-prob": item.logprobs[k],
                 "characters": len(item.choices[k]), "log-prob / characters": item.logprobs[k] / len(item.choices[k]),
                 "gold": k == item.gold, "acc picks": k == item.pred, "acc_norm picks": k == item.pred_norm})
pd.DataFrame(rows)

# %% [markdown]
# The scorer reuses each context's key/value cache across its choices and only forms logits where a continuation
# token is predicted. Check one number the slow, obvious way: one forward pass over context + continuation, log-softmax
# at every position, and the sum over the continuation's tokens.

# %%
context, continuation = evaluator.task(task, ITEMS).items[0].requests()[item.gold]
context_ids, continuation_ids = encode_pair(wb.tokenizer, context, continuation)
ids = torch.tensor([list(context_ids) + list(continuation_ids)])
with torch.no_grad(), coa.adapters_disabled():
    wb.qmodel.apply_(allocated)
    logprobs = torch.log_softmax(wb.model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    by_hand = logprobs[torch.arange(len(context_ids) - 1, ids.shape[1] - 1), torch.tensor(continuation_ids)].sum()
print(f"gold choice: evaluator {item.logprobs[item.gold]:.5f}, by hand {float(by_hand):.5f} (batched, padded float32 "
      f"sums round differently in the last digits)")

# %% [markdown]
# ## 3. Export one configuration and load it back
#
# `save_packed` writes a self-contained folder: bit-packed NF codes and double-quantized scales of every target
# matrix, the unquantized parameters, the configuration, the tokenizer and, with an adapter, U folded into a standard
# peft adapter for that configuration. `load_packed` rebuilds the model from it (peft-wrapped when an adapter is
# inside); its logits equal the in-memory quantized model's.

# %%
summary = save_packed(wb, allocated, WORK / "export", adapter=coa)
print(summary.describe())
print(sorted(p.name for p in (WORK / "export").iterdir()))

loaded = load_packed(WORK / "export")
text = wb.tokenizer("Full fathom five thy father lies;", return_tensors="pt").input_ids
with torch.no_grad():
    coa.set_config(allocated)
    coa.train(False)
    difference = (loaded(input_ids=text).logits - wb.model(input_ids=text).logits).abs().max()
print(f"largest logit difference, loaded folder vs in-memory: {float(difference):.2e}")

# %% [markdown]
# **Notice:** the weights on disk are about 30 % of the unquantized model (the float32 embedding is most of what is
# left), and the target matrices take exactly bits × weights / 8 bytes plus a few hundred bytes of padding.
#
# ## Try this
#
# Export the other preset size instead. Before you do, predict the size on disk of its `quantized.safetensors` in MiB
# from the configuration alone (`config.avg_bits`, `wb.layout.total_numel`), then run the cell: it exports and
# compares.

# %%
my_answer = None  # MiB, e.g. 50.0

other = explorer.allocate(ModelConfig.uniform(wb.layout, preset(PRESET_NAMES[0])).avg_bits).config
if my_answer is None:
    print(f"Write your prediction into my_answer and run this cell again ({other.avg_bits:.3f} average bits over "
          f"{wb.layout.total_numel:,} weights).")
else:
    exported = save_packed(wb, other, WORK / "exercise", overwrite=True)
    actual = exported.quantized_file_bytes / 1024**2
    print(f"quantized.safetensors: {actual:.2f} MiB (you said {my_answer}); bits x weights / 8 = "
          f"{exported.ideal_target_bytes / 1024**2:.2f} MiB.")
