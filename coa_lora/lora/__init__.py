"""The configuration-aware adapter and its training (METHOD.md §4-5, §7): a model under a configuration, LoRA
wrappers and U_theta, one optimiser step over drawn configurations, the trainer (CoA-LoRA and the baselines), and the
Workbench that holds a model with its damage table and allocator."""
from coa_lora.exports import lazy_exports

# Imported on first use (coa_lora.exports): loading a deployed model uses the adapter and instantiate modules only,
# not the trainer and the Workbench (which import the search, BoTorch and pandas).
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "coa_lora.lora.adapter": ["AdapterOptions", "CoALoRAModel", "ConfigNetwork", "LoraLinear", "adapters_disabled",
                              "config_features", "export_peft"],
    "coa_lora.lora.instantiate": ["QuantizedModel", "WeightCache", "layout_of"],
    "coa_lora.lora.options": ["DEFAULT_HIGH_BITS", "DEFAULT_LOW_BITS", "TrainOptions", "even_budgets"],
    "coa_lora.lora.trainer": ["TrainResult", "load_trained", "train"],
    "coa_lora.lora.workbench": ["Workbench"],
})
