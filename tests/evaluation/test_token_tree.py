"""Prefix trees of requests, worked out by hand: nodes, parents, depths, targets, splitting, packing and masks."""
import torch

from coa_lora.evaluation.token_tree import ancestor_mask, concatenate, group_tree, pack_rows, split_group


def test_the_docstring_example():
    tree = group_tree((5, 6), [(0, (7, 8)), (1, (7, 9, 4))])
    assert tree.tokens == (5, 6, 7, 9) and tree.parents == (-1, 0, 1, 2) and tree.depths == (0, 1, 2, 3)
    # Node 1 (the context's last token) predicts both first tokens; node 2 ("7") predicts 8 and 9; node 3 predicts 4.
    assert tree.targets == ((1, 7, 0), (2, 8, 0), (1, 7, 1), (2, 9, 1), (3, 4, 1))


def test_identical_and_one_token_requests_add_no_node():
    tree = group_tree((5,), [(0, (7, 8)), (1, (7, 8)), (2, (3,))])
    assert tree.tokens == (5, 7) and tree.parents == (-1, 0)
    assert tree.targets == ((0, 7, 0), (1, 8, 0), (0, 7, 1), (1, 8, 1), (0, 3, 2))


def test_branches_sit_at_their_depth_under_their_parent():
    tree = group_tree((1, 2), [(0, (3, 4, 5)), (1, (6, 7, 8))])
    assert tree.tokens == (1, 2, 3, 4, 6, 7)
    assert tree.parents == (-1, 0, 1, 2, 1, 4) and tree.depths == (0, 1, 2, 3, 2, 3)


def test_concatenation_shifts_nodes_but_not_depths():
    a, b = group_tree((1,), [(0, (2, 3))]), group_tree((4, 5), [(1, (6,))])
    row = concatenate([a, b])
    assert row.tokens == (1, 2, 4, 5) and row.parents == (-1, 0, -1, 2) and row.depths == (0, 1, 0, 1)
    assert row.targets == ((0, 2, 0), (1, 3, 0), (3, 6, 1)) and row.requests == {0, 1}


def test_ancestor_mask_by_hand():
    # 0 <- 1 <- 2, 1 <- 3 (a branch), then one padding node.
    got = ancestor_mask((-1, 0, 1, 1), 5)
    want = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 0, 1, 0],  # the branch does not see its sibling
        [0, 0, 0, 0, 1],  # padding sees only itself, so no attention row is empty
    ], dtype=torch.bool)
    assert torch.equal(got, want)


def test_a_long_group_is_split_and_each_part_repeats_the_context():
    # Context of 2 tokens, four continuations of 3 tokens (2 input nodes each, no shared prefix): one tree would hold
    # 2 + 8 = 10 nodes; the limit is max(row_tokens=6, 4 x 2 = 8), so the trees hold 2 + 6 and 2 + 2 nodes.
    conts = [(i, (10 * i + 1, 10 * i + 2, 10 * i + 3)) for i in range(1, 5)]
    trees = split_group((7, 8), conts, row_tokens=6)
    assert [len(t.tokens) for t in trees] == [8, 4]
    assert all(t.tokens[:2] == (7, 8) for t in trees)
    assert [t.requests for t in trees] == [{1, 2, 3}, {4}]
    # A long context is not split: recomputing it would cost more than the attention it saves.
    assert len(split_group(tuple(range(100, 110)), conts, row_tokens=6)) == 1


def test_shared_prefixes_count_once_when_splitting():
    # Sorted continuations share their first input token: 2 + 1 + 1 + 1 = 5 nodes fit a limit of 5.
    trees = split_group((1,), [(0, (9, 2, 0)), (1, (9, 3, 0)), (2, (9, 4, 0))], row_tokens=5)
    assert len(trees) == 1 and len(trees[0].tokens) == 5


def test_packing_keeps_every_target_once_and_respects_the_row_size():
    requests = [((1, 2), (3, 4)), ((1, 2), (3, 5, 6)), ((7,), (8,)), ((9, 9, 9), (1, 1)), ((7,), (2, 2))]
    rows = pack_rows(requests, row_tokens=6)
    # Trees: (1, 2) -> 1, 2, 3, 5 (4 nodes); (9, 9, 9) -> 4 nodes; (7,) -> 7, 2 (2 nodes). Longest first, first fit:
    # [4 + 2] and [4].
    assert [len(r.tokens) for r in rows] == [6, 4]
    targets = sorted((req, tok) for r in rows for _, tok, req in r.targets)
    assert targets == sorted((i, t) for i, (_, cont) in enumerate(requests) for t in cont)
    for row in rows:
        for node, _, _ in row.targets:
            assert 0 <= node < len(row.tokens)
