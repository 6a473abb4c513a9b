"""The KL scoreboard on the tiny model: zero against itself, the text's perplexity from the same pass, the KL of a
hand-checkable case, and more damage further from the reference; the evaluator serves and caches it as task "kl"."""
import math

import pytest
import torch

from coa_lora import ModelConfig, Workbench, preset
from coa_lora.evaluation import Evaluator, PerplexityOptions
from coa_lora.evaluation.agreement import agreement, reference_logprobs
from coa_lora.evaluation.perplexity import heldout_perplexity, heldout_windows

OPTIONS = PerplexityOptions(length=64, stride=64)


class Fixed(torch.nn.Module):
    """A 'model' whose next-token logits are given: position t of every window predicts with logits[t]."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits, requires_grad=False)

    def forward(self, input_ids, logits_to_keep):
        out = self.logits[-logits_to_keep:].expand(len(input_ids), -1, -1)
        return type("Out", (), {"logits": out})()


def test_kl_and_top1_of_a_hand_checkable_case():
    ref = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]))
    other = torch.log(torch.tensor([[0.25, 0.5, 0.25], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4]]))
    windows = [(torch.tensor([0, 1, 2]), 2)]  # positions 0 and 1 predict tokens 1 and 2
    reference = reference_logprobs(Fixed(ref), windows)
    got = agreement(Fixed(other), windows, reference)
    p, q = ref[:2].exp(), other[:2].exp()
    expected = float((p * (p.log() - q.log())).sum(-1).mean())
    assert got.kl == pytest.approx(expected, rel=2e-3)  # the reference is stored in float16
    assert got.top1 == 0.5  # position 0: argmax 0 vs 1; position 1: both 1
    assert got.perplexity == pytest.approx(math.exp(-(other[0, 1] + other[1, 2]).item() / 2))
    assert got.n_tokens == 2 and got.n_windows == 1


def test_the_reference_against_itself_and_damage_against_it():
    wb = Workbench.load("tiny")
    windows = heldout_windows(wb.tokenizer, OPTIONS, limit=1)
    reference = reference_logprobs(wb.model, windows)
    same = agreement(wb.model, windows, reference)
    assert same.kl < 1e-3 and same.top1 == 1.0
    assert same.perplexity == pytest.approx(heldout_perplexity(wb.model, wb.tokenizer, OPTIONS, 1).perplexity,
                                            rel=1e-5)
    kls = {}
    for name in ("nf2", "nf4"):
        wb.qmodel.apply_(ModelConfig.uniform(wb.layout, preset(name)))
        kls[name] = agreement(wb.model, windows, reference).kl
    wb.qmodel.restore_()
    assert kls["nf2"] > kls["nf4"] > same.kl
    with pytest.raises(ValueError, match="same windows"):
        agreement(wb.model, windows[:1], reference + reference)


def test_the_evaluator_serves_kl_and_caches_it(tmp_path):
    wb = Workbench.load("tiny")
    from coa_lora.evaluation.evaluator import EvalOptions

    ev = Evaluator(wb, EvalOptions(perplexity=OPTIONS), cache_dir=tmp_path)
    config = ModelConfig.uniform(wb.layout, preset("nf3"))
    first = ev.run("kl", config, limit=1)
    assert first.kl > 0 and 0 <= first.top1 <= 1
    assert first.perplexity == pytest.approx(ev.run("ppl", config, limit=1).perplexity, rel=1e-5)
    again = Evaluator(wb, EvalOptions(perplexity=OPTIONS), cache_dir=tmp_path).cached("kl", config, limit=1)
    assert again == first
    assert ev.run("kl", None, limit=1).kl < 1e-3
