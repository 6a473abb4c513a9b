"""Quantization of one matrix (METHOD.md §2): the NF-k codebook, the double-quantized blockwise quantizer, bit
packing, the decode kernels, and the per-matrix option space with its bits formula. Imports only the plumbing."""
from coa_lora.quant.codebook import NF_P, nf_formula, nf_table
from coa_lora.quant.quantizer import (QuantizedTensor, dequantize, dequantize_blockwise, quantization_error, quantize,
                                      quantize_blockwise)
from coa_lora.quant.space import (ALL_OPTIONS, FIELD_VALUES, MAX_BITS, MIN_BITS, OPTION_INDEX, PRESETS, QuantOption,
                                  preset)

__all__ = [
    "ALL_OPTIONS", "FIELD_VALUES", "MAX_BITS", "MIN_BITS", "NF_P", "OPTION_INDEX", "PRESETS", "QuantOption",
    "QuantizedTensor", "dequantize", "dequantize_blockwise", "nf_formula", "nf_table", "preset", "quantization_error",
    "quantize", "quantize_blockwise",
]
