"""coa-lora: configuration-aware LoRA for mixed-precision quantized LLMs (CoA-LoRA, arXiv 2509.25214).

The public API the app, the notebooks and users call.
"""
from .adapter import AdapterOptions, CoALoRAModel, ConfigNetwork, LoraLinear, adapters_disabled, export_peft
from .allocate import Allocation, Allocator, allocate
from .config import ModelConfig, ModelLayout, Target
from .damage import DamageTable, fisher_diagonal, matrix_damage
from .evaluate import ItemResult, TaskResult, evaluate_task
from .evaluator import EvalOptions, Evaluator, results_table
from .instantiate import QuantizedModel, WeightCache, layout_of
from .loglik import EvaluationCancelled, ScoringOptions
from .mc_tasks import MCItem, Task, load_task
from .packed import PackedSummary, save_packed
from .packed_load import load_packed, read_summary
from .perplexity import PerplexityOptions, PerplexityResult, heldout_perplexity
from .quant import QuantizedTensor, dequantize, quantization_error, quantize
from .runs import RunInfo, read_metrics, read_run_info
from .space import ALL_OPTIONS, MAX_BITS, MIN_BITS, PRESETS, QuantOption, preset
from .train import TrainOptions, TrainResult, load_trained  # train() stays coa_lora.train.train (module name)
from .workbench import Workbench

__all__ = [
    "AdapterOptions", "CoALoRAModel", "ConfigNetwork", "LoraLinear", "RunInfo", "TrainOptions", "TrainResult",
    "adapters_disabled", "export_peft", "load_trained", "read_metrics", "read_run_info",
    "EvalOptions", "EvaluationCancelled", "Evaluator", "ItemResult", "MCItem", "PerplexityOptions",
    "PerplexityResult", "ScoringOptions", "Task", "TaskResult", "evaluate_task", "heldout_perplexity", "load_task",
    "results_table",
    "ALL_OPTIONS", "MAX_BITS", "MIN_BITS", "PRESETS", "Allocation", "Allocator", "DamageTable", "ModelConfig",
    "ModelLayout", "QuantOption", "QuantizedModel", "QuantizedTensor", "Target", "WeightCache", "Workbench",
    "allocate", "dequantize", "fisher_diagonal", "layout_of", "matrix_damage", "preset", "quantization_error",
    "quantize",
    "PackedSummary", "load_packed", "read_summary", "save_packed",
]
