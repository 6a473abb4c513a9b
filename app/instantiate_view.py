"""Instantiate: a bit budget becomes a configuration (from the allocator or the run's searched set) on the model."""
from __future__ import annotations

import time

import streamlit as st
from common import BUDGET_STEP, budget_bounds, current_run, explorer

from coa_lora import ModelConfig, plots

SOURCES = {"allocator": "Allocator (exact MILP)", "searched": "Run's searched set", "picked": "Picked point"}


def render() -> None:
    st.header("Instantiate: a bit budget becomes a configuration")
    st.caption("Move the budget: the allocator's least-damage configuration (or the best configuration of the run's "
               "searched training set within the budget) is put on the model. Its per-matrix bits, its size and "
               "how it spends bits against a uniform configuration of the same size are drawn below.")
    st.fragment(_panel)()


def _sources(view) -> list[str]:
    out = ["allocator"]
    if view is not None and view.has_search:
        out.append("searched")
    picked = st.session_state.get("picked")
    if picked and view is not None and picked.get("run") == str(view.folder):
        out.append("picked")
    return out


def _panel() -> None:
    ex = explorer()
    view = current_run()
    first, last = budget_bounds(ex)
    st.session_state.setdefault("budget", 3.0)
    source = st.radio("Configuration from", _sources(view), key="source", horizontal=True,
                      format_func=SOURCES.get)
    budget = st.slider("Bit budget (average bits per weight over the target matrices)", min_value=first,
                       max_value=last, step=BUDGET_STEP, key="budget",
                       disabled=source == "picked")
    t0 = time.perf_counter()
    try:
        config, origin = _configuration(ex, view, source, budget)
    except ValueError as exc:
        st.warning(str(exc))
        return
    seconds_config = time.perf_counter() - t0
    st.session_state["config"] = config
    st.session_state["config_label"] = f"{config.avg_bits:.3f} bits ({origin})"

    mib = 2**20
    full = ex.layout.full_size_bytes
    uniform = ex.uniform_counterpart(config)
    u_opt = uniform.options[0]
    cols = st.columns(5)
    cols[0].metric("Average bits", f"{config.avg_bits:.3f}", help="Σ numel·bits / Σ numel over the target matrices")
    cols[1].metric("Model size", f"{config.size_bytes / mib:.1f} MiB",
                   f"{config.size_bytes / full - 1:+.0%} vs {full / mib:.0f} MiB unquantized", delta_color="inverse")
    cols[2].metric("Damage vs uniform", f"{ex.damage(config) / max(ex.damage(uniform), 1e-300):.2f}×",
                   help=f"Weighted quantization damage Σ‖W − Q(W)‖² against the uniform configuration of nearest "
                        f"size ({_option_name(u_opt)}, {u_opt.bits_per_weight:.3f} bits)")
    cols[3].metric("Configuration in", f"{seconds_config * 1000:.0f} ms", help="Allocation (grid or live MILP) "
                   "or look-up in the run's searched set")
    st.caption(f"Source: {origin}. Uniform configuration of nearest size: {_option_name(u_opt)} "
               f"({u_opt.bits_per_weight:.3f} bits, {uniform.size_bytes / mib:.1f} MiB). Run-time weights of the "
               f"deployed configuration: {config.size_bytes / mib:.1f} MiB kept packed "
               f"(`load_packed(folder, weights='packed')`: the packed bytes plus what stays unquantized, as on disk) "
               f"against {full / mib:.0f} MiB when dequantized to float; activations come on top of either.")
    left, right = st.columns(2)
    # The heat maps need only the configuration: they are drawn before the weights are swapped.
    left.plotly_chart(plots.bits_heatmap(config), key="heat")
    right.plotly_chart(plots.bits_difference_heatmap(config, uniform, _option_name(u_opt)), key="diff")
    inst = ex.instantiate(config, timeout=1.0)
    queued = f"queued ({max(ex.queue_length, 1)} ahead)"
    cols[4].metric("Instantiated in", queued if inst is None else f"{inst.seconds * 1000:.0f} ms",
                   help="Swapping the quantized weights into the model (cold: quantizing each changed matrix; warm: "
                        "from the weight cache). The explorer has one model for every session, used by one job at a "
                        "time in arrival order: 'queued' means other sessions' evaluations or instantiations hold or "
                        "wait for it; an evaluation applies this configuration itself when its turn comes.")


def _option_name(o) -> str:
    return f"uniform NF{o.bits}/B0={o.block_size}"


def _configuration(ex, view, source: str, budget: float) -> tuple[ModelConfig, str]:
    if source == "searched":
        config, f1 = ex.searched_configuration(view, budget)
        return config, f"{view.name}'s searched set, probe loss {f1:.4f}"
    if source == "picked":
        picked = st.session_state["picked"]
        row = view.pool[view.pool["id"] == picked["id"]].iloc[0]
        return ModelConfig.from_option_indices(ex.layout, row["options"]), f"picked configuration {picked['id']}"
    alloc = ex.allocate(budget)
    return alloc.config, f"allocator at {budget:.2f} bits"


render()
