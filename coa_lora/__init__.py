"""coa-lora: configuration-aware LoRA for mixed-precision quantized LLMs (CoA-LoRA, arXiv 2509.25214).

The public API the app, the notebooks and users call: the names below, and each sub-package's ``__all__``.

Layers, following the pipeline (quantize -> configuration space -> allocate -> adapter -> train -> search ->
evaluate -> deploy). A module imports only from its own layer and the layers above it in this list; no two modules
import each other, directly or round a circle (tests/test_layers.py checks both):

    storage, progress, distributed, model_queue, exports   plumbing: atomic files and folders, progress callbacks,
                  process groups, the arrival-ordered lock of a shared model, names imported on first use
    quant/        NF-k codebook, double-quantized blockwise quantizer, bit packing, decode kernels, option space
    configs/      a model's configuration and layout, damage tables, the exact allocator and its grid
    models/, runs offline assets, model loading and target matrices, text windows; a training run's folder
    search/       Pareto fronts, GP surrogate, candidates, search state and rounds, the search inside a run
    lora/         a model under a configuration, the adapter and U_theta, training steps, the trainer, Workbench
    evaluation/   log-likelihood scoring, multiple-choice tasks, perplexity, the caching Evaluator
    deploy/       packed folders (save, load; registered as a model source), peft export
    plots/, explorer, compare/, commands, cli   what people use: figures, the explorer's facade, experiments, the CLI
"""
# Deployment is imported at once: it registers packed folders as a model source (Workbench.load of a packed folder),
# and with the lazy names below it imports no trainer, search or plotting library (a deployed model's process).
from coa_lora.deploy import PackedSummary, load_packed, read_summary, save_packed  # noqa: F401
from coa_lora.exports import lazy_exports

# Every other name is imported on first use (coa_lora.exports); `from coa_lora import Workbench` works as before.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "coa_lora.configs": ["Allocation", "Allocator", "DamageTable", "ModelConfig", "ModelLayout", "Target", "allocate",
                         "fisher_diagonal", "matrix_damage"],
    "coa_lora.deploy": ["PackedSummary", "load_packed", "read_summary", "save_packed"],
    "coa_lora.evaluation": ["EvalOptions", "EvaluationCancelled", "Evaluator", "ItemResult", "MCItem",
                            "PerplexityOptions", "PerplexityResult", "ScoringOptions", "Task", "TaskResult",
                            "evaluate_task", "heldout_perplexity", "load_task", "results_table"],
    "coa_lora.explorer": ["Explorer"],  # the facade over all the layers above
    "coa_lora.lora": ["AdapterOptions", "CoALoRAModel", "ConfigNetwork", "LoraLinear", "QuantizedModel",
                      "TrainOptions", "TrainResult", "WeightCache", "Workbench", "adapters_disabled", "export_peft",
                      "layout_of", "load_trained", "train"],
    "coa_lora.quant": ["ALL_OPTIONS", "MAX_BITS", "MIN_BITS", "PRESETS", "QuantizedTensor", "QuantOption",
                       "dequantize", "preset", "quantization_error", "quantize"],
    "coa_lora.runs": ["RunInfo", "read_metrics", "read_run_info"],
})
