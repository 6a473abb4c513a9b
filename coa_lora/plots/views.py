"""Figures shared by the explorer and the tutorial notebooks: plotly figures built from the library's own frames.

Every function takes frames or objects the library computed (a :class:`~coa_lora.search.run_view.RunView`'s tables, a
:class:`~coa_lora.ModelConfig`, evaluation results) and returns a ``plotly.graph_objects.Figure`` (or a frame for a
table); none does tensor math or imports Streamlit, so the app and a notebook show exactly the same thing. The
tutorials' own figures (quantizer, allocator, surrogate) are in :mod:`coa_lora.plots.tutorial`, re-exported here.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import pandas as pd
import plotly.graph_objects as go

from coa_lora.configs.model_config import ModelConfig
from coa_lora.evaluation.perplexity import PerplexityResult
from coa_lora.evaluation.scoring import TaskResult, paired_difference, summarize
from coa_lora.plots.style import BITS_COLORS, blocks_by_kinds, layout_figure
from coa_lora.quant.space import PRESETS

SOURCE_SYMBOLS = {"initial": "circle", "search": "diamond", "random": "square"}
# Presets drawn as reference lines in the (bits, loss) plane: the familiar uniform NF codes.
REFERENCE_PRESETS = ("nf2", "nf3", "nf4")


def preset_bits() -> dict[str, float]:
    """Average bits of the uniform reference presets (every matrix one option, so the option's own bits)."""
    return {name: PRESETS[name].bits_per_weight for name in REFERENCE_PRESETS}


# ----- search --------------------------------------------------------------------------------------------------------
def search_figure(history: pd.DataFrame, edges: Sequence[float] = (), presets: Optional[Mapping[str, float]] = None,
                  round_label: str = "", selected_id: Optional[int] = None,
                  preset_points: Optional[Mapping[str, tuple[float, float]]] = None) -> go.Figure:
    """Every evaluated configuration in the (average bits, probe loss) plane after one round.

    Args:
        history: one round of a run's search history (``RunView.history_at``): ``id, source, avg_bits, f1,
            segment, selected``.
        edges: segment boundaries in bits (drawn as faint vertical lines).
        presets: ``{name: avg_bits}`` of uniform presets, drawn as labelled dashed lines (where no point is given).
        preset_points: ``{name: (avg_bits, probe loss)}`` of uniform presets under the run's adapter, drawn as
            labelled stars among the run's configurations.
        round_label: e.g. ``"round 2 (search)"``.
        selected_id: a configuration to ring (the user's pick).

    Points are coloured by segment; the training set (each segment's front) is drawn large with a dark outline and
    joined per segment; points outside it are small and faded. ``customdata`` carries the configuration id.
    """
    fig = go.Figure()
    h = history.sort_values(["segment", "avg_bits"])
    n_seg = max(int(h["segment"].max()) + 1, 1) if not h.empty else 1
    for chosen, name in ((False, "evaluated, not selected"), (True, "training set (segment fronts)")):
        part = h[h["selected"] == chosen]
        if part.empty:
            continue
        fig.add_trace(go.Scatter(
            x=part["avg_bits"], y=part["f1"], mode="markers", name=name,
            marker=dict(color=part["segment"], colorscale="Turbo", cmin=0, cmax=max(n_seg - 1, 1),
                        size=11 if chosen else 7, opacity=1.0 if chosen else 0.45,
                        symbol=[SOURCE_SYMBOLS.get(s, "circle") for s in part["source"]],
                        line=dict(width=1.5 if chosen else 0, color="#222"),
                        showscale=chosen, colorbar=dict(title="segment", thickness=12)),
            customdata=part[["id", "source", "segment"]].to_numpy(),
            hovertemplate="id %{customdata[0]} (%{customdata[1]})<br>%{x:.3f} bits<br>probe loss %{y:.4f}"
                          "<br>segment %{customdata[2]}<extra></extra>"))
    sel = h[h["selected"]]
    xs, ys = [], []
    for _, seg in sel.groupby("segment"):
        xs += seg["avg_bits"].tolist() + [None]
        ys += seg["f1"].tolist() + [None]
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#222", width=1.5), name="segment front",
                                 hoverinfo="skip", showlegend=False))
    if selected_id is not None and (h["id"] == selected_id).any():
        row = h[h["id"] == selected_id].iloc[0]
        fig.add_trace(go.Scatter(x=[row["avg_bits"]], y=[row["f1"]], mode="markers", name="your pick",
                                 marker=dict(size=20, color="rgba(0,0,0,0)", line=dict(width=3, color="#d62728")),
                                 hoverinfo="skip"))
    for e in edges:
        fig.add_vline(x=e, line=dict(color="#cccccc", width=0.6, dash="dot"), layer="below")
    points = dict(preset_points or {})
    if points:
        names = list(points)
        fig.add_trace(go.Scatter(
            x=[points[n][0] for n in names], y=[points[n][1] for n in names], mode="markers+text",
            name="uniform presets (final adapter)", text=[f"uniform {n}" for n in names], textposition="top center",
            marker=dict(symbol="star", size=15, color="#444", line=dict(width=1, color="white")),
            hovertemplate="%{text}<br>%{x:.3f} bits<br>probe loss %{y:.4f}<extra></extra>"))
    for name, bits in (presets or {}).items():
        if name in points:
            continue
        fig.add_vline(x=bits, line=dict(color="#555", width=1.2, dash="dash"), annotation_text=f"uniform {name}",
                      annotation_position="top", annotation_font_size=11)
    return layout_figure(fig, f"Configurations in the (bits, probe loss) plane{' — ' + round_label if round_label else ''}",
                   "average bits per weight", "probe loss (nats/token)")


def hypervolume_figure(curves: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Hypervolume per round, pool and training set, for one or more runs that share a plane.

    ``curves``: ``{run label: rounds frame}`` (``round, mode, hv_pool, hv_train``)."""
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for i, (label, rounds) in enumerate(curves.items()):
        if rounds.empty:
            continue
        color = palette[i % len(palette)]
        text = [f"{m}" for m in rounds["mode"]]
        fig.add_trace(go.Scatter(x=rounds["round"], y=rounds["hv_train"], mode="lines+markers", name=f"{label}: training set",
                                 line=dict(color=color, width=2.5), text=text,
                                 hovertemplate="round %{x} (%{text})<br>hypervolume %{y:.4f}<extra></extra>"))
        fig.add_trace(go.Scatter(x=rounds["round"], y=rounds["hv_pool"], mode="lines", name=f"{label}: pool",
                                 line=dict(color=color, width=1.2, dash="dot"), text=text,
                                 hovertemplate="round %{x} (%{text})<br>pool hypervolume %{y:.4f}<extra></extra>"))
    fig.update_xaxes(dtick=1)
    return layout_figure(fig, "Hypervolume per round (higher is better)", "round", "hypervolume in the run's plane",
                   height=420)


def training_figure(metrics: pd.DataFrame, label: str = "") -> go.Figure:
    """Training loss per step and, where logged, the held-out probe loss under each probe configuration.

    ``metrics``: a run's metrics frame (``step, loss`` and ``probe_loss@<bits>`` columns)."""
    fig = go.Figure()
    if not metrics.empty:
        fig.add_trace(go.Scatter(x=metrics["step"], y=metrics["loss"], mode="lines", name="training loss",
                                 line=dict(color="#999", width=1.5)))
        for col in sorted(c for c in metrics.columns if c.startswith("probe_loss@")):
            rows = metrics.dropna(subset=[col])
            fig.add_trace(go.Scatter(x=rows["step"], y=rows[col], mode="lines+markers",
                                     name=f"probe loss at {col.split('@')[1]} bits"))
    return layout_figure(fig, f"Training{' — ' + label if label else ''}", "step", "loss (nats/token)", height=420)


# ----- configurations ------------------------------------------------------------------------------------------------
def configuration_frame(config: ModelConfig) -> pd.DataFrame:
    """One row per target matrix: ``target, layer, kind, numel, bits_per_weight`` and the five option fields."""
    rows = [{"target": t.name, "layer": t.layer, "kind": t.kind, "numel": t.numel,
             "bits_per_weight": o.bits_per_weight, "bits": o.bits, "scale_bits": o.scale_bits,
             "scale_dtype": o.scale_dtype, "block_size": o.block_size, "scale_block_size": o.scale_block_size}
            for t, o in zip(config.layout.targets, config.options)]
    return pd.DataFrame(rows)


def bits_heatmap(config: ModelConfig, title: str = "Bits per weight of each matrix") -> go.Figure:
    """Blocks × module kinds, coloured by bits per weight (code bits plus scale overhead); hover names the option."""
    f = configuration_frame(config)
    f["option"] = [f"NF{b}, B0={bs}, b0={sb}, {sd}, B1={sbs}" for b, bs, sb, sd, sbs in
                   zip(f["bits"], f["block_size"], f["scale_bits"], f["scale_dtype"], f["scale_block_size"])]
    z, text = blocks_by_kinds(f, "bits_per_weight"), blocks_by_kinds(f, "option")
    fig = go.Figure(go.Heatmap(z=z.to_numpy(), x=list(z.columns), y=list(z.index), text=text.to_numpy(),
                               colorscale=BITS_COLORS, zmin=2, zmax=8.7, colorbar=dict(title="bits", thickness=12),
                               hovertemplate="block %{y}, %{x}<br>%{z:.3f} bits/weight<br>%{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", dtick=2)
    return layout_figure(fig, title, "module", "block", height=520)


def bits_difference_heatmap(config: ModelConfig, other: ModelConfig, other_name: str) -> go.Figure:
    """``config`` minus ``other`` in bits per weight, per block × module (red: more bits than ``other``)."""
    a, b = configuration_frame(config), configuration_frame(other)
    a["delta"] = a["bits_per_weight"] - b["bits_per_weight"]
    z = blocks_by_kinds(a, "delta")
    lim = max(float(abs(z.to_numpy()).max()), 0.5)
    fig = go.Figure(go.Heatmap(z=z.to_numpy(), x=list(z.columns), y=list(z.index), colorscale="RdBu_r", zmid=0,
                               zmin=-lim, zmax=lim, colorbar=dict(title="Δ bits", thickness=12),
                               hovertemplate="block %{y}, %{x}<br>%{z:+.3f} bits vs " + other_name
                                             + "<extra></extra>"))
    fig.update_yaxes(autorange="reversed", dtick=2)
    return layout_figure(fig, f"Where the bits go, against {other_name}", "module", "block", height=520)


# ----- evaluation ----------------------------------------------------------------------------------------------------
def results_frame(results: Mapping[str, Mapping[str, object]]) -> pd.DataFrame:
    """``{column: {task: result}}`` → one row per (column, task, metric): ``column, task, metric, value, stderr, n``.

    Multiple-choice tasks give ``acc`` and ``acc_norm``; perplexity gives ``perplexity`` (no standard error)."""
    rows = []
    for column, by_task in results.items():
        for task, r in by_task.items():
            if isinstance(r, PerplexityResult):
                rows.append((column, task, "perplexity", r.perplexity, None, r.n_tokens))
            elif isinstance(r, TaskResult):
                rows.append((column, task, "acc", r.acc, r.acc_stderr, r.n))
                rows.append((column, task, "acc_norm", r.acc_norm, r.acc_norm_stderr, r.n))
    return pd.DataFrame(rows, columns=["column", "task", "metric", "value", "stderr", "n"])


def results_bars(frame: pd.DataFrame, metric: str = "acc") -> go.Figure:
    """Grouped bars of one metric per task, one colour per column, with ±1 standard error."""
    part = frame[frame["metric"] == metric]
    fig = go.Figure()
    for column, rows in part.groupby("column", sort=False):
        fig.add_trace(go.Bar(x=rows["task"], y=rows["value"], name=str(column),
                             error_y=dict(type="data", array=rows["stderr"].fillna(0).tolist(), visible=True),
                             hovertemplate="%{x}<br>%{y:.4f}<extra>" + str(column) + "</extra>"))
    if metric.startswith("acc"):
        fig.update_yaxes(range=[0, 1])
    fig.update_layout(barmode="group")
    label = {"acc": "accuracy", "acc_norm": "length-normalised accuracy", "perplexity": "perplexity (lower is better)"}
    return layout_figure(fig, f"{label.get(metric, metric)} (±1 standard error)", "task", metric, height=400)


def differences_frame(results: Mapping[str, Mapping[str, object]], baseline: str) -> pd.DataFrame:
    """Accuracy of every column against ``baseline``, paired by item, per multiple-choice task.

    One row per (task, column): ``task, column, n, difference`` (points of acc), ``stderr`` (points, paired),
    ``separated`` (|difference| >= 2 stderr) and ``items_needed`` (items that would put the observed difference at
    two standard errors at this per-item spread). Results of different lengths (one still running) are compared on
    the items both have: the first ``n`` of the task."""
    rows = []
    for task, base in results.get(baseline, {}).items():
        if not isinstance(base, TaskResult):
            continue
        for column, by_task in results.items():
            other = by_task.get(task)
            if column == baseline or not isinstance(other, TaskResult):
                continue
            n = min(base.n, other.n)
            if n < 2:
                continue
            a, b = (summarize(task, list(r.items[:n])) for r in (base, other))
            try:
                difference, stderr, needed = paired_difference(a, b)
            except ValueError:  # a task file edited between the two results: not the same items
                continue
            rows.append({"task": task, "column": column, "n": n, "difference": 100 * difference,
                         "stderr": 100 * stderr, "separated": difference != 0 and abs(difference) >= 2 * stderr,
                         "items_needed": needed})
    return pd.DataFrame(rows, columns=["task", "column", "n", "difference", "stderr", "separated", "items_needed"])


def flipped_items(a: TaskResult, b: TaskResult, name_a: str = "A", name_b: str = "B") -> pd.DataFrame:
    """The items whose correctness differs between two results of the same task (``acc``'s prediction)."""
    if a.n != b.n:
        raise ValueError(f"The two results cover different items ({a.n} vs {b.n}); evaluate both with one limit.")
    rows = []
    for i, (x, y) in enumerate(zip(a.items, b.items)):
        if x.correct != y.correct:
            rows.append({"item": i, "context": x.context[-160:], "gold": x.choices[x.gold],
                         f"{name_a} answer": x.choices[x.pred], f"{name_b} answer": y.choices[y.pred],
                         "now right in": name_b if y.correct else name_a})
    return pd.DataFrame(rows)


# ----- the method ----------------------------------------------------------------------------------------------------
def method_diagram() -> str:
    """Graphviz DOT of CoA-LoRA: what U_θ sees, the adapter equation, and what the search optimises."""
    return """digraph coa {
  rankdir=LR; node [shape=box, style="rounded,filled", fillcolor="#f3f6fb", fontname="Helvetica", fontsize=15];
  edge [fontname="Helvetica", fontsize=13, color="#555"];
  subgraph cluster_cfg { label="quantization configuration C (one option per matrix)"; style=dashed; color="#999";
    opt [label="option of matrix i\\n(b, b0, s, B0, B1)"]; where [label="block index\\nmodule kind (q, k, v, o, ...)"]; }
  u [label="U_θ: embeddings → LayerNorm →\\nLinear → SiLU → Linear\\n(one small network for all matrices)", fillcolor="#fff4e0"];
  corr [label="r × r correction U_i", fillcolor="#fff4e0"];
  w [label="quantized weight W̃_i = Q_C(W_i)\\n(NF-b code + double-quantized scales)"];
  y [label="y = W̃_i x + s · B_i (I + U_i) A_i x", fillcolor="#e8f5e9"];
  ab [label="LoRA factors A_i, B_i\\n(shared by every configuration)"];
  search [label="Pareto search between epochs:\\nGP of loss → qLogEHVI proposals →\\nsegment-wise fronts = next training set", fillcolor="#f3e5f5"];
  opt -> u; where -> u; u -> corr; corr -> y; ab -> y; w -> y;
  y -> search [label="probe loss f1, bits f2"]; search -> opt [label="which C to train on", style=dashed];
}"""
