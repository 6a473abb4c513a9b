"""The house style of every figure: font, colours, the common layout, and the blocks × kinds grid of matrix tables.

Shared by :mod:`coa_lora.plots.views` (the explorer's figures) and :mod:`coa_lora.plots.tutorial` (the notebooks').
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)
# Viridis with its stops moved to 2, 3, 4, 5 and 8.7 bits: a fixed scale (comparable across budgets) that still tells
# the 2-, 3- and 4-bit matrices apart, where almost every configuration worth looking at lives.
BITS_COLORS = [[0.0, "#440154"], [1 / 6.7, "#3b528b"], [2 / 6.7, "#21918c"], [3 / 6.7, "#5ec962"], [1.0, "#fde725"]]
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
OPTION_FIELDS = ("bits", "scale_bits", "scale_dtype", "block_size", "scale_block_size")
FIELD_LABELS = {"bits": "NF bits b", "scale_bits": "scale bits b0", "scale_dtype": "scale dtype s",
                "block_size": "block size B0", "scale_block_size": "scale block size B1"}


def layout_figure(fig: go.Figure, title: str, x: str, y: str, height: int = 460) -> go.Figure:
    # The legend sits under the plot: above it, it collides with the title and with annotations of vertical lines.
    # It is anchored to the figure's bottom edge ("container"), not the plot area's: plotly shrinks the plot area to
    # make room for a long legend, and a position below the plot area then lands on the x axis' title.
    fig.update_layout(title=dict(text=title, x=0.01), xaxis_title=x, yaxis_title=y, font=FONT, height=height,
                      template="plotly_white", margin=dict(l=60, r=20, t=70, b=50),
                      legend=dict(orientation="h", yref="container", yanchor="bottom", y=0.0, xanchor="left", x=0.0))
    return fig


def blocks_by_kinds(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    """``value`` of a one-row-per-matrix frame (``layer``, ``kind`` columns) as blocks × kinds, kinds in model order."""
    kinds = list(dict.fromkeys(frame["kind"]))
    return frame.pivot(index="layer", columns="kind", values=value)[kinds]
