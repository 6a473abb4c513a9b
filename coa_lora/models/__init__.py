"""Models and data by name: the embedded offline assets (SmolLM2, Shakespeare), model loading with its target
matrices, and the text split into train / held-out / probe windows."""
from coa_lora.models.assets import AssetMissingError, prepare_assets
from coa_lora.models.loading import (REFERENCE_LABEL, REFERENCE_NOTE, SMOLLM2, TINY, FolderLoader, find_targets,
                                     load_model, load_tokenizer, model_id, register_loader, tiny_model)

__all__ = [
    "AssetMissingError", "FolderLoader", "REFERENCE_LABEL", "REFERENCE_NOTE", "SMOLLM2", "TINY", "find_targets",
    "load_model", "load_tokenizer", "model_id", "prepare_assets", "register_loader", "tiny_model",
]
