"""Log-likelihood of continuations given contexts, as lm-evaluation-harness computes it, but faster (METHOD.md §8).

The harness runs one forward pass over ``context + continuation`` for every choice of every item and takes a
log-softmax over the whole vocabulary at every position. Here the requests of each context are merged into a
prefix tree and packed into rows (:mod:`coa_lora.evaluation.token_tree`): every distinct token prefix runs once, each
node attending to its ancestors through a 4D attention mask at position = its depth, and logits are only formed at
nodes that predict a continuation token. That one mechanism is fast on both common task shapes: long shared
contexts with short continuations (the context runs once for all choices) and short or empty contexts with long
continuations (no per-choice cache copies, no padding inside a row, one forward for many items).

Tokenization follows the harness exactly (:func:`encode_pair`), so the numbers are the harness's up to rounding
(about 1e-5 in log-probability on float32).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from coa_lora.evaluation.token_tree import Row, ancestor_mask, pack_rows
from coa_lora.progress import ProgressFn, report

Tokens = tuple[int, ...]
StopFn = Callable[[], bool]


class EvaluationCancelled(RuntimeError):
    """Raised between batches when the caller's ``should_stop()`` returns True; nothing partial is returned."""


@dataclass(frozen=True)
class ScoringOptions:
    """Batch sizes of the scorer. Results do not depend on them beyond floating-point rounding."""

    # Padded tokens per forward pass: bounds activation memory (and the logits, up to batch_tokens x vocabulary
    # floats: 200 MB for SmolLM2 at 1024); larger batches amortise per-call overhead.
    batch_tokens: int = 1024
    # Nodes per packed row (a context's whole tree may exceed it): attention under the tree mask costs row length
    # squared, so short rows waste little on masked-out pairs while still holding several items each.
    row_tokens: int = 256

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "row_tokens"):
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
        model: a causal LM (transformers, accepting a 4D ``attention_mask``, ``position_ids`` and a boolean
            ``logits_to_keep``), in eval mode.
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
    rows = pack_rows(requests, options.row_tokens)
    out = [0.0] * len(requests)
    done = 0
    for batch in _batches(rows, options.batch_tokens):
        if should_stop is not None and should_stop():
            raise EvaluationCancelled("Evaluation cancelled.")
        for request, value in _score_rows(model, batch).items():
            out[request] = value
        done += sum(len(row.requests) for row in batch)
        report(progress, done, len(requests), "")
    return out


def _batches(rows: list[Row], batch_tokens: int):
    """Consecutive runs of ``rows`` (longest first) whose padded size fits ``batch_tokens`` (at least one row)."""
    batch: list[Row] = []
    for row in rows:
        if batch and len(batch[0].tokens) * (len(batch) + 1) > batch_tokens:
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


def _score_rows(model, rows: list[Row]) -> dict[int, float]:
    """``{request: summed log-probability}`` of every request in ``rows``, from one forward pass."""
    device = next(model.parameters()).device
    dtype = model.get_input_embeddings().weight.dtype
    width = len(rows[0].tokens)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    allowed = torch.zeros(len(rows), 1, width, width, dtype=torch.bool)
    keep = torch.zeros(len(rows), width, dtype=torch.bool)
    nodes, tokens, owners = [], [], []
    for b, row in enumerate(rows):
        n = len(row.tokens)
        ids[b, :n] = torch.tensor(row.tokens)
        positions[b, :n] = torch.tensor(row.depths)
        allowed[b, 0] = ancestor_mask(row.parents, width)
        for node, token, request in row.targets:
            keep[b, node] = True
            nodes.append(b * width + node)
            tokens.append(token)
            owners.append(request)
    # An additive float mask works with every attention implementation (eager adds it, SDPA takes it as is).
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                   logits_to_keep=keep.to(device), use_cache=False).logits  # (kept nodes, vocab)
    # Row-major rank of each kept node among the kept ones = its row in ``logits``.
    rank = keep.flatten().cumsum(0) - 1
    index = rank[torch.tensor(nodes)].to(device)
    logits = logits.float()
    values = logits[index, torch.tensor(tokens, device=device)] - logits.logsumexp(-1)[index]
    requests = sorted(set(owners))
    slot = {r: k for k, r in enumerate(requests)}
    sums = torch.zeros(len(requests), device=device).index_add_(
        0, torch.tensor([slot[r] for r in owners], device=device), values)
    return dict(zip(requests, sums.tolist()))
