"""Figures shared by the explorer and the tutorials: each takes the library's frames and returns a plotly Figure.

:mod:`~coa_lora.plots.views` draws the explorer's views, :mod:`~coa_lora.plots.tutorial` the notebooks' step-by-step
figures, :mod:`~coa_lora.plots.compare` a comparison's, all in :mod:`~coa_lora.plots.style`.
"""
from coa_lora.plots.compare import compare_gap_figure, compare_quality_figure, compare_time_figure, why_gap_figure
from coa_lora.plots.tutorial import (budget_figure, codebook_figure, ehvi_figure, option_frame, options_figure,
                                     prediction_figure, target_frame, target_heatmap, target_scatter)
from coa_lora.plots.views import (bits_difference_heatmap, bits_heatmap, configuration_frame, differences_frame,
                                  flipped_items, hypervolume_figure, method_diagram, preset_bits, results_bars,
                                  results_frame, search_figure, training_figure)

__all__ = [
    "bits_difference_heatmap", "bits_heatmap", "budget_figure", "codebook_figure", "compare_gap_figure",
    "compare_quality_figure",
    "compare_time_figure", "configuration_frame", "differences_frame", "ehvi_figure", "flipped_items",
    "hypervolume_figure", "method_diagram", "option_frame", "options_figure",
    "prediction_figure", "preset_bits", "results_bars", "results_frame", "search_figure", "target_frame",
    "target_heatmap", "target_scatter", "training_figure", "why_gap_figure",
]
