from pathlib import Path

import pandas as pd
import pytest

from coa_lora import plots
from coa_lora.compare import WITHIN_TRAINED, read_results

SHIPPED = Path(__file__).resolve().parents[2] / "data" / "compare" / "smollm2-rank8"


def test_gap_figure_draws_each_method_against_per_configuration_lora_with_its_seed_spread():
    _, _, summary = read_results(SHIPPED)
    gaps = pd.DataFrame(summary["gaps"])
    fig = plots.compare_gap_figure(gaps, "perplexity", within=WITHIN_TRAINED)
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {"Shared-LoRA", "CoA-LoRA"}
    want = gaps[(gaps["metric"] == "perplexity") & (gaps["other"] == "qlora") & (gaps["method"] == "coa")]
    want = want.sort_values("budget")
    coa = traces["CoA-LoRA"]
    assert list(coa.y) == pytest.approx(want["mean"].tolist())
    assert list(coa.error_y.array) == pytest.approx(want["sd"].fillna(0).tolist())
    # trained budgets filled, unseen ones open; the x positions stay within a hair of their budgets
    assert [c != "white" for c in coa.marker.color] == want["trained"].tolist()
    assert max(abs(a - b) for a, b in zip(coa.x, want["budget"])) < 0.05
    band = fig.layout.shapes[0]
    assert band.y0 == pytest.approx(-WITHIN_TRAINED) and band.y1 == pytest.approx(WITHIN_TRAINED)


def test_an_earlier_comparison_draws_as_dashed_lines_beside_the_current_one():
    _, _, summary = read_results(SHIPPED)
    cells = pd.DataFrame(summary["cells"])
    fig = plots.compare_quality_figure(cells, "kl", summary["plan"]["budgets"], reference=cells,
                                       reference_label="rank 8")
    dashed = {t.name: t for t in fig.data if t.name and t.name.endswith(", rank 8")}
    assert set(dashed) == {"Per-configuration LoRA, rank 8", "Shared-LoRA, rank 8", "CoA-LoRA, rank 8"}  # no base
    want = cells[(cells["metric"] == "kl") & (cells["method"] == "coa")].sort_values("budget")
    coa = dashed["CoA-LoRA, rank 8"]
    assert coa.line.dash == "dash" and list(coa.y) == pytest.approx(want["mean"].tolist())
    assert list(coa.x) == want["budget"].tolist()


def test_the_why_verdict_draws_one_bar_group_per_setting_with_its_seed_spread():
    from coa_lora.compare import read_why

    verdict = read_why(SHIPPED)["verdict"]["measured"]
    fig = plots.why_gap_figure(verdict, "ppl")
    bars = {t.name: t for t in fig.data}
    assert "as compared (rank 8, 60 steps)" in bars and "both at rank 64" in bars
    for name, bar in bars.items():
        for budget, y, sd in zip(bar.x, bar.y, bar.error_y.array):
            value = verdict[f"ppl gap, {name}, at {budget}"]
            assert (y, sd) == pytest.approx((value["mean"], value["sd"]))
    assert len(plots.why_gap_figure(verdict, "KL").data) == len(bars)  # the KL rows, the same settings


def test_an_earlier_comparisons_gaps_draw_as_faded_crosses_beside_the_current_ones():
    _, _, summary = read_results(SHIPPED)
    gaps = pd.DataFrame(summary["gaps"])
    fig = plots.compare_gap_figure(gaps, "kl", within=WITHIN_TRAINED, reference=gaps, reference_label="rank 8")
    crosses = {t.name: t for t in fig.data if t.name and t.name.endswith(", rank 8")}
    assert set(crosses) == {"Shared-LoRA, rank 8", "CoA-LoRA, rank 8"}
    want = gaps[(gaps["metric"] == "kl") & (gaps["other"] == "qlora") & (gaps["method"] == "coa")].sort_values("budget")
    coa = crosses["CoA-LoRA, rank 8"]
    assert coa.marker.symbol == "x-thin" and list(coa.y) == pytest.approx(want["mean"].tolist())
    assert max(abs(a - b) for a, b in zip(coa.x, want["budget"])) < 0.1
