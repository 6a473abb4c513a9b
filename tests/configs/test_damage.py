import pytest
import torch

from coa_lora import QuantOption, fisher_diagonal, layout_of, matrix_damage, quantization_error
from coa_lora.configs.damage import load_or_compute
from coa_lora.models.loading import load_model
from coa_lora.quant.space import ALL_OPTIONS


def test_matrix_damage_equals_per_option_error():
    w = torch.randn(48, 80, generator=torch.Generator().manual_seed(0))
    d = matrix_damage(w)
    assert d.shape == (432,)
    for k in (0, 77, 200, 431):
        assert d[k].item() == pytest.approx(quantization_error(w, ALL_OPTIONS[k]), rel=1e-6)
    subset = [QuantOption(bits=2), QuantOption(bits=8)]
    assert matrix_damage(w, options=subset).tolist() == pytest.approx([d[ALL_OPTIONS.index(o)].item() for o in subset])


def test_table_is_cached_and_keyed_by_weights(tmp_path):
    g = torch.Generator().manual_seed(1)
    weights = {"a": torch.randn(32, 64, generator=g), "b": torch.randn(16, 64, generator=g)}
    first = load_or_compute(weights, tmp_path)
    files = list(tmp_path.glob("damage-*.safetensors"))
    assert len(files) == 1
    again = load_or_compute(weights, tmp_path)
    assert torch.equal(again.values, first.values) and again.key == first.key
    weights["a"][0, 0] += 1.0
    changed = load_or_compute(weights, tmp_path)
    assert changed.key != first.key and len(list(tmp_path.glob("damage-*.safetensors"))) == 2
    # A corrupt cache entry is recomputed, never trusted.
    files[0].write_bytes(b"not a safetensors file")
    weights["a"][0, 0] -= 1.0
    assert torch.equal(load_or_compute(weights, tmp_path).values, first.values)


def test_fisher_is_nonnegative_and_restores_flags():
    model = load_model("tiny")
    layout = layout_of(model, "tiny")
    ids = torch.randint(0, 49152, (3, 16), generator=torch.Generator().manual_seed(0))
    fisher = fisher_diagonal(model, layout.names, ids)
    assert set(fisher) == set(layout.names)
    for name, f in fisher.items():
        assert f.shape == model.get_submodule(name).weight.shape and (f >= 0).all() and f.sum() > 0
    assert not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():  # a caller inside no_grad (the app, an eval loop) gets the same Fisher
        inside = fisher_diagonal(model, layout.names, ids)
    assert all(torch.equal(inside[n], fisher[n]) for n in fisher)
    # Weighting changes which option hurts most on a matrix but not the ordering of NF bits.
    w = model.get_submodule(layout.names[0]).weight
    weighted = matrix_damage(w, fisher[layout.names[0]])
    assert not torch.allclose(weighted / weighted.sum(), matrix_damage(w) / matrix_damage(w).sum())


def test_fisher_equals_a_plain_per_sequence_gradient_loop():
    model = load_model("tiny")
    layout = layout_of(model, "tiny")
    ids = torch.randint(0, 49152, (3, 16), generator=torch.Generator().manual_seed(0))
    name = layout.names[5]  # a gate_proj: 160 x 96
    fisher = fisher_diagonal(model, layout.names, ids)[name].double()
    # The textbook estimate: per sequence, backward of its own loss, square the weight's gradient; then average.
    weight = model.get_submodule(name).weight
    weight.requires_grad_(True)
    grads = []
    for seq in ids:
        weight.grad = None
        model(input_ids=seq[None], labels=seq[None]).loss.backward()
        grads.append(weight.grad.double())
    weight.requires_grad_(False)
    grads = torch.stack(grads)
    want = (grads ** 2).mean(0)
    torch.testing.assert_close(fisher, want, rtol=1e-4, atol=1e-6 * float(want.max()))
    # Not the square of the mean gradient (what one batched backward would estimate): that is smaller.
    assert float(grads.mean(0).pow(2).sum()) < 0.9 * float(fisher.sum())


def test_a_cached_table_never_computes_its_importance(tmp_path):
    model = load_model("tiny")
    layout = layout_of(model, "tiny")
    weights = {n: model.get_submodule(n).weight.detach() for n in layout.names[:2]}
    calls = []

    def importance():  # stands in for the Fisher: backward passes that a cache hit must not pay for
        calls.append(1)
        return {n: torch.ones_like(w) for n, w in weights.items()}

    first = load_or_compute(weights, tmp_path, importance, "ones")
    again = load_or_compute(weights, tmp_path, importance, "ones")
    assert calls == [1] and torch.equal(first.values, again.values) and again.weighting == "fisher"
