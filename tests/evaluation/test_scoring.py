"""Scoring on the tiny model: harness tokenization, prefix-tree log-likelihoods against a plain forward, metrics,
limits, progress and cancellation."""
import math

import pytest
import torch

from coa_lora.evaluation.loglik import (EvaluationCancelled, ScoringOptions, continuation_logprobs, encode_pair,
                                        max_length, prefix_token_id)
from coa_lora.evaluation.scoring import (argmax, evaluate_task, item_result, mean_stderr, paired_difference,
                                        summarize)
from coa_lora.evaluation.tasks import MCItem, Task
from coa_lora.models.loading import load_model, load_tokenizer


@pytest.fixture(scope="module")
def model():
    return load_model("tiny")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def plain_logprob(model, ctx, cont):
    """The harness's computation for one request: one forward over context + continuation, log-softmax, sum."""
    ids = torch.tensor([list(ctx) + list(cont)[:-1]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return logprobs[-len(cont):].gather(-1, torch.tensor(cont)[:, None]).sum().item()


TASK = Task("hand", (
    MCItem("Question: What do cows drink?\nAnswer:", ("milk", "water from the trough", "tea"), 1),
    MCItem("The capital of France is", ("Paris", "a big city in Europe"), 0),
    MCItem("", ("hello there", "x"), 0),
    MCItem("Short ", ("yes", "no"), 1),  # trailing space moves into the continuation
    MCItem("", ("The cup fell because the cup", "The cup fell because the table"), 1, continuation="was weak."),
    MCItem("The capital of France is", ("Lyon", "Marseille", "Nice"), 2),  # same context as item 2
), "test")


# ---- tokenization ---------------------------------------------------------------------------------------------------

def test_encode_pair_splits_where_the_context_encoding_ends(tok):
    assert encode_pair(tok, "Answer:", " yes") == (tuple(tok.encode("Answer:")), tuple(tok.encode(" yes")))
    # "apple" + "s" merge into one token "apples": the harness counts it as continuation, losing the context's last
    # token's separate identity; we must do the same.
    ctx, cont = encode_pair(tok, "I like apple", "s a lot")
    whole = tok.encode("I like apples a lot")
    assert ctx == tuple(tok.encode("I like apple")) and cont == tuple(whole[len(ctx):])
    assert ctx + cont != tuple(whole)


def test_trailing_space_of_the_context_moves_to_the_continuation(tok):
    assert encode_pair(tok, "Answer: ", "yes") == encode_pair(tok, "Answer:", " yes")


def test_empty_context_conditions_on_the_prefix_token(tok):
    ctx, cont = encode_pair(tok, "", " hello")
    assert ctx == (prefix_token_id(tok),) and cont == tuple(tok.encode(" hello"))


def test_max_length_follows_the_model_config(model, tok):
    assert max_length(model, tok) == model.config.max_position_embeddings == 2048


# ---- log-likelihoods ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [ScoringOptions(), ScoringOptions(batch_tokens=8, row_tokens=8),
                                     ScoringOptions(batch_tokens=64, row_tokens=4),
                                     ScoringOptions(batch_tokens=1, row_tokens=1)])
def test_tree_scoring_equals_one_forward_per_request(model, tok, options):
    requests = [encode_pair(tok, c, k) for item in TASK.items for c, k in item.requests()]
    assert len({ctx for ctx, _ in requests}) < len(requests)  # contexts are shared
    assert any(len(cont) == 1 for _, cont in requests) and any(len(cont) > 2 for _, cont in requests)
    got = continuation_logprobs(model, requests, options)
    want = [plain_logprob(model, *r) for r in requests]
    assert got == pytest.approx(want, abs=1e-4)


def test_empty_request_is_refused(model):
    with pytest.raises(ValueError, match="Request 1 has an empty"):
        continuation_logprobs(model, [((1,), (2,)), ((1,), ())])


def test_scoring_options_are_validated():
    with pytest.raises(ValueError, match="batch_tokens must be a positive integer"):
        ScoringOptions(batch_tokens=0)


# ---- metrics --------------------------------------------------------------------------------------------------------

def test_acc_norm_divides_by_characters_and_ties_go_to_the_first():
    item = MCItem("c", ("a", "bbbb", "cc"), 1)
    r = item_result(item, [-2.0, -4.0, -2.0])
    assert r.pred == 0  # tie between 0 and 2: first wins (numpy.argmax)
    assert r.pred_norm == 1  # -2/1, -4/4 = -1, -2/2 = -1: first of the tie at -1
    assert not r.correct and r.correct_norm
    assert argmax([1, 3, 3]) == 1


def test_summary_matches_hand_computed_values():
    items = [item_result(MCItem("c", ("a", "b"), g), [-1.0, -2.0]) for g in (0, 1, 0, 0)]
    result = summarize("t", items)
    assert result.acc == 0.75 and result.n == 4 and result.chance == 0.5
    # sample sd of (1, 0, 1, 1) is 0.5, so the standard error is 0.5 / sqrt(4)
    assert result.acc_stderr == pytest.approx(0.25)
    assert math.isnan(mean_stderr([1.0]))


def test_evaluate_task_keeps_per_item_records_that_match_plain_scoring(model, tok):
    result = evaluate_task(model, tok, TASK)
    assert result.n == len(TASK.items) == len(result.items)
    for item, record in zip(TASK.items, result.items):
        want = [plain_logprob(model, *encode_pair(tok, c, k)) for c, k in item.requests()]
        assert record.logprobs == pytest.approx(want, abs=1e-4)
        assert (record.context, record.choices, record.gold) == (item.context, item.choices, item.gold)
        assert record.pred == argmax(want)
    assert result.acc == sum(r.pred == r.gold for r in result.items) / result.n


def test_too_long_items_name_the_row(model, tok):
    task = Task("long", (TASK.items[0], MCItem("word " * 3000, ("a", "b"), 0)), "test")
    with pytest.raises(ValueError, match="Task long, row 2: .* exceed the model's maximum length of 2048"):
        evaluate_task(model, tok, task)


def test_progress_reaches_the_total_and_cancellation_stops(model, tok):
    calls = []
    evaluate_task(model, tok, TASK, ScoringOptions(batch_tokens=8, row_tokens=8),
                  progress=lambda done, total, msg: calls.append((done, total, msg)))
    n_choices = sum(len(i.choices) for i in TASK.items)
    assert len(calls) > 1 and calls[-1] == (n_choices, n_choices, "hand")
    assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)

    asked = []

    def stop_after_two():
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(EvaluationCancelled):
        evaluate_task(model, tok, TASK, ScoringOptions(batch_tokens=8, row_tokens=8), should_stop=stop_after_two)
    assert len(asked) == 3


def test_streamed_items_arrive_in_task_order_and_end_at_the_whole_result(model, tok):
    whole = evaluate_task(model, tok, TASK)
    seen, calls = [], []
    streamed = evaluate_task(model, tok, TASK, on_items=seen.append, chunk_items=4,
                             progress=lambda done, total, msg: calls.append((done, total)))
    assert [r.n for r in seen] == [4, 6]  # a prefix of the task after each chunk of four items
    assert seen[0].items == streamed.items[:4] and seen[-1] == streamed
    assert seen[0].acc == sum(r.correct for r in whole.items[:4]) / 4
    for a, b in zip(whole.items, streamed.items):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4) and a.pred == b.pred
    n_choices = sum(len(i.choices) for i in TASK.items)
    assert calls[-1] == (n_choices, n_choices) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_paired_difference_counts_items_answered_differently():
    def result(correct):
        return summarize("t", [item_result(MCItem(f"q{i}", ("a", "b"), 0 if c else 1), [-1.0, -2.0])
                               for i, c in enumerate(correct)])

    a, b = result([1, 0, 0, 1, 0, 1, 0, 0]), result([1, 1, 0, 1, 1, 1, 0, 1])
    difference, stderr, needed = paired_difference(a, b)
    assert difference == pytest.approx(3 / 8)
    # per-item differences (0, 1, 0, 0, 1, 0, 0, 1): sd = sqrt(15/56), stderr = sd / sqrt(8)
    assert stderr == pytest.approx(math.sqrt(15 / 56 / 8))
    assert needed == math.ceil((2 * math.sqrt(15 / 56) / (3 / 8)) ** 2) == 8
    assert paired_difference(a, a)[2] == math.inf
    with pytest.raises(ValueError, match="different items"):
        paired_difference(a, result([1, 0]))


def test_limit_takes_the_first_items():
    assert TASK.head(2).items == TASK.items[:2] and TASK.head(None) is TASK
    with pytest.raises(ValueError, match="positive integer"):
        TASK.head(0)
