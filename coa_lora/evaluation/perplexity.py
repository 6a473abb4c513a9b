"""Perplexity on the held-out plays (METHOD.md §8): fixed-length windows, token-weighted mean loss, exp.

Each held-out play (The Tempest, Julius Caesar, Twelfth Night) is tokenised on its own and cut into windows of
``length`` tokens starting every ``stride`` tokens (:func:`coa_lora.models.data.token_windows`; a final partial window
is dropped). The first window of a play scores its ``length - 1`` predicted tokens; each later window scores only the
tokens no earlier window scored, its last ``min(stride, length - 1)`` (with ``stride == length``, the default, the
windows are disjoint and each window's first token is context only). Perplexity is
``exp(sum of token losses / number of scored tokens)`` over all plays together.

Works on the model as it is: full precision, a quantized configuration, with or without an adapter.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Optional

import torch

from coa_lora.evaluation.loglik import EvaluationCancelled, StopFn
from coa_lora.progress import ProgressFn, report

RESULT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class PerplexityOptions:
    """How the held-out text is windowed and batched."""

    length: int = 1024  # tokens per window: long enough that most tokens see a paragraph of context
    stride: int = 1024  # window start spacing; smaller overlaps windows (more context per token, more compute)
    batch_size: int = 2  # windows per forward pass

    def __post_init__(self) -> None:
        for name in ("length", "stride", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PerplexityOptions.{name} must be a positive integer, got {value!r}.")
        if self.length < 2:
            raise ValueError(f"PerplexityOptions.length must be at least 2 tokens, got {self.length}.")
        if self.stride > self.length:
            raise ValueError(f"PerplexityOptions.stride ({self.stride}) cannot exceed length ({self.length}): "
                             "tokens between windows would never be scored.")

    @property
    def scored_after_first(self) -> int:
        """Tokens scored by every window but a play's first."""
        return min(self.stride, self.length - 1)


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity with the counts behind it."""

    task: str
    perplexity: float
    loss: float  # mean negative log-likelihood per scored token (nats)
    n_tokens: int  # scored tokens
    n_windows: int

    def to_dict(self) -> dict:
        return {**self.__dict__, "format_version": RESULT_FORMAT_VERSION}

    @classmethod
    def from_dict(cls, d: dict) -> "PerplexityResult":
        if d.get("format_version") != RESULT_FORMAT_VERSION:
            raise ValueError(f"Unsupported result format_version {d.get('format_version')!r}; this version reads "
                             f"{RESULT_FORMAT_VERSION}.")
        return cls(d["task"], d["perplexity"], d["loss"], d["n_tokens"], d["n_windows"])


def heldout_windows(
    tokenizer, options: PerplexityOptions = PerplexityOptions(), limit: Optional[int] = None
) -> list[tuple[torch.Tensor, int]]:
    """``(window, n_scored)`` pairs over the held-out plays in sorted order; ``limit`` windows per play at most.

    Each window is ``(length,)`` int64; ``n_scored`` is how many of its last tokens count (see module docstring).
    """
    from coa_lora.models.data import plays, token_windows

    if limit is not None and limit < 1:
        raise ValueError(f"The window limit must be a positive integer, got {limit}.")
    pairs = []
    for text in plays("heldout").values():
        windows = token_windows(tokenizer, text, options.length, options.stride, limit)
        for k, window in enumerate(windows):
            pairs.append((window, options.length - 1 if k == 0 else options.scored_after_first))
    return pairs


def fingerprint(windows: list[tuple[torch.Tensor, int]]) -> str:
    """A short hash of the windows and their scored counts (keys result caches)."""
    h = hashlib.sha256()
    for window, n_scored in windows:
        h.update(f"{n_scored};".encode())
        h.update(window.numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def window_losses(model, windows: list[tuple[torch.Tensor, int]], batch_size: int = 2,
                  progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None) -> tuple[float, int]:
    """``(sum of token losses in nats, number of scored tokens)`` over ``windows`` (see :func:`heldout_windows`).

    Logits are formed only at the scored positions (a vocabulary row per position is most of the memory).
    """
    if not windows:
        raise ValueError("No window to score: the text is shorter than one window.")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        if should_stop is not None and should_stop():
            raise EvaluationCancelled("Evaluation cancelled.")
        batch = windows[start:start + batch_size]
        ids = torch.stack([w for w, _ in batch]).to(device)  # (batch, length)
        keep = max(n for _, n in batch) + 1  # positions -keep .. -2 predict the last keep - 1 tokens
        logits = model(input_ids=ids, logits_to_keep=keep).logits  # (batch, keep, vocab)
        for row, (_, n_scored) in enumerate(batch):
            predicted = logits[row, -n_scored - 1:-1].float()  # (n_scored, vocab)
            targets = ids[row, -n_scored:]
            total -= (predicted.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - predicted.logsumexp(-1)).sum().item()
            count += n_scored
        report(progress, min(start + batch_size, len(windows)), len(windows), "perplexity")
    return total, count


def heldout_perplexity(
    model,
    tokenizer,
    options: PerplexityOptions = PerplexityOptions(),
    limit: Optional[int] = None,
    progress: Optional[ProgressFn] = None,
    should_stop: Optional[StopFn] = None,
) -> PerplexityResult:
    """Perplexity of ``model`` on the held-out plays, ``limit`` windows per play at most."""
    windows = heldout_windows(tokenizer, options, limit)
    total, count = window_losses(model, windows, options.batch_size, progress, should_stop)
    loss = total / count
    return PerplexityResult("ppl", math.exp(loss), loss, count, len(windows))
