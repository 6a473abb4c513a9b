"""How far a quantized model's next-token distribution is from the unquantized model's: the scoreboard llama.cpp
users read when they pick a quant (``llama-perplexity --kl-divergence``).

On the held-out windows of :func:`~coa_lora.evaluation.perplexity.heldout_windows`, at every scored position:

* KL(P_ref || P) = Σ_v p_ref(v) (log p_ref(v) − log p(v)), in nats, averaged over positions;
* top-1 agreement: the share of positions whose most likely token equals the reference's;
* and, from the same forward pass, the perplexity of the text (as :func:`heldout_perplexity` computes it).

The reference log-probabilities are computed once (:func:`reference_logprobs`) and kept in float16, (n_scored, vocab)
per window: 1,023 positions x 49,152 tokens are 100 MB a window for SmolLM2, so callers keep the window count small.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from coa_lora.evaluation.loglik import EvaluationCancelled, StopFn
from coa_lora.progress import ProgressFn, report

RESULT_FORMAT_VERSION = 1
Windows = list[tuple[torch.Tensor, int]]  # (window (length,), n_scored): heldout_windows' pairs


@dataclass(frozen=True)
class AgreementResult:
    """Distance of a model's next-token distribution from the reference's, with the text's perplexity."""

    task: str
    kl: float  # mean KL(P_ref || P) per scored position, nats
    top1: float  # share of scored positions whose argmax equals the reference's
    perplexity: float
    n_tokens: int
    n_windows: int

    def to_dict(self) -> dict:
        return {**self.__dict__, "format_version": RESULT_FORMAT_VERSION}

    @classmethod
    def from_dict(cls, d: dict) -> "AgreementResult":
        if d.get("format_version") != RESULT_FORMAT_VERSION:
            raise ValueError(f"Unsupported result format_version {d.get('format_version')!r}; this version reads "
                             f"{RESULT_FORMAT_VERSION}.")
        return cls(d["task"], d["kl"], d["top1"], d["perplexity"], d["n_tokens"], d["n_windows"])


def _scored_logprobs(model, windows: Windows, batch_size: int, should_stop: Optional[StopFn]):
    """Yield ``(window index, (n_scored, vocab) float32 log-probabilities, (n_scored,) targets)`` batch by batch."""
    device = next(model.parameters()).device
    for start in range(0, len(windows), batch_size):
        if should_stop is not None and should_stop():
            raise EvaluationCancelled("Evaluation cancelled.")
        batch = windows[start:start + batch_size]
        ids = torch.stack([w for w, _ in batch]).to(device)  # (batch, length)
        keep = max(n for _, n in batch) + 1
        logits = model(input_ids=ids, logits_to_keep=keep).logits  # (batch, keep, vocab)
        for row, (_, n_scored) in enumerate(batch):
            yield start + row, logits[row, -n_scored - 1:-1].float().log_softmax(-1), ids[row, -n_scored:]


@torch.no_grad()
def reference_logprobs(model, windows: Windows, batch_size: int = 2,
                       progress: Optional[ProgressFn] = None) -> list[torch.Tensor]:
    """The reference model's ``(n_scored, vocab)`` float16 log-probabilities per window, on the CPU."""
    out = []
    for i, logprobs, _ in _scored_logprobs(model, windows, batch_size, None):
        out.append(logprobs.to(torch.float16).cpu())
        report(progress, i + 1, len(windows), "reference")
    return out


@torch.no_grad()
def agreement(model, windows: Windows, reference: list[torch.Tensor], batch_size: int = 2, task: str = "kl",
              progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None) -> AgreementResult:
    """KL from the reference, top-1 agreement and perplexity of ``model`` (as it is) on ``windows``.

    ``reference``: :func:`reference_logprobs` of the same windows. A model equal to the reference scores kl ≈ 0
    (float16 rounding of the reference: below 1e-3 nats) and top1 = 1.
    """
    if not windows:
        raise ValueError("No window to score: the text is shorter than one window.")
    if len(reference) != len(windows):
        raise ValueError(f"The reference has {len(reference)} windows, the text {len(windows)}: compute it on the same "
                         "windows.")
    kl = nll = 0.0
    same = count = 0
    for i, logprobs, targets in _scored_logprobs(model, windows, batch_size, should_stop):
        ref = reference[i].to(logprobs.device, torch.float32)  # (n_scored, vocab)
        kl += (ref.exp() * (ref - logprobs)).sum().item()
        same += int((ref.argmax(-1) == logprobs.argmax(-1)).sum())
        nll -= logprobs.gather(-1, targets.unsqueeze(-1)).sum().item()
        count += len(targets)
        report(progress, i + 1, len(windows), task)
    return AgreementResult(task, kl / count, same / count, math.exp(nll / count), count, len(windows))
