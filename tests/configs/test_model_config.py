import json

import pytest
import torch

from coa_lora.configs.model_config import ModelConfig, ModelLayout, Target
from coa_lora.quant.space import ALL_OPTIONS, QuantOption


@pytest.fixture
def layout():
    targets = (
        Target("b.0.q", (64, 64), 0, "q"),
        Target("b.0.up", (128, 64), 0, "up"),
        Target("b.1.q", (64, 64), 1, "q"),
        Target("b.1.up", (128, 64), 1, "up"),
    )
    return ModelLayout("toy", targets, other_bytes=1000, weight_bytes=4)


def test_avg_bits_is_numel_weighted(layout):
    opts = (QuantOption(bits=2), QuantOption(bits=8), QuantOption(bits=2), QuantOption(bits=8))
    cfg = ModelConfig(layout, opts)
    extra = QuantOption(bits=2).bits_per_weight - 2
    assert cfg.avg_bits == pytest.approx((2 * 4096 * 2 + 8 * 8192 * 2) / (3 * 8192) + extra)
    assert cfg.bits_by_layer() == {0: pytest.approx(cfg.avg_bits), 1: pytest.approx(cfg.avg_bits)}


def test_size_counts_packed_targets_and_unquantized_rest(layout):
    cfg = ModelConfig.uniform(layout, QuantOption())
    expected = sum(QuantOption().storage_bytes(t.numel) for t in layout.targets) + 1000
    assert cfg.size_bytes == expected
    assert layout.full_size_bytes == 4 * (2 * 4096 + 2 * 8192) + 1000


def test_json_round_trip_and_errors(layout):
    g = torch.Generator().manual_seed(0)
    cfg = ModelConfig.from_option_indices(layout, torch.randint(0, 432, (4,), generator=g))
    assert ModelConfig.from_json(cfg.to_json(), layout) == cfg
    d = json.loads(cfg.to_json())
    assert d["format_version"] == 1 and set(d["options"]) == set(layout.names)
    with pytest.raises(ValueError, match="format_version"):
        ModelConfig.from_dict({**d, "format_version": 99}, layout)
    with pytest.raises(ValueError, match="missing"):
        ModelConfig.from_dict({**d, "options": {k: v for k, v in d["options"].items() if k != "b.0.q"}}, layout)
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelConfig.from_json("{", layout)
    with pytest.raises(ValueError, match="one option per target"):
        ModelConfig(layout, (QuantOption(),))


def test_vector_encodings_round_trip(layout):
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        cfg = ModelConfig.from_option_indices(layout, torch.randint(0, 432, (4,), generator=g))
        assert cfg.to_ordinals().shape == (4, 5)
        assert ModelConfig.from_ordinals(layout, cfg.to_ordinals().reshape(-1)) == cfg
        v = cfg.to_vector()
        assert v.shape == (20,) and v.min() >= 0 and v.max() <= 1
        assert ModelConfig.from_vector(layout, v + 0.05) == cfg  # rounding to the nearest ordinal
        assert ModelConfig.from_option_indices(layout, cfg.option_indices()) == cfg


def test_key_is_stable_and_distinguishes(layout):
    a = ModelConfig.uniform(layout, ALL_OPTIONS[0])
    b = ModelConfig.uniform(layout, ALL_OPTIONS[1])
    assert a.key() == ModelConfig.uniform(layout, ALL_OPTIONS[0]).key() != b.key()
