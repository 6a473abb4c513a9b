"""Figures of the tutorial notebooks: the quantizer's codebooks and options, per-matrix targets, budgets, the
surrogate's predictions and the acquisition. Same contract as :mod:`coa_lora.plots.views` (library frames in, plotly
figures out, no tensor math, no Streamlit), and re-exported there.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Optional

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from coa_lora.configs.model_config import ModelLayout
from coa_lora.plots.style import FIELD_LABELS, OPTION_FIELDS, PALETTE, blocks_by_kinds, layout_figure
from coa_lora.quant.space import ALL_OPTIONS, QuantOption
from coa_lora.search.pareto import non_dominated


# ----- the quantizer (tutorial 1) ------------------------------------------------------------------------------------
def codebook_figure(codebooks: Mapping[int, Sequence[float]], histogram: Optional[pd.DataFrame] = None,
                    title: str = "NF codebooks over the weights they code") -> go.Figure:
    """NF-b codebook values (one row of ticks per b), under an optional histogram of block-normalised weights.

    Args:
        codebooks: ``{bits: the 2**bits codebook values in [-1, 1]}``
            (``coa_lora.quant.codebook.nf_table(b).codebook``).
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
    layout_figure(fig, title, "", "", height=520)  # first: its empty axis titles must not clear the panels' own
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
    return layout_figure(fig, title, "bits per weight (code + scales)", "squared error ‖W − Q(W)‖²")


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
    z = blocks_by_kinds(frame, value).astype(float)
    shown = z.apply(lambda col: col.map(lambda v: math.log10(v) if v > 0 else float("nan"))) if log else z
    fig = go.Figure(go.Heatmap(z=shown.to_numpy(), x=list(z.columns), y=list(z.index), customdata=z.to_numpy(),
                               colorscale=colorscale,
                               colorbar=dict(title=f"log10 {value}" if log else value, thickness=12),
                               hovertemplate="block %{y}, %{x}<br>" + value + " %{customdata:.4g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", dtick=2)
    return layout_figure(fig, title, "module", "block", height=520)


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
    return layout_figure(fig, title or f"{y} against {x}", x, y)


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
    return layout_figure(fig, title or f"{what} against average bits", "average bits per weight", what, height=420)


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
    return layout_figure(fig, title, "measured probe loss", "predicted probe loss (±2 sd)")


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
    return layout_figure(fig, title, "average bits per weight", "probe loss (nats/token)")
