from pathlib import Path

import pandas as pd
import pytest

from coa_lora import plots
from coa_lora.compare import WITHIN_TRAINED, read_results

SHIPPED = Path(__file__).resolve().parents[2] / "data" / "compare" / "smollm2"


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
