"""Figures of a comparison (:mod:`coa_lora.compare`): quality against bits per method with its seed band, and the
training time each method spent. They take the summary's plain frames, so the Compare page and a notebook draw the
same thing.

    results, runs, summary = read_results(folder)
    cells = pd.DataFrame(summary["cells"])
    compare_quality_figure(cells, "perplexity", trained=summary["plan"]["budgets"])
    compare_time_figure(pd.DataFrame(summary["methods"]))
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from coa_lora.plots.style import PALETTE, layout_figure

METHOD_COLORS = {"base": "#7f7f7f", "qlora": PALETTE[0], "shared": PALETTE[1], "coa": PALETTE[2]}
METHOD_LABELS = {"base": "Quantized base", "qlora": "Per-configuration LoRA", "shared": "Shared-LoRA",
                 "coa": "CoA-LoRA"}
METRIC_AXES = {"perplexity": "held-out perplexity (log scale, lower is better)",
               "kl": "KL from the unquantized model, nats (log scale, lower is better)",
               "top1": "top-1 agreement with the unquantized model (higher is better)"}


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _by_method(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(method, its rows) for each method of ``frame``, in the legend's order of METHOD_LABELS."""
    present = set(frame["method"])
    return [(m, frame[frame["method"] == m]) for m in METHOD_LABELS if m in present]


def compare_quality_figure(cells: pd.DataFrame, metric: str, trained: Sequence[float],
                           title: str | None = None, reference: pd.DataFrame | None = None,
                           reference_label: str = "reference") -> go.Figure:
    """One line per method: mean over seeds against bits, a band of ± one sd, filled circles at trained budgets and
    open diamonds at unseen ones.

    ``cells``: the summary's cells (``method, budget, metric, mean, sd, n``); ``reference``: an earlier comparison's
    cells, drawn as thin dashed lines named "<method>, <reference_label>" (the quantized base is not repeated)."""
    fig = go.Figure()
    frame = cells[cells["metric"] == metric].sort_values("budget")
    trained = set(trained)
    for method, rows in _by_method(frame):
        color, label = METHOD_COLORS[method], METHOD_LABELS[method]
        x = rows["budget"].tolist()
        sd = rows["sd"].fillna(0.0)  # one seed (or the base): no band
        upper, lower = (rows["mean"] + sd).tolist(), (rows["mean"] - sd).tolist()
        fig.add_trace(go.Scatter(x=x + x[::-1], y=upper + lower[::-1], fill="toself", fillcolor=_rgba(color, 0.15),
                                 line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=method))
        seen = [b in trained for b in x]
        fig.add_trace(go.Scatter(
            x=x, y=rows["mean"], mode="lines+markers", name=label, legendgroup=method,
            line=dict(color=color, width=2.5, dash="dot" if method == "base" else "solid"),
            marker=dict(size=10, color=[color if s else "white" for s in seen], line=dict(color=color, width=2),
                        symbol=["circle" if s else "diamond" for s in seen]),
            customdata=list(zip(sd, rows["n"], ["trained" if s else "unseen" for s in seen])),
            hovertemplate=f"{label}<br>%{{x:g}} bits (%{{customdata[2]}})<br>%{{y:.4g}} ± %{{customdata[0]:.3g}} "
                          "over %{customdata[1]} seed(s)<extra></extra>"))
    if reference is not None:
        earlier = reference[(reference["metric"] == metric) & (reference["method"] != "base")].sort_values("budget")
        for method, rows in _by_method(earlier):
            label = f"{METHOD_LABELS[method]}, {reference_label}"
            fig.add_trace(go.Scatter(
                x=rows["budget"], y=rows["mean"], mode="lines+markers", name=label, opacity=0.55,
                line=dict(color=METHOD_COLORS[method], width=1.5, dash="dash"), marker=dict(size=5),
                customdata=list(zip(rows["sd"].fillna(0.0), rows["n"])),
                hovertemplate=f"{label}<br>%{{x:g}} bits<br>%{{y:.4g}} ± %{{customdata[0]:.3g}} over "
                              "%{customdata[1]} seed(s)<extra></extra>"))
    for b in sorted(trained):
        fig.add_vline(x=b, line=dict(color="#dddddd", width=1))
    if metric in ("perplexity", "kl"):
        fig.update_yaxes(type="log")
    # Short enough for a half-width column: the axis says the scale, the caption the rest.
    default = f"{METRIC_AXES.get(metric, metric).split(' (')[0]} — filled: trained budgets, open: unseen"
    return layout_figure(fig, title or default, "average bits per weight",
                         METRIC_AXES.get(metric, metric).split(" (")[0], height=460)


def compare_time_figure(methods: pd.DataFrame) -> go.Figure:
    """Training wall-clock per method (all its adapters of one seed), mean ± sd over seeds.

    ``methods``: the summary's methods (``method, label, adapters, train_seconds {mean, sd, n}``)."""
    rows = methods[methods["train_seconds"].notna()]
    minutes = [t["mean"] / 60 for t in rows["train_seconds"]]
    sds = [t["sd"] / 60 for t in rows["train_seconds"]]
    text = [f"{a} adapter{'s' if a != 1 else ''}" for a in rows["adapters"]]
    fig = go.Figure(go.Bar(x=rows["label"], y=minutes, error_y=dict(type="data", array=sds, visible=True),
                           marker_color=[METHOD_COLORS.get(m, PALETTE[4]) for m in rows["method"]], text=text,
                           textposition="inside",
                           hovertemplate="%{x}: %{y:.1f} min (%{text})<extra></extra>"))
    return layout_figure(fig, "Training time per seed (all of a method's adapters)", "", "minutes", height=380)


def compare_gap_figure(gaps: pd.DataFrame, metric: str, other: str = "qlora", within: float | None = None,
                       title: str | None = None, reference: pd.DataFrame | None = None,
                       reference_label: str = "reference") -> go.Figure:
    """Each method against ``other`` per budget: 100·ln(metric_method / metric_other) paired by seed, mean ± sd, so
    differences of a few percent stay visible where the quantized base dwarfs them on the quality axis.

    ``gaps``: the summary's gaps (``method, other, metric, budget, mean, sd, n, trained``); ``within``: a target band
    (e.g. 100·ln 1.02) drawn around 0. Below 0 the method is better for a lower-is-better metric. ``reference``: an
    earlier comparison's gaps, drawn as small faded crosses named "<method>, <reference_label>"."""
    frame = gaps[(gaps["metric"] == metric) & (gaps["other"] == other)].sort_values("budget")
    fig = go.Figure()
    if within is not None:
        fig.add_hrect(y0=-within, y1=within, fillcolor="#eeeeee", line_width=0, layer="below")
    fig.add_hline(y=0, line=dict(color="#999999", width=1))
    methods = _by_method(frame)
    for k, (method, rows) in enumerate(methods):
        color, label = METHOD_COLORS[method], METHOD_LABELS[method]
        seen = rows["trained"].tolist()
        offset = 0.02 * (k - (len(methods) - 1) / 2)  # side by side at each budget, not on top of each other
        fig.add_trace(go.Scatter(
            x=rows["budget"] + offset, y=rows["mean"], mode="markers", name=label,
            error_y=dict(type="data", array=rows["sd"].fillna(0.0).tolist(), visible=True, color=color),
            marker=dict(size=11, color=[color if s else "white" for s in seen], line=dict(color=color, width=2),
                        symbol=["circle" if s else "diamond" for s in seen]),
            customdata=list(zip(rows["budget"], rows["sd"].fillna(0.0), rows["n"])),
            hovertemplate=f"{label}<br>%{{customdata[0]:g}} bits<br>%{{y:+.1f}} ± %{{customdata[1]:.1f}} over "
                          "%{customdata[2]} seed(s)<extra></extra>"))
    if reference is not None:
        earlier = reference[(reference["metric"] == metric) & (reference["other"] == other)].sort_values("budget")
        for k, (method, rows) in enumerate(_by_method(earlier)):
            label = f"{METHOD_LABELS[method]}, {reference_label}"
            fig.add_trace(go.Scatter(
                x=rows["budget"] - 0.05 + 0.02 * k, y=rows["mean"], mode="markers", name=label, opacity=0.5,
                marker=dict(size=9, symbol="x-thin", line=dict(color=METHOD_COLORS[method], width=2)),
                customdata=list(zip(rows["budget"], rows["sd"].fillna(0.0), rows["n"])),
                hovertemplate=f"{label}<br>%{{customdata[0]:g}} bits<br>%{{y:+.1f}} ± %{{customdata[1]:.1f}} over "
                              "%{customdata[2]} seed(s)<extra></extra>"))
    name = METRIC_AXES.get(metric, metric).split(" (")[0]
    return layout_figure(fig, title or f"against {METHOD_LABELS.get(other, other)}: 100·ln ratio of {name}",
                         "average bits per weight", f"100·ln({name} / {METHOD_LABELS.get(other, other)})",
                         height=400)


def why_gap_figure(verdict: dict, metric: str = "ppl") -> go.Figure:
    """The diagnosis' verdict (bench/why.py, #37) as bars: CoA-LoRA's gap to per-configuration LoRA per budget under
    each setting measured (as compared, both at rank 64, CoA-LoRA with twice the steps, ...), mean ± sd over seeds.

    ``verdict``: the verdict entry's ``measured``, ``{"<metric> gap, <setting>, at <b> bits": {mean, sd, n}}``."""
    rows = []
    for name, value in verdict.items():
        head, _, budget = name.rpartition(", at ")
        which, _, setting = head.partition(" gap, ")
        if which == metric and budget.endswith(" bits"):
            rows.append((setting, budget, value))
    fig = go.Figure()
    fig.add_hline(y=0, line=dict(color="#999999", width=1))
    settings = list(dict.fromkeys(r[0] for r in rows))
    for k, setting in enumerate(settings):
        mine = [r for r in rows if r[0] == setting]
        fig.add_trace(go.Bar(
            x=[r[1] for r in mine], y=[r[2]["mean"] for r in mine], name=setting,
            marker_color=PALETTE[k % len(PALETTE)],
            error_y=dict(type="data", array=[r[2]["sd"] or 0.0 for r in mine], visible=True),
            customdata=[(r[2]["sd"] or 0.0, r[2]["n"]) for r in mine],
            hovertemplate=f"{setting}<br>%{{x}}: %{{y:+.1f}} ± %{{customdata[0]:.1f}} over %{{customdata[1]}} seeds"
                          "<extra></extra>"))
    fig.update_layout(barmode="group")
    name = {"ppl": "held-out perplexity", "KL": "KL from the unquantized model"}.get(metric, metric)
    return layout_figure(fig, f"CoA-LoRA against per-configuration LoRA: 100·ln ratio of {name} (above 0: behind)",
                         "budget", "100·ln(CoA-LoRA / per-configuration LoRA)", height=420)
