import re

import pytest

from coa_lora.quant.space import (ALL_OPTIONS, FIELD_VALUES, MAX_BITS, MIN_BITS, OPTION_INDEX, PRESETS, QuantOption,
                                  preset)


def test_table_has_all_432_distinct_options():
    assert len(ALL_OPTIONS) == 432 == len(set(ALL_OPTIONS)) == len(OPTION_INDEX)


def test_bits_per_weight_formula():
    assert QuantOption(4, 8, "fp32", 64, 256).bits_per_weight == 4 + 8 / 64 + 32 / (64 * 256)
    assert QuantOption(2, 2, "bf16", 64, 256).bits_per_weight == pytest.approx(2.0322265625)
    assert MIN_BITS == 2 + 2 / 64 + 16 / 16384
    assert MAX_BITS == 8 + 8 / 16 + 32 / 256 == 8.625


@pytest.mark.parametrize("field,bad", [("bits", 5), ("scale_bits", 1), ("scale_dtype", "fp8"), ("block_size", 128),
                                       ("scale_block_size", 32), ("bits", True)])
def test_invalid_values_name_the_allowed_ones(field, bad):
    with pytest.raises(ValueError, match=rf"{field} must be one of {re.escape(str(FIELD_VALUES[field]))}"):
        QuantOption(**{field: bad})


def test_storage_bytes_golden():
    # 576x576 = 331776 weights, NF4, B0 = 64 -> 5184 blocks -> 21 groups of 256 scales.
    o = QuantOption(4, 8, "fp32", 64, 256)
    assert o.storage_bytes(331776) == 331776 // 2 + 5184 + 21 * 4 + 4
    # 3-bit codes pack 8 per 3 bytes; 10 weights -> 2 groups -> 6 bytes.
    o3 = QuantOption(3, 3, "bf16", 16, 16)
    assert o3.storage_bytes(10) == 6 + 3 + 2 + 4


def test_dict_and_ordinal_round_trips():
    for o in ALL_OPTIONS:
        assert QuantOption.from_dict(o.to_dict()) == o
        assert QuantOption.from_ordinals(o.ordinals()) == o
    with pytest.raises(ValueError, match="exactly the keys"):
        QuantOption.from_dict({"bits": 4})


def test_presets():
    assert preset("nf4") == QuantOption(4, 8, "fp32", 64, 256)
    assert PRESETS["min"].bits_per_weight == MIN_BITS and PRESETS["max"].bits_per_weight == MAX_BITS
    with pytest.raises(ValueError, match="choose one of"):
        preset("nf5")
