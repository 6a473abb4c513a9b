"""The configuration-aware adapter and its training (METHOD.md §4-5, §7): a model under a configuration, LoRA
wrappers and U_theta, one optimiser step over drawn configurations, the trainer (CoA-LoRA and the baselines), and the
Workbench that holds a model with its damage table and allocator."""
from coa_lora.lora.adapter import (AdapterOptions, CoALoRAModel, ConfigNetwork, LoraLinear, adapters_disabled,
                                   config_features, export_peft)
from coa_lora.lora.instantiate import QuantizedModel, WeightCache, layout_of
from coa_lora.lora.options import DEFAULT_HIGH_BITS, DEFAULT_LOW_BITS, TrainOptions, even_budgets
from coa_lora.lora.trainer import TrainResult, load_trained, train
from coa_lora.lora.workbench import Workbench

__all__ = [
    "AdapterOptions", "CoALoRAModel", "ConfigNetwork", "DEFAULT_HIGH_BITS", "DEFAULT_LOW_BITS", "LoraLinear",
    "QuantizedModel", "TrainOptions", "TrainResult", "WeightCache", "Workbench", "adapters_disabled",
    "config_features", "even_budgets", "export_peft", "layout_of", "load_trained", "train",
]
