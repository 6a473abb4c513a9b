"""Deployment: a configuration written as a packed folder whose bytes match its bits, and loaded back, as float weights
or kept packed at run time (PackedLinear). Importing this package registers packed folders as a model source for
:func:`coa_lora.models.load_model`."""
from coa_lora.deploy.packed import PackedSummary, is_packed, save_packed
from coa_lora.deploy.packed_linear import PackedLinear
from coa_lora.deploy.packed_load import load_packed, read_summary

__all__ = [
    "PackedLinear", "PackedSummary", "is_packed", "load_packed", "read_summary", "save_packed",
]
