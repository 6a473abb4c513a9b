"""About: the method in plain language, with one figure, for teaching."""
from __future__ import annotations

import streamlit as st

from coa_lora import plots
from coa_lora.models import REFERENCE_NOTE


def render() -> None:
    st.header("What CoA-LoRA does")
    st.markdown("""
Phones, laptops and servers have different memory, so one model is deployed at many **bit budgets**. Each budget
has its own **quantization configuration**: for every weight matrix, how many bits per weight (NF2 … NF8) and how
the scales are stored (block size, double quantization). Quantization damages the model, and a LoRA adapter can
repair it — but an adapter trained for one configuration fits only that one, so per-configuration fine-tuning costs
grow with every device.

**CoA-LoRA** (Ye, Tang, Ngai; ICLR 2026) trains **one** adapter for all configurations. A small network **U_θ**
looks at each matrix's quantization option, its block and its kind, and returns an r × r correction U, so the
adapter becomes `B (I + U) A`: configuration-aware, yet for a fixed configuration just another LoRA that folds into
a standard peft adapter. Which configurations to train on is chosen by a **Pareto search**: a Gaussian process
predicts the loss of unseen configurations, expected hypervolume improvement proposes new ones, and in each of U
bit segments the non-dominated configurations become the next training set.
""")
    st.graphviz_chart(plots.method_diagram())
    st.markdown("""
**Where to look in this explorer**
- *Search*: the configurations the run evaluated in the (bits, probe loss) plane, round by round; the hypervolume
  says how much of the plane the front dominates.
- *Instantiate*: pick a budget; the exact allocator (a multiple-choice knapsack solved by HiGHS) or the run's
  searched set gives the configuration; see where the bits go.
- *Evaluate*: zero-shot accuracy (scored exactly as lm-evaluation-harness) and perplexity of that configuration,
  with and without the adapter, against the unquantized reference.
""")
    st.caption(REFERENCE_NOTE)


render()
