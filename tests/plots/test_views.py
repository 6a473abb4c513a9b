"""Figures and frames of coa_lora.plots.views: built from a real run's tables and hand-made results, checked for what
they show (points, ids, segments, flipped items), not for pixels."""
from pathlib import Path

import pandas as pd
import pytest

from coa_lora import ModelConfig, QuantOption, Workbench, plots, preset
from coa_lora.evaluation.perplexity import PerplexityResult
from coa_lora.evaluation.scoring import ItemResult, TaskResult
from coa_lora.search.run_view import open_run

TINY_RUN = Path(__file__).resolve().parent.parent / "data" / "tiny_search_run"


def item(gold, pred):
    return ItemResult("ctx", ("a", "b", "c"), gold, (-1.0, -2.0, -3.0), pred, pred)


def result(preds, golds=(0, 1, 2, 0)):
    items = tuple(item(g, p) for g, p in zip(golds, preds))
    acc = sum(i.correct for i in items) / len(items)
    return TaskResult("t", len(items), acc, 0.1, acc, 0.1, 1 / 3, items)


def test_search_figure_shows_every_configuration_of_the_round_with_its_id_and_the_training_set_outlined():
    view = open_run(TINY_RUN)
    last = view.round_numbers()[-1]
    history = view.history_at(last)
    fig = plots.search_figure(history, view.segment_edges(), plots.preset_bits(), "final", selected_id=0)
    points = [t for t in fig.data if t.mode == "markers" and t.name != "your pick"]
    ids = sorted(int(c[0]) for t in points for c in t.customdata)
    assert ids == sorted(history["id"].tolist())
    chosen = next(t for t in points if t.name.startswith("training set"))
    assert len(chosen.x) == int(history["selected"].sum())
    assert any(t.name == "your pick" for t in fig.data)
    assert len(fig.layout.shapes) == len(view.segment_edges()) + len(plots.preset_bits())
    # A preset measured under the run's adapter is a labelled star among the points, instead of its line.
    fig = plots.search_figure(history, view.segment_edges(), plots.preset_bits(), "final",
                              preset_points={"nf4": (4.127, 3.5)})
    star = next(t for t in fig.data if t.name.startswith("uniform presets"))
    assert (list(star.x), list(star.y), list(star.text)) == ([4.127], [3.5], ["uniform nf4"])
    assert len(fig.layout.shapes) == len(view.segment_edges()) + len(plots.preset_bits()) - 1


def test_hypervolume_figure_draws_pool_and_training_set_per_run():
    view = open_run(TINY_RUN)
    fig = plots.hypervolume_figure({"a": view.rounds, "b": view.rounds})
    assert [t.name for t in fig.data] == ["a: training set", "a: pool", "b: training set", "b: pool"]
    assert list(fig.data[0].y) == view.rounds["hv_train"].tolist()


def test_flipped_items_lists_exactly_the_items_whose_correctness_changed():
    a, b = result([0, 0, 2, 1]), result([0, 1, 1, 0])
    flips = plots.flipped_items(a, b, "base", "adapter")
    assert flips["item"].tolist() == [1, 2, 3]
    assert flips["now right in"].tolist() == ["adapter", "base", "adapter"]
    with pytest.raises(ValueError, match="different items"):
        plots.flipped_items(a, result([0, 0], golds=(0, 1)))


def test_results_frame_and_bars_carry_values_and_standard_errors():
    ppl = PerplexityResult("ppl", 42.0, 3.7, 1000, 2)
    frame = plots.results_frame({"ref": {"t": result([0, 1, 2, 0]), "ppl": ppl}, "q": {"t": result([1, 1, 2, 0])}})
    acc = frame[frame["metric"] == "acc"].set_index("column")["value"].to_dict()
    assert acc == {"ref": 1.0, "q": 0.75}
    assert frame[frame["metric"] == "perplexity"]["value"].tolist() == [42.0]
    fig = plots.results_bars(frame, "acc")
    assert [t.name for t in fig.data] == ["ref", "q"] and list(fig.data[1].error_y.array) == [0.1]


def test_heat_maps_place_each_matrix_in_its_block_and_module():
    wb = Workbench.load("tiny")
    config = ModelConfig.uniform(wb.layout, preset("nf4"))
    fig = plots.bits_heatmap(config)
    z = fig.data[0].z
    assert len(z) == len({t.layer for t in wb.layout.targets})
    assert all(abs(v - preset("nf4").bits_per_weight) < 1e-12 for row in z for v in row)
    other = ModelConfig.uniform(wb.layout, preset("nf2"))
    diff = plots.bits_difference_heatmap(config, other, "nf2").data[0].z
    assert all(abs(v - (preset("nf4").bits_per_weight - preset("nf2").bits_per_weight)) < 1e-12
               for row in diff for v in row)


def test_training_figure_draws_the_loss_and_each_probe_configuration():
    view = open_run(TINY_RUN)
    fig = plots.training_figure(view.metrics, view.label)
    probes = [c for c in view.metrics.columns if c.startswith("probe_loss@")]
    assert len(fig.data) == 1 + len(probes) and fig.data[0].name == "training loss"
    assert list(fig.data[0].y) == view.metrics["loss"].tolist()


# ----- figures of the tutorial notebooks ------------------------------------------------------------------------------
def test_codebook_figure_draws_each_codebook_and_the_histogram():
    from coa_lora.quant.codebook import nf_table

    hist = pd.DataFrame({"x": [-0.5, 0.5], "width": [1.0, 1.0], "density": [0.4, 0.6]})
    fig = plots.codebook_figure({b: nf_table(b).codebook.tolist() for b in (2, 4)}, hist)
    assert [t.name for t in fig.data] == ["weights / block absmax", "NF2 (4 values)", "NF4 (16 values)"]
    assert list(fig.data[2].x) == nf_table(4).codebook.tolist()
    assert len(fig.layout.shapes) == 16  # NF4's values through the histogram
    assert fig.layout.yaxis.title.text == "density"


def test_option_frame_marks_the_hand_computed_front_and_the_figure_joins_it():
    options = [QuantOption(2, 8, "fp32", 64, 256), QuantOption(3, 8, "fp32", 64, 256),
               QuantOption(3, 2, "fp32", 64, 256), QuantOption(4, 8, "fp32", 64, 256)]
    # bits: 2.127, 3.127, 3.033, 4.127; the 3.127-bit option has more error than the cheaper 3.033 one: dominated.
    frame = plots.option_frame([10.0, 5.0, 4.0, 1.0], options)
    assert frame["on_front"].tolist() == [True, False, True, True]
    assert frame["name"].tolist() == [o.name for o in options]
    fig = plots.options_figure(frame, color="bits")
    assert [t.name for t in fig.data] == ["NF bits b = 2", "NF bits b = 3", "NF bits b = 4", "Pareto front (3 options)"]
    assert list(fig.data[-1].y) == [10.0, 4.0, 1.0]
    with pytest.raises(ValueError, match="one error per option"):
        plots.option_frame([1.0], options)
    with pytest.raises(ValueError, match="option fields"):
        plots.options_figure(frame, color="avg_bits")


def test_target_frame_heatmap_and_scatter_place_each_matrix():
    wb = Workbench.load("tiny")
    n = len(wb.layout)
    frame = plots.target_frame(wb.layout, damage=[10.0 ** i for i in range(n)], bits=[2.0] * n)
    assert frame.columns.tolist() == ["target", "layer", "kind", "numel", "damage", "bits"]
    fig = plots.target_heatmap(frame, "damage", "t", log=True)
    z = fig.data[0].z
    assert z[0][0] == 0.0 and z[1][0] == 7.0  # log10 of block 1's first matrix (the 8th target)
    assert fig.data[0].customdata[1][0] == 1e7
    scatter = plots.target_scatter(frame, "damage", "bits")
    assert [t.name for t in scatter.data] == list(dict.fromkeys(frame["kind"]))
    with pytest.raises(ValueError, match="14 target matrices"):
        plots.target_frame(wb.layout, damage=[1.0])


def test_budget_figure_draws_one_line_per_column_sorted_by_bits_with_reference_lines():
    ppl = lambda v: PerplexityResult("ppl", v, 1.0, 10, 1)  # noqa: E731
    frame = pd.concat([plots.results_frame({col: {"ppl": ppl(v)}}).assign(avg_bits=b)
                       for col, b, v in [("alloc", 4.0, 30.0), ("alloc", 3.0, 60.0), ("uniform", 3.1, 900.0)]])
    fig = plots.budget_figure(frame, "perplexity", references={"reference": 20.0})
    assert [t.name for t in fig.data] == ["alloc", "uniform", "reference (20)"]
    assert list(fig.data[0].x) == [3.0, 4.0] and list(fig.data[0].y) == [60.0, 30.0]
    assert list(fig.data[2].y) == [20.0, 20.0] and fig.layout.yaxis.type == "log"


def test_prediction_and_ehvi_figures_carry_ids_and_measured_values():
    frame = pd.DataFrame({"id": [3, 4], "measured": [1.0, 2.0], "predicted": [1.5, 1.8], "predicted_sd": [0.1, 0.2],
                          "round": [1, 2]})
    fig = plots.prediction_figure(frame, color="round")
    assert [t.name for t in fig.data] == ["round 1", "round 2", "y = x (perfect prediction)"]
    assert list(fig.data[1].error_y.array) == [0.4]
    front = pd.DataFrame({"avg_bits": [2.0, 3.0, 3.5], "f1": [5.0, 3.0, 4.0]})
    candidates = frame.assign(avg_bits=[2.5, 3.2], ehvi=[0.1, 0.0])
    fig = plots.ehvi_figure(front, candidates, reference=(4.0, 6.0))
    names = [t.name for t in fig.data]
    assert names == ["evaluated", "front", "candidates (predicted ±2 sd)", "measured afterwards", "reference point"]
    assert list(fig.data[1].x) == [2.0, 3.0]  # (3.5, 4.0) is dominated by (3.0, 3.0)
    assert [c[0] for c in fig.data[2].customdata] == [3, 4]


def test_differences_are_paired_on_the_items_both_columns_have():
    from coa_lora.evaluation.scoring import summarize

    def result(correct):
        return summarize("t", [ItemResult(f"q{i}", ("a", "b"), 0, (-1.0, -2.0), 0 if c else 1, 0)
                               for i, c in enumerate(correct)])

    results = {"reference": {"t": result([1, 1, 0, 1, 1, 0])}, "base": {"t": result([0, 1, 0, 0])},
               "tiny": {"t": result([1])}, "ppl": {"ppl": PerplexityResult("ppl", 10.0, 2.3, 100, 1)}}
    table = plots.differences_frame(results, "reference")
    assert list(table["column"]) == ["base"]  # one item cannot give a standard error; perplexity has no items
    row = table.iloc[0]
    assert row["n"] == 4 and row["difference"] == pytest.approx(-50.0)  # 3/4 right on the first four, then 1/4
    assert row["stderr"] == pytest.approx(100 * (1 / 3) ** 0.5 / 2)  # differences (-1, 0, 0, -1): sd sqrt(1/3)
    assert not row["separated"] and row["items_needed"] == 6
    # Every item moved the same way: no spread blurs it, so it is separated at any n >= 2.
    results = {"reference": {"t": result([1, 1, 1, 1])}, "base": {"t": result([0, 0, 0, 0])}}
    row = plots.differences_frame(results, "reference").iloc[0]
    assert row["difference"] == pytest.approx(-100.0) and row["stderr"] == 0
    assert row["separated"] and row["items_needed"] == 2
