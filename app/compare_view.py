"""Compare: one CoA-LoRA adapter against a LoRA trained for each configuration and Shared-LoRA, over seeds — read from
a comparison's result files (`python -m coa_lora compare`), the shipped ones or those in ./runs."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st
from common import ROOT, RUNS_DIR

from coa_lora import plots
from coa_lora.compare import (WITHIN_TRAINED, find_comparisons, read_reference, read_results, read_why,
                              results_markdown)

SHIPPED_DIR = Path(os.environ.get("COA_LORA_COMPARE", ROOT / "data" / "compare"))
METRICS = {"Held-out perplexity": "perplexity", "KL from the unquantized model": "kl",
           "Top-1 agreement": "top1"}


def render() -> None:
    st.header("Compare: one adapter for every budget, against one per budget")
    folders = find_comparisons([SHIPPED_DIR, RUNS_DIR])
    if not folders:
        st.info("No comparison results yet. Run `python -m coa_lora compare --quick --out runs/compare-quick` (the "
                "tiny model, about a minute) or `python -m coa_lora compare --out runs/compare` (SmolLM2).")
        return
    labels = {f"{p.name}  ·  {'shipped' if p.parent == SHIPPED_DIR else p.parent.name}": p for p in folders}
    folder = labels[st.selectbox("Comparison", list(labels), key="comparison")]
    try:
        _, _, summary = read_results(folder)
        why = read_why(folder)
    except ValueError as exc:
        st.error(str(exc))
        return
    try:
        reference = read_reference(folder, summary["plan"])
    except ValueError as exc:  # the comparison itself is fine: show it without its reference
        st.warning(str(exc))
        reference = None
    plan = summary["plan"]
    st.caption(f"{plan['model']}, {plan['steps']} steps per adapter, rank {plan['rank']}, seeds {plan['seeds']}; "
               f"measured {summary['actual_seconds'] / 60:.0f} min against {summary['estimate_seconds'] / 60:.0f} "
               f"min estimated on {summary['date']}"
               + ("" if summary.get("finished") else " — not finished: the seeds done so far") + ".")
    cells = pd.DataFrame(summary["cells"])
    tasks = {f"{t}: accuracy": f"{t}.acc" for t in plan["tasks"]}
    choice = st.radio("Quality", list(METRICS) + list(tasks), horizontal=True, key="compare_metric")
    metric = {**METRICS, **tasks}[choice]
    left, right = st.columns([3, 2], gap="large")
    with left:
        earlier = pd.DataFrame(reference.summary["cells"]) if reference is not None else None
        st.plotly_chart(plots.compare_quality_figure(cells, metric, plan["budgets"], reference=earlier,
                                                     reference_label=reference.label if reference else "reference"),
                        key="compare_quality")
        st.caption("Lines: mean over seeds; bands: ± one standard deviation. Filled circles: budgets the "
                   "per-configuration adapters were trained for; open diamonds: budgets no method trained on (there "
                   "a per-configuration LoRA uses the adapter trained nearest, as a user without CoA-LoRA would).")
        gaps = pd.DataFrame(summary["gaps"])
        if not gaps.empty and metric in set(gaps["metric"]):
            earlier_gaps = pd.DataFrame(reference.summary["gaps"]) if reference is not None else None
            st.plotly_chart(plots.compare_gap_figure(gaps, metric, within=WITHIN_TRAINED, reference=earlier_gaps,
                                                     reference_label=reference.label if reference else "reference"),
                            key="compare_gap")
            st.caption("The same numbers as differences: 100·ln(method / per-configuration LoRA), paired by seed, "
                       "mean ± sd. Grey band: within 2 %, the target at trained budgets; below 0 the method is "
                       "better where lower is better (perplexity, KL), worse where higher is better (agreement).")
    with right:
        st.plotly_chart(plots.compare_time_figure(pd.DataFrame(summary["methods"])), key="compare_time")
        ratio = summary.get("time_ratio")
        if ratio is not None:
            st.metric("CoA-LoRA time / per-configuration runs", f"{ratio['mean']:.2f} x",
                      help=f"Per seed, mean over {ratio['n']} seed(s); the target is ≤ 0.35 x.")
    if reference is not None:
        st.caption(f"Dashed lines and faded crosses: the earlier comparison at {reference.label} "
                   f"({reference.folder.name}), kept for "
                   "reference.")
    verdict = why.get("verdict") or (reference.why.get("verdict") if reference is not None else None)
    if verdict is not None:
        _why(verdict, None if "verdict" in why else reference.label)
    with st.expander("The report (docs/RESULTS.md is this, generated from the same files)"):
        st.markdown(results_markdown(summary, why, reference))


def _why(verdict: dict, of: str | None) -> None:
    """#37's answer: how much of CoA-LoRA's gap each measured factor explains (bench/why.py's verdict); ``of``: the
    earlier comparison it was measured on, if not this one."""
    st.subheader("Why CoA-LoRA trails a LoRA per configuration" + (f" (measured at {of})" if of else ""))
    which = st.radio("Gap in", ["held-out perplexity", "KL from the unquantized model"], horizontal=True,
                     key="why_metric")
    metric = "ppl" if which == "held-out perplexity" else "KL"
    st.plotly_chart(plots.why_gap_figure(verdict["measured"], metric), key="why_gap")
    st.caption(verdict["finding"])


render()
