"""coa-lora: configuration-aware LoRA for mixed-precision quantized LLMs (CoA-LoRA, arXiv 2509.25214).

The public API the app, the notebooks and users call: the names below, and each sub-package's ``__all__``.

Layers, following the pipeline (quantize -> configuration space -> allocate -> adapter -> train -> search ->
evaluate -> deploy). A module imports only from its own layer and the layers above it in this list; no two modules
import each other, directly or round a circle (tests/test_layers.py checks both):

    storage, progress, distributed, model_queue   plumbing: atomic files and folders, progress callbacks, process
                  groups, the arrival-ordered lock of a shared model
    quant/        NF-k codebook, double-quantized blockwise quantizer, bit packing, decode kernels, option space
    configs/      a model's configuration and layout, damage tables, the exact allocator and its grid
    models/, runs offline assets, model loading and target matrices, text windows; a training run's folder
    search/       Pareto fronts, GP surrogate, candidates, search state and rounds, the search inside a run
    lora/         a model under a configuration, the adapter and U_theta, training steps, the trainer, Workbench
    evaluation/   log-likelihood scoring, multiple-choice tasks, perplexity, the caching Evaluator
    deploy/       packed folders (save, load; registered as a model source), peft export
    plots/, explorer, compare/, commands, cli   what people use: figures, the explorer's facade, experiments, the CLI
"""
from coa_lora.configs import (Allocation, Allocator, DamageTable, ModelConfig, ModelLayout, Target, allocate,
                              fisher_diagonal, matrix_damage)
from coa_lora.deploy import PackedSummary, load_packed, read_summary, save_packed
from coa_lora.evaluation import (EvalOptions, EvaluationCancelled, Evaluator, ItemResult, MCItem, PerplexityOptions,
                                 PerplexityResult, ScoringOptions, Task, TaskResult, evaluate_task, heldout_perplexity,
                                 load_task, results_table)
from coa_lora.explorer import Explorer  # noqa: E402 (the facade over all the layers above)
from coa_lora.lora import (AdapterOptions, CoALoRAModel, ConfigNetwork, LoraLinear, QuantizedModel, TrainOptions,
                           TrainResult, WeightCache, Workbench, adapters_disabled, export_peft, layout_of, load_trained,
                           train)
from coa_lora.quant import (ALL_OPTIONS, MAX_BITS, MIN_BITS, PRESETS, QuantizedTensor, QuantOption, dequantize, preset,
                            quantization_error, quantize)
from coa_lora.runs import RunInfo, read_metrics, read_run_info

__all__ = [
    "AdapterOptions", "CoALoRAModel", "ConfigNetwork", "Explorer", "LoraLinear", "RunInfo", "TrainOptions",
    "TrainResult", "adapters_disabled", "export_peft", "load_trained", "read_metrics", "read_run_info", "train",
    "EvalOptions", "EvaluationCancelled", "Evaluator", "ItemResult", "MCItem", "PerplexityOptions",
    "PerplexityResult", "ScoringOptions", "Task", "TaskResult", "evaluate_task", "heldout_perplexity", "load_task",
    "results_table",
    "ALL_OPTIONS", "MAX_BITS", "MIN_BITS", "PRESETS", "Allocation", "Allocator", "DamageTable", "ModelConfig",
    "ModelLayout", "QuantOption", "QuantizedModel", "QuantizedTensor", "Target", "WeightCache", "Workbench",
    "allocate", "dequantize", "fisher_diagonal", "layout_of", "matrix_damage", "preset", "quantization_error",
    "quantize",
    "PackedSummary", "load_packed", "read_summary", "save_packed",
]
