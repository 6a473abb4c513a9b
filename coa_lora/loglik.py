"""Log-likelihood of continuations given contexts, as lm-evaluation-harness computes it, but faster (METHOD.md §8).

The harness runs one forward pass over ``context + continuation`` for every choice of every item and takes a
log-softmax over the whole vocabulary at every position. Here each distinct context runs once, its key/value cache
is reused by all of its continuations, and logits are only formed where a continuation token is predicted:

1. Contexts (deduplicated, sorted by length, left-padded) run with ``use_cache=True`` and ``logits_to_keep=1``: the
   last position predicts every continuation's first token.
2. Continuations longer than one token run on the cache gathered per continuation row, their positions continuing
   from their own context's length (so left padding changes nothing but floating-point rounding).

Tokenization follows the harness exactly (:func:`encode_pair`), so the numbers are the harness's up to rounding
(about 1e-5 in log-probability on float32).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .progress import ProgressFn, report

Tokens = tuple[int, ...]
StopFn = Callable[[], bool]


class EvaluationCancelled(RuntimeError):
    """Raised between batches when the caller's ``should_stop()`` returns True; nothing partial is returned."""


@dataclass(frozen=True)
class ScoringOptions:
    """Batch sizes of the scorer. Results do not depend on them beyond floating-point rounding."""

    # Padded tokens per forward pass: bounds activation memory; larger batches amortise per-call overhead.
    batch_tokens: int = 2048
    # Context tokens of the cache gathered for continuation rows (one copy per row): bounds key/value memory
    # (SmolLM2 holds 46 KB per cached token, so 8192 tokens is about 380 MB).
    cache_tokens: int = 8192

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "cache_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"ScoringOptions.{name} must be a positive integer, got {getattr(self, name)!r}.")


def prefix_token_id(tokenizer) -> int:
    """The token an empty context is replaced by: BOS when the tokenizer has one, else EOS (as the harness does)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("The tokenizer has neither a BOS nor an EOS token, so an empty context cannot be scored.")
    return token


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with the tokenizer's default special tokens, unless ``text`` already starts with BOS."""
    bos = tokenizer.decode(prefix_token_id(tokenizer))
    starts_with_bos = bool(bos) and text.startswith(bos)
    return tokenizer.encode(text, add_special_tokens=not starts_with_bos)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[Tokens, Tokens]:
    """``(context_ids, continuation_ids)`` split exactly as lm-evaluation-harness splits them.

    Trailing whitespace of the context moves to the continuation; ``context + continuation`` is encoded as one
    string and cut after as many tokens as the context's own encoding has; the context keeps its own encoding (so
    when a token spans the boundary, the model sees the context's tokens followed by the rest of the whole's).
    An empty context becomes the prefix token (:func:`prefix_token_id`).
    """
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        if cont and cont[0] == prefix:
            return tuple(cont[:1]), tuple(cont[1:])
        return (prefix,), tuple(cont)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = encode(tokenizer, context + continuation)
    context_ids = encode(tokenizer, context)
    return tuple(context_ids), tuple(whole[len(context_ids):])


def max_length(model, tokenizer=None) -> int:
    """The longest sequence the model accepts (the harness's rule: model config first, then the tokenizer, 2048)."""
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 10**9 else 2048


@torch.no_grad()
def continuation_logprobs(
    model,
    requests: Sequence[tuple[Tokens, Tokens]],
    options: ScoringOptions = ScoringOptions(),
    progress: Optional[ProgressFn] = None,
    should_stop: Optional[StopFn] = None,
) -> list[float]:
    """Summed log-probability of each continuation given its context.

    Args:
        model: a causal LM (transformers, supporting ``cache``/``logits_to_keep``), in eval mode.
        requests: ``(context_ids, continuation_ids)`` pairs, both non-empty, as from :func:`encode_pair`.
        options: batch sizes.
        progress: called with ``(requests scored, len(requests), "")`` after each batch.
        should_stop: checked before each batch; True raises :class:`EvaluationCancelled`.

    Returns:
        ``len(requests)`` floats (natural log), in request order.
    """
    for i, (ctx, cont) in enumerate(requests):
        if not ctx or not cont:
            raise ValueError(f"Request {i} has an empty context or continuation after tokenization.")
    groups: dict[Tokens, list[int]] = {}
    for i, (ctx, _) in enumerate(requests):
        groups.setdefault(ctx, []).append(i)
    # Longest first, like the harness: memory peaks on the first batch, and similar lengths share a batch.
    contexts = sorted(groups, key=lambda c: (-len(c), c))
    out = [0.0] * len(requests)
    done = 0
    for batch in _batches(contexts, groups, requests, options):
        if should_stop is not None and should_stop():
            raise EvaluationCancelled("Evaluation cancelled.")
        rows = [(i, b) for b, ctx in enumerate(batch) for i in groups[ctx]]
        for (i, _), value in zip(rows, _score_batch(model, batch, [requests[i][1] for i, _ in rows],
                                                   [b for _, b in rows])):
            out[i] = value
        done += len(rows)
        report(progress, done, len(requests), "")
    return out


def _batches(contexts, groups, requests, options: ScoringOptions):
    """Consecutive runs of ``contexts`` whose padded sizes fit the budgets (a run holds at least one context)."""
    batch: list[Tokens] = []
    ctx_len = cont_len = n_rows = 0
    for ctx in contexts:
        rows = len(groups[ctx])
        longest = max(len(requests[i][1]) for i in groups[ctx]) - 1
        new_ctx, new_cont, new_rows = max(ctx_len, len(ctx)), max(cont_len, longest), n_rows + rows
        fits = (new_ctx * (len(batch) + 1) <= options.batch_tokens
                and new_cont * new_rows <= options.batch_tokens
                and (new_cont == 0 or new_ctx * new_rows <= options.cache_tokens))
        if batch and not fits:
            yield batch
            batch, new_ctx, new_cont, new_rows = [], len(ctx), longest, rows
        batch.append(ctx)
        ctx_len, cont_len, n_rows = new_ctx, new_cont, new_rows
    if batch:
        yield batch


def _score_batch(model, contexts: list[Tokens], continuations: list[Tokens], owner: list[int]) -> list[float]:
    """Scores of ``continuations[r]`` given ``contexts[owner[r]]``; see the module docstring for the two passes."""
    device = next(model.parameters()).device
    n_ctx, width = len(contexts), max(len(c) for c in contexts)
    ids = torch.zeros(n_ctx, width, dtype=torch.long)
    mask = torch.zeros(n_ctx, width, dtype=torch.long)
    for b, ctx in enumerate(contexts):  # left padding: every context ends at the last column
        ids[b, width - len(ctx):] = torch.tensor(ctx)
        mask[b, width - len(ctx):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    need_cache = any(len(c) > 1 for c in continuations)
    first = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=need_cache, logits_to_keep=1)
    owner_t = torch.tensor(owner, device=device)
    first_tokens = torch.tensor([c[0] for c in continuations], device=device)
    scores = _token_logprobs(first.logits[:, -1][owner_t], first_tokens)  # (rows,)
    if not need_cache:
        return scores.tolist()

    rows = [r for r, c in enumerate(continuations) if len(c) > 1]
    rows_t = torch.tensor(rows, device=device)
    length = max(len(continuations[r]) for r in rows) - 1
    cont_ids = torch.zeros(len(rows), length, dtype=torch.long)
    cont_mask = torch.zeros(len(rows), length, dtype=torch.long)
    targets = torch.zeros(len(rows), length, dtype=torch.long)
    for k, r in enumerate(rows):  # right padding: the cache's columns stay aligned
        cont = continuations[r]
        cont_ids[k, :len(cont) - 1] = torch.tensor(cont[:-1])
        cont_mask[k, :len(cont) - 1] = 1
        targets[k, :len(cont) - 1] = torch.tensor(cont[1:])
    cont_ids, cont_mask, targets = cont_ids.to(device), cont_mask.to(device), targets.to(device)
    row_owner = owner_t[rows_t]
    cache = _gather_cache(first.cache, row_owner, model.config)
    full_mask = torch.cat([mask[row_owner], cont_mask], dim=1)
    cont_positions = mask[row_owner].sum(-1, keepdim=True) + torch.arange(length, device=device)
    rest = model(input_ids=cont_ids, attention_mask=full_mask, position_ids=cont_positions, cache=cache,
                 use_cache=True)
    rest_scores = (_token_logprobs(rest.logits, targets) * cont_mask).sum(-1)  # (len(rows),)
    scores[rows_t] += rest_scores
    return scores.tolist()


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[target]`` in float32: ``(..., vocab)`` logits, ``(...)`` targets -> ``(...)``."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def _gather_cache(cache, index: torch.Tensor, config):
    """A new DynamicCache whose row ``r`` is row ``index[r]`` of ``cache`` (the source cache is left untouched)."""
    from transformers import DynamicCache

    data = [(layer.keys.index_select(0, index), layer.values.index_select(0, index)) for layer in cache.layers]
    return DynamicCache(ddp_cache_data=data, config=config)
