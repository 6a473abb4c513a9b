"""Figures and frames of coa_lora.plots: built from a real run's tables and hand-made results, checked for what they
show (points, ids, segments, flipped items), not for pixels."""
from pathlib import Path

import pytest

from coa_lora import ModelConfig, Workbench, plots, preset
from coa_lora.evaluate import ItemResult, TaskResult
from coa_lora.perplexity import PerplexityResult
from coa_lora.run_view import open_run

TINY_RUN = Path(__file__).parent / "data" / "tiny_search_run"


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
