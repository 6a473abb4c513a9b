"""Requests packed as prefix trees into rows: each distinct token prefix is computed once (METHOD.md §8).

A multiple-choice item asks for ``log p(continuation | context)`` of every choice. The inputs of its requests,
``context + continuation[:-1]``, share the context and often the first tokens of the choices (and items of one
task may share a context or a whole choice). Merging the requests of one context into a prefix tree (a trie) and
laying its nodes out in one row, each node attending only to its ancestors (itself included) and sitting at
position = its depth, gives every node exactly the hidden state a plain causal forward over that one request would
give: one forward of the row scores all its requests, with no token computed twice and no padding inside a row.

Worked example: context ``(5, 6)`` with continuations ``(7, 8)`` and ``(7, 9, 4)`` makes the row
``tokens (5, 6, 7, 9)``, ``parents (-1, 0, 1, 2)``, ``depths (0, 1, 2, 3)``; node 1 predicts 7 for both requests,
node 2 predicts 8 for the first and 9 for the second, node 3 predicts 4 for the second.

Requests are grouped by context; a group becomes one tree, or several when it is much longer than its context
(:func:`split_group`); trees are packed whole into rows of ``row_tokens`` nodes (longest first, first fit).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

Tokens = tuple[int, ...]


@dataclass(frozen=True)
class Row:
    """One packed row.

    Attributes:
        tokens: ``(n,)`` input token of each node.
        parents: ``(n,)`` index of each node's parent in the row, -1 for a root.
        depths: ``(n,)`` position of each node in its request's sequence (0 for a root).
        targets: ``(node, token, request)`` triples: node ``node``'s next-token distribution scores ``token`` for
            request ``request`` (one triple per continuation token of every request in the row).
    """

    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    depths: tuple[int, ...]
    targets: tuple[tuple[int, int, int], ...]

    @property
    def requests(self) -> set[int]:
        return {r for _, _, r in self.targets}


def group_tree(context: Tokens, continuations: Sequence[tuple[int, Tokens]]) -> Row:
    """The prefix tree of one context and its continuations, as a row of its own.

    Args:
        context: the shared context (non-empty).
        continuations: ``(request index, continuation tokens)`` pairs, each continuation non-empty.
    """
    tokens = list(context)
    parents = list(range(-1, len(context) - 1))
    depths = list(range(len(context)))
    targets = []
    children: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    for request, cont in continuations:
        node = len(context) - 1
        for j, token in enumerate(cont):
            targets.append((node, token, request))
            if j == len(cont) - 1:
                break  # the last token is only predicted, never an input
            if (node, token) not in children:
                children[(node, token)] = len(tokens)
                tokens.append(token)
                parents.append(node)
                depths.append(len(context) + j)
            node = children[(node, token)]
    return Row(tuple(tokens), tuple(parents), tuple(depths), tuple(targets))


def concatenate(trees: Sequence[Row]) -> Row:
    """One row holding ``trees`` side by side (node indices shifted; depths unchanged)."""
    tokens, parents, depths, targets = [], [], [], []
    for tree in trees:
        shift = len(tokens)
        tokens += tree.tokens
        parents += [p + shift if p >= 0 else -1 for p in tree.parents]
        depths += tree.depths
        targets += [(node + shift, token, request) for node, token, request in tree.targets]
    return Row(tuple(tokens), tuple(parents), tuple(depths), tuple(targets))


def split_group(context: Tokens, continuations: Sequence[tuple[int, Tokens]], row_tokens: int) -> list[Row]:
    """The trees of one context, its continuations split into runs whose tree fits ``max(row_tokens, 4 x context)``.

    A context shared by many long continuations (one question, many answers) would make one very long row, and
    attention under a tree mask costs row length squared; a new row instead costs recomputing the context. For a
    model of hidden size d one token's linear layers cost about as much as 6d attended pairs (3,500 for SmolLM2),
    so splitting pays once a tree is several times longer than its context, hence the factor 4.
    Continuations are sorted first, so the trees (and the rounding of every score) do not depend on request order.
    """
    limit = max(row_tokens, 4 * len(context))
    runs: list[list[tuple[int, Tokens]]] = [[]]
    size, previous = len(context), ()
    for request, cont in sorted(continuations, key=lambda rc: rc[1]):
        shared = 0  # inputs (cont[:-1]) already in the tree: the common prefix with the previous, sorted neighbour
        while shared < min(len(previous), len(cont)) - 1 and previous[shared] == cont[shared]:
            shared += 1
        added = len(cont) - 1 - shared
        if runs[-1] and size + added > limit:
            runs.append([])
            size, added = len(context), len(cont) - 1
        runs[-1].append((request, cont))
        size += added
        previous = cont
    return [group_tree(context, run) for run in runs]


def pack_rows(requests: Sequence[tuple[Tokens, Tokens]], row_tokens: int) -> list[Row]:
    """Pack ``requests`` (``(context, continuation)`` token tuples, both non-empty) into rows.

    Each context's trees (:func:`split_group`) go, longest first, into the first row with room; a row holds at
    most ``row_tokens`` nodes, or one tree when that tree is longer. Rows come out longest first.
    """
    groups: dict[Tokens, list[tuple[int, Tokens]]] = {}
    for i, (ctx, cont) in enumerate(requests):
        groups.setdefault(ctx, []).append((i, cont))
    trees = sorted((tree for ctx, conts in groups.items() for tree in split_group(ctx, conts, row_tokens)),
                   key=lambda t: -len(t.tokens))
    bins: list[list[Row]] = []
    room: list[int] = []
    for tree in trees:
        row = next((b for b, free in enumerate(room) if free >= len(tree.tokens)), None)
        if row is None:
            bins.append([])
            room.append(max(row_tokens, len(tree.tokens)))
            row = len(bins) - 1
        bins[row].append(tree)
        room[row] -= len(tree.tokens)
    return sorted((concatenate(members) for members in bins), key=lambda r: -len(r.tokens))


def ancestor_mask(parents: Sequence[int], width: int) -> torch.Tensor:
    """``(width, width)`` bool: ``[i, j]`` is True when node ``j`` is node ``i`` or one of its ancestors.

    Nodes past ``len(parents)`` (padding) see only themselves, so no attention row is empty. Parents must come
    before their children (as :func:`group_tree` lays them out).
    """
    mask = torch.eye(width, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            mask[i, :p + 1] |= mask[p, :p + 1]
    return mask
