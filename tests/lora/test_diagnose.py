import pytest
import torch

from coa_lora import ModelConfig, QuantizedModel
from coa_lora.lora.adapter import AdapterOptions, CoALoRAModel
from coa_lora.lora.diagnose import correction_spread, product_norms
from coa_lora.models.loading import load_model


def make_coa(r=8, seed=1):
    """The tiny model with an adapter whose B and U_θ's last layer are non-zero (a fresh one has U = 0)."""
    coa = CoALoRAModel(QuantizedModel.from_model(load_model("tiny"), "tiny"), AdapterOptions(r=r))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in coa.wrappers.values():
            w.lora_B.weight.normal_(std=0.1, generator=g)
    return coa


def random_config(layout, seed):
    g = torch.Generator().manual_seed(seed)
    return ModelConfig.from_option_indices(layout, torch.randint(0, 432, (len(layout),), generator=g))


def test_product_norms_equal_the_explicit_products():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 9, generator=g), torch.randn(7, 4, generator=g)
    m = torch.randn(3, 4, 4, generator=g)
    explicit = torch.stack([torch.linalg.matrix_norm(b @ mc @ a) for mc in m])
    torch.testing.assert_close(product_norms(a, b, m), explicit)


def test_fresh_adapter_has_no_configuration_dependent_part():
    coa = make_coa()
    configs = [random_config(coa.layout, s) for s in range(4)]
    table = correction_spread(coa, configs)
    assert len(table) == len(coa.layout.targets)
    assert (table["u_mean"] == 0).all() and (table["u_spread"] == 0).all() and (table["config_share"] == 0).all()
    assert (table["delta_to_weight"] > 0).all()


def test_config_share_matches_the_explicit_deltas():
    coa = make_coa(r=4)
    with torch.no_grad():
        coa.network.out.weight.normal_(std=0.1, generator=torch.Generator().manual_seed(3))
    configs = [random_config(coa.layout, s) for s in range(3)]
    table = correction_spread(coa, configs).set_index("target")
    name, wrapper = next(iter(coa.wrappers.items()))
    deltas = []
    with torch.no_grad():
        for c in configs:
            coa.config = c  # U for c without swapping the base weights (the spread reads U_θ only)
            coa.refresh()
            deltas.append(wrapper.scaling * wrapper.merged_B() @ wrapper.lora_A.weight)
    deltas = torch.stack(deltas)
    mean = deltas.mean(dim=0)
    expected = (deltas - mean).flatten(1).norm(dim=1).pow(2).mean().sqrt() / mean.norm()
    assert table.loc[name, "config_share"] == pytest.approx(float(expected), rel=1e-4)
    assert table.loc[name, "config_share"] > 0.01  # a perturbed U_θ does move with the configuration
    assert table.loc[name, "delta_to_weight"] == pytest.approx(
        float(mean.norm() / wrapper.base_layer.weight.norm()), rel=1e-4)


def test_plain_lora_and_empty_sets_are_refused_in_one_sentence():
    coa = make_coa()
    with pytest.raises(ValueError, match="at least one configuration"):
        correction_spread(coa, [])
    plain = CoALoRAModel.__new__(CoALoRAModel)
    plain.network = None
    with pytest.raises(ValueError, match="plain LoRA"):
        correction_spread(plain, [random_config(coa.layout, 0)])
