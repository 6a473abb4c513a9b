"""Figures shared by the explorer and the tutorial notebooks: plotly figures built from the library's own frames.

Every function takes frames or objects the library computed (a :class:`~coa_lora.run_view.RunView`'s tables, a
:class:`~coa_lora.ModelConfig`, evaluation results) and returns a ``plotly.graph_objects.Figure`` (or a frame for a
table); none does tensor math or imports Streamlit, so the app and a notebook show exactly the same thing.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Optional

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .config import ModelConfig, ModelLayout
from .evaluate import TaskResult
from .pareto import non_dominated
from .perplexity import PerplexityResult
from .space import ALL_OPTIONS, PRESETS, QuantOption

FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)
SOURCE_SYMBOLS = {"initial": "circle", "search": "diamond", "random": "square"}
# Viridis with its stops moved to 2, 3, 4, 5 and 8.7 bits: a fixed scale (comparable across budgets) that still tells
# the 2-, 3- and 4-bit matrices apart, where almost every configuration worth looking at lives.
BITS_COLORS = [[0.0, "#440154"], [1 / 6.7, "#3b528b"], [2 / 6.7, "#21918c"], [3 / 6.7, "#5ec962"], [1.0, "#fde725"]]
# Presets drawn as reference lines in the (bits, loss) plane: the familiar uniform NF codes.
REFERENCE_PRESETS = ("nf2", "nf3", "nf4")
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
OPTION_FIELDS = ("bits", "scale_bits", "scale_dtype", "block_size", "scale_block_size")
FIELD_LABELS = {"bits": "NF bits b", "scale_bits": "scale bits b0", "scale_dtype": "scale dtype s",
                "block_size": "block size B0", "scale_block_size": "scale block size B1"}


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 460) -> go.Figure:
    # The legend sits under the plot: above it, it collides with the title and with annotations of vertical lines.
    fig.update_layout(title=dict(text=title, x=0.01), xaxis_title=x, yaxis_title=y, font=FONT, height=height,
                      template="plotly_white", margin=dict(l=60, r=20, t=70, b=50),
                      legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0.0))
    return fig


def preset_bits() -> dict[str, float]:
    """Average bits of the uniform reference presets (every matrix one option, so the option's own bits)."""
    return {name: PRESETS[name].bits_per_weight for name in REFERENCE_PRESETS}


# ----- search --------------------------------------------------------------------------------------------------------
def search_figure(history: pd.DataFrame, edges: Sequence[float] = (), presets: Optional[Mapping[str, float]] = None,
                  round_label: str = "", selected_id: Optional[int] = None) -> go.Figure:
    """Every evaluated configuration in the (average bits, probe loss) plane after one round.

    Args:
        history: one round of a run's search history (``RunView.history_at``): ``id, source, avg_bits, f1,
            segment, selected``.
        edges: segment boundaries in bits (drawn as faint vertical lines).
        presets: ``{name: avg_bits}`` of uniform presets, drawn as labelled dashed lines.
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
    for name, bits in (presets or {}).items():
        fig.add_vline(x=bits, line=dict(color="#555", width=1.2, dash="dash"), annotation_text=f"uniform {name}",
                      annotation_position="top", annotation_font_size=11)
    return _layout(fig, f"Configurations in the (bits, probe loss) plane{' — ' + round_label if round_label else ''}",
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
    return _layout(fig, "Hypervolume per round (higher is better)", "round", "hypervolume in the run's plane",
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
    return _layout(fig, f"Training{' — ' + label if label else ''}", "step", "loss (nats/token)", height=420)


# ----- configurations ------------------------------------------------------------------------------------------------
def configuration_frame(config: ModelConfig) -> pd.DataFrame:
    """One row per target matrix: ``target, layer, kind, numel, bits_per_weight`` and the five option fields."""
    rows = [{"target": t.name, "layer": t.layer, "kind": t.kind, "numel": t.numel,
             "bits_per_weight": o.bits_per_weight, "bits": o.bits, "scale_bits": o.scale_bits,
             "scale_dtype": o.scale_dtype, "block_size": o.block_size, "scale_block_size": o.scale_block_size}
            for t, o in zip(config.layout.targets, config.options)]
    return pd.DataFrame(rows)


def _grid(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    kinds = list(dict.fromkeys(frame["kind"]))
    return frame.pivot(index="layer", columns="kind", values=value)[kinds]


def bits_heatmap(config: ModelConfig, title: str = "Bits per weight of each matrix") -> go.Figure:
    """Blocks × module kinds, coloured by bits per weight (code bits plus scale overhead); hover names the option."""
    f = configuration_frame(config)
    f["option"] = [f"NF{b}, B0={bs}, b0={sb}, {sd}, B1={sbs}" for b, bs, sb, sd, sbs in
                   zip(f["bits"], f["block_size"], f["scale_bits"], f["scale_dtype"], f["scale_block_size"])]
    z, text = _grid(f, "bits_per_weight"), _grid(f, "option")
    fig = go.Figure(go.Heatmap(z=z.to_numpy(), x=list(z.columns), y=list(z.index), text=text.to_numpy(),
                               colorscale=BITS_COLORS, zmin=2, zmax=8.7, colorbar=dict(title="bits", thickness=12),
                               hovertemplate="block %{y}, %{x}<br>%{z:.3f} bits/weight<br>%{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", dtick=2)
    return _layout(fig, title, "module", "block", height=520)


def bits_difference_heatmap(config: ModelConfig, other: ModelConfig, other_name: str) -> go.Figure:
    """``config`` minus ``other`` in bits per weight, per block × module (red: more bits than ``other``)."""
    a, b = configuration_frame(config), configuration_frame(other)
    a["delta"] = a["bits_per_weight"] - b["bits_per_weight"]
    z = _grid(a, "delta")
    lim = max(float(abs(z.to_numpy()).max()), 0.5)
    fig = go.Figure(go.Heatmap(z=z.to_numpy(), x=list(z.columns), y=list(z.index), colorscale="RdBu_r", zmid=0,
                               zmin=-lim, zmax=lim, colorbar=dict(title="Δ bits", thickness=12),
                               hovertemplate="block %{y}, %{x}<br>%{z:+.3f} bits vs " + other_name
                                             + "<extra></extra>"))
    fig.update_yaxes(autorange="reversed", dtick=2)
    return _layout(fig, f"Where the bits go, against {other_name}", "module", "block", height=520)


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
    return _layout(fig, f"{label.get(metric, metric)} (±1 standard error)", "task", metric, height=400)


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


# ----- the quantizer (tutorial 1) ------------------------------------------------------------------------------------
def codebook_figure(codebooks: Mapping[int, Sequence[float]], histogram: Optional[pd.DataFrame] = None,
                    title: str = "NF codebooks over the weights they code") -> go.Figure:
    """NF-b codebook values (one row of ticks per b), under an optional histogram of block-normalised weights.

    Args:
        codebooks: ``{bits: the 2**bits codebook values in [-1, 1]}`` (``coa_lora.codebook.nf_table(b).codebook``).
        histogram: ``x`` (bin centre), ``width``, ``density`` of weights divided by their block's absmax.
    """
    top = histogram is not None
    fig = make_subplots(rows=2 if top else 1, cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        row_heights=[0.6, 0.4] if top else None)
    if top:
        fig.add_trace(go.Bar(x=histogram["x"], y=histogram["density"], width=histogram["width"],
                             name="weights / block absmax", marker=dict(color="#9ab", line=dict(width=0)),
                             hovertemplate="%{x:.3f}<br>density %{y:.3f}<extra></extra>"), row=1, col=1)
    row = 2 if top else 1
    for i, (bits, values) in enumerate(sorted(codebooks.items())):
        values = [float(v) for v in values]
        fig.add_trace(go.Scatter(x=values, y=[f"NF{bits}"] * len(values), mode="markers",
                                 name=f"NF{bits} ({len(values)} values)",
                                 marker=dict(symbol="line-ns-open", size=16, line=dict(width=2),
                                             color=PALETTE[i % len(PALETTE)]),
                                 hovertemplate=f"NF{bits}" + " value %{x:.4f}<extra></extra>"), row=row, col=1)
    _layout(fig, title, "", "", height=520)  # first: its empty axis titles must not clear the panels' own
    fig.update_yaxes(title_text="codebook", row=row, col=1)
    if top:
        fig.update_yaxes(title_text="density", row=1, col=1)
        # The finest codebook of at most 16 values (NF8's 256 would fill the panel) as faint lines through the
        # histogram: where its levels sit on the data.
        finest = max((b for b in codebooks if len(codebooks[b]) <= 16), default=None)
        for v in codebooks[finest] if finest is not None else ():
            fig.add_vline(x=float(v), line=dict(color="#d62728", width=0.7, dash="dot"), row=1, col=1)
    fig.update_xaxes(title_text="value (weight / absmax of its block)", row=row, col=1)
    return fig


def option_frame(errors: Sequence[float], options: Sequence[QuantOption] = ALL_OPTIONS) -> pd.DataFrame:
    """One row per option: its five fields, ``name``, ``bits_per_weight``, ``error`` and ``on_front`` (no other
    option has no more bits and no more error, one of them strictly less).

    ``errors``: one value per option, in the order of ``options`` (e.g. :func:`coa_lora.matrix_damage`)."""
    errors = [float(e) for e in errors]
    if len(errors) != len(options):
        raise ValueError(f"Give one error per option: {len(options)} options, {len(errors)} errors.")
    frame = pd.DataFrame([{**o.to_dict(), "name": o.name, "bits_per_weight": o.bits_per_weight} for o in options])
    frame["error"] = errors
    frame["on_front"] = non_dominated(frame["bits_per_weight"].tolist(), frame["error"].tolist()).numpy()
    return frame


def options_figure(frame: pd.DataFrame, color: str = "bits", title: str = "Error against bits per weight") -> go.Figure:
    """Each option of one matrix in the (bits per weight, error) plane, coloured by one option field, the options'
    own Pareto front joined; log error axis. ``frame``: :func:`option_frame`'s columns."""
    if color not in OPTION_FIELDS:
        raise ValueError(f"Colour by one of the option fields {OPTION_FIELDS}, got {color!r}.")
    fig = go.Figure()
    for i, (value, rows) in enumerate(frame.groupby(color, sort=True)):
        fig.add_trace(go.Scatter(
            x=rows["bits_per_weight"], y=rows["error"], mode="markers", name=f"{FIELD_LABELS[color]} = {value}",
            marker=dict(size=7, color=PALETTE[i % len(PALETTE)], opacity=0.75), text=rows["name"],
            hovertemplate="%{text}<br>%{x:.4f} bits/weight<br>error %{y:.4g}<extra></extra>"))
    front = frame[frame["on_front"]].sort_values("bits_per_weight")
    if not front.empty:
        fig.add_trace(go.Scatter(x=front["bits_per_weight"], y=front["error"], mode="lines+markers",
                                 name=f"Pareto front ({len(front)} options)",
                                 line=dict(color="#222", width=1.5, shape="hv"),
                                 marker=dict(size=9, symbol="circle-open", color="#222"), text=front["name"],
                                 hovertemplate="%{text}<br>%{x:.4f} bits/weight<br>error %{y:.4g}<extra></extra>"))
    fig.update_yaxes(type="log")
    return _layout(fig, title, "bits per weight (code + scales)", "squared error ‖W − Q(W)‖²")


# ----- per-matrix views (tutorials 2, 3) -----------------------------------------------------------------------------
def target_frame(layout: ModelLayout, **columns: Sequence) -> pd.DataFrame:
    """One row per target matrix of ``layout``: ``target, layer, kind, numel`` plus each keyword as a column (one
    value per target, in layout order), e.g. ``target_frame(wb.layout, damage=table.values[:, k])``."""
    frame = pd.DataFrame([{"target": t.name, "layer": t.layer, "kind": t.kind, "numel": t.numel}
                          for t in layout.targets])
    for name, values in columns.items():
        values = [v.item() if hasattr(v, "item") else v for v in values]
        if len(values) != len(frame):
            raise ValueError(f"Column {name!r} has {len(values)} values for {len(frame)} target matrices.")
        frame[name] = values
    return frame


def target_heatmap(frame: pd.DataFrame, value: str, title: str, log: bool = False,
                   colorscale: str = "Viridis") -> go.Figure:
    """Blocks × module kinds coloured by column ``value`` of a :func:`target_frame` (``log``: log10 colour)."""
    z = _grid(frame, value).astype(float)
    shown = z.apply(lambda col: col.map(lambda v: math.log10(v) if v > 0 else float("nan"))) if log else z
    fig = go.Figure(go.Heatmap(z=shown.to_numpy(), x=list(z.columns), y=list(z.index), customdata=z.to_numpy(),
                               colorscale=colorscale,
                               colorbar=dict(title=f"log10 {value}" if log else value, thickness=12),
                               hovertemplate="block %{y}, %{x}<br>" + value + " %{customdata:.4g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", dtick=2)
    return _layout(fig, title, "module", "block", height=520)


def target_scatter(frame: pd.DataFrame, x: str, y: str, color: str = "kind", title: str = "", log_x: bool = False,
                   log_y: bool = False) -> go.Figure:
    """Target matrices as points (``x`` against ``y`` columns of a :func:`target_frame`), one colour per ``color``
    value; hover names the matrix."""
    fig = go.Figure()
    for i, (value, rows) in enumerate(frame.groupby(color, sort=False)):
        fig.add_trace(go.Scatter(x=rows[x], y=rows[y], mode="markers", name=str(value), text=rows["target"],
                                 marker=dict(size=8, color=PALETTE[i % len(PALETTE)], opacity=0.8),
                                 hovertemplate="%{text}<br>" + x + " %{x:.4g}<br>" + y + " %{y:.4g}<extra></extra>"))
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return _layout(fig, title or f"{y} against {x}", x, y)


# ----- across budgets (tutorials 2, 3, 5) ----------------------------------------------------------------------------
def budget_figure(frame: pd.DataFrame, metric: str, task: Optional[str] = None, title: str = "",
                  log: Optional[bool] = None, references: Optional[Mapping[str, float]] = None) -> go.Figure:
    """One metric against average bits, one line per column (a method, an adapter, a preset).

    ``frame``: :func:`results_frame` rows with an ``avg_bits`` column added (``column, task, metric, value, stderr,
    avg_bits``); ``task`` keeps one task's rows. Error bars are ±1 standard error where the frame has one. ``log``
    defaults to a log axis for perplexity. ``references``: ``{label: value}`` drawn as dotted horizontal lines (e.g.
    the unquantized reference)."""
    part = frame[frame["metric"] == metric]
    if task is not None:
        part = part[part["task"] == task]
    fig = go.Figure()
    for i, (column, rows) in enumerate(part.groupby("column", sort=False)):
        rows = rows.sort_values("avg_bits")
        stderr = rows["stderr"].fillna(0).tolist() if "stderr" in rows else [0] * len(rows)
        fig.add_trace(go.Scatter(x=rows["avg_bits"], y=rows["value"], mode="lines+markers", name=str(column),
                                 line=dict(color=PALETTE[i % len(PALETTE)], width=2),
                                 error_y=dict(type="data", array=stderr, visible=any(stderr)),
                                 hovertemplate="%{x:.3f} bits<br>" + metric + " %{y:.4g}<extra>" + str(column)
                                               + "</extra>"))
    if references and not part.empty:
        # Lines as traces, not shapes: a shape's annotation on a log axis is placed at 10^value.
        lo, hi = float(part["avg_bits"].min()), float(part["avg_bits"].max())
        for label, value in references.items():
            fig.add_trace(go.Scatter(x=[lo, hi], y=[value, value], mode="lines", name=f"{label} ({value:.4g})",
                                     line=dict(color="#555", dash="dot", width=1.2), hoverinfo="skip"))
    if log if log is not None else metric == "perplexity":
        fig.update_yaxes(type="log")
    if metric.startswith("acc"):
        fig.update_yaxes(range=[0, 1])
    label = {"acc": "accuracy", "acc_norm": "length-normalised accuracy", "perplexity": "held-out perplexity"}
    what = label.get(metric, metric) + (f" on {task}" if task else "")
    return _layout(fig, title or f"{what} against average bits", "average bits per weight", what, height=420)


# ----- the search (tutorial 4) ---------------------------------------------------------------------------------------
def prediction_figure(frame: pd.DataFrame, color: Optional[str] = None,
                      title: str = "Predicted against measured probe loss") -> go.Figure:
    """A surrogate's predictions against the measured values, with the y = x line.

    ``frame``: ``measured``, ``predicted``, optional ``predicted_sd`` (drawn as ±2 sd bars) and ``id``; ``color``: a
    column whose values get one colour each (e.g. ``round``)."""
    fig = go.Figure()
    groups = frame.groupby(color, sort=True) if color else [("prediction", frame)]
    for i, (value, rows) in enumerate(groups):
        sd = (2 * rows["predicted_sd"]).tolist() if "predicted_sd" in rows else None
        ids = rows["id"].tolist() if "id" in rows else list(range(len(rows)))
        fig.add_trace(go.Scatter(x=rows["measured"], y=rows["predicted"], mode="markers",
                                 name=f"{color} {value}" if color else str(value), customdata=ids,
                                 marker=dict(size=9, color=PALETTE[i % len(PALETTE)]),
                                 error_y=dict(type="data", array=sd, visible=sd is not None, thickness=1),
                                 hovertemplate="id %{customdata}<br>measured %{x:.4f}<br>predicted %{y:.4f}"
                                               "<extra></extra>"))
    if not frame.empty:
        lo = float(min(frame["measured"].min(), frame["predicted"].min()))
        hi = float(max(frame["measured"].max(), frame["predicted"].max()))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x (perfect prediction)",
                                 line=dict(color="#888", dash="dash", width=1), hoverinfo="skip"))
    return _layout(fig, title, "measured probe loss", "predicted probe loss (±2 sd)")


def ehvi_figure(front: pd.DataFrame, candidates: pd.DataFrame, reference: Optional[tuple[float, float]] = None,
                title: str = "What the acquisition sees", log_y: bool = False) -> go.Figure:
    """The current training set's front in the (bits, loss) plane and candidate configurations at their predicted
    loss (±2 sd), coloured by expected hypervolume improvement; measured losses, where known, as crosses.

    Args:
        front: ``avg_bits, f1`` of the configurations the GP was fitted on (the front is drawn as a staircase).
        candidates: ``avg_bits, predicted, predicted_sd, ehvi`` and optionally ``measured``, ``id``.
        reference: the hypervolume reference point ``(bits, loss)``, drawn as a star.
        log_y: a log loss axis (one collapsed configuration otherwise squeezes the rest into a line).
    """
    fig = go.Figure()
    pts = front.sort_values("avg_bits")
    best = non_dominated(pts["avg_bits"].tolist(), pts["f1"].tolist()).numpy()
    fig.add_trace(go.Scatter(x=pts["avg_bits"], y=pts["f1"], mode="markers", name="evaluated",
                             marker=dict(size=8, color="#bbb"),
                             hovertemplate="%{x:.3f} bits<br>loss %{y:.4f}<extra>evaluated</extra>"))
    fig.add_trace(go.Scatter(x=pts["avg_bits"][best], y=pts["f1"][best], mode="lines+markers", name="front",
                             line=dict(color="#222", width=1.5, shape="hv"), marker=dict(size=8, color="#222"),
                             hovertemplate="%{x:.3f} bits<br>loss %{y:.4f}<extra>front</extra>"))
    ids = candidates["id"].tolist() if "id" in candidates else list(range(len(candidates)))
    fig.add_trace(go.Scatter(
        x=candidates["avg_bits"], y=candidates["predicted"], mode="markers", name="candidates (predicted ±2 sd)",
        customdata=list(zip(ids, candidates["ehvi"])),
        error_y=dict(type="data", array=(2 * candidates["predicted_sd"]).tolist(), thickness=1, color="#999"),
        marker=dict(size=11, symbol="diamond", color=candidates["ehvi"], colorscale="Plasma",
                    colorbar=dict(title="EHVI", thickness=12), line=dict(width=1, color="#222")),
        hovertemplate="candidate %{customdata[0]}<br>%{x:.3f} bits<br>predicted %{y:.4f}"
                      "<br>EHVI %{customdata[1]:.3g}<extra></extra>"))
    if "measured" in candidates:
        fig.add_trace(go.Scatter(x=candidates["avg_bits"], y=candidates["measured"], mode="markers",
                                 name="measured afterwards", marker=dict(size=9, symbol="x", color="#d62728"),
                                 hovertemplate="%{x:.3f} bits<br>measured %{y:.4f}<extra></extra>"))
    if reference is not None:
        fig.add_trace(go.Scatter(x=[reference[0]], y=[reference[1]], mode="markers", name="reference point",
                                 marker=dict(size=14, symbol="star", color="#2ca02c"),
                                 hovertemplate="reference %{x:.3f} bits, loss %{y:.3f}<extra></extra>"))
    if log_y:
        fig.update_yaxes(type="log")
    return _layout(fig, title, "average bits per weight", "probe loss (nats/token)")
