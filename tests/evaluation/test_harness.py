"""The cross-check against lm-evaluation-harness on the tiny model: our records against the harness's own logged
per-sample acc and acc_norm, and a comparison that refuses to run on mismatched items instead of shortening."""
import dataclasses

import pytest

from coa_lora.evaluation.scoring import evaluate_task
from coa_lora.evaluation.tasks import MCItem, Task
from coa_lora.models.loading import load_model, load_tokenizer

pytest.importorskip("lm_eval")
from coa_lora.evaluation.harness import Harness, compare, write_harness_task  # noqa: E402

TASK = Task("hand", (
    MCItem("Question: What do cows drink?\nAnswer:", ("milk", "water from the trough", "tea"), 1),
    MCItem("The capital of France is", ("Paris", "a big city in Europe"), 0),
    MCItem("", ("hello there", "x"), 0),
    MCItem("Short ", ("yes", "no"), 1),
    MCItem("The capital of France is", ("Lyon", "Marseille", "Nice"), 2),
    MCItem("Two plus two is", ("four", "a number that is even", "5"), 0),
    # The second shape: empty or short contexts with sentence-long choices, a choice repeated across items (the
    # harness runs identical requests once, we share their whole tree path) and choices sharing their first words.
    MCItem("", ("The child started crying because the child hurt their knee.",
                "The child hurt their knee because the child started crying."), 0),
    MCItem("Human: Can you help me?\nAssistant:", ("Sure, I am happy to help you with that today.",
                                                  "No, go away and stop asking me things."), 0),
    MCItem("Human: Can you help me?\nAssistant:", ("Sure, I am happy to help you with that today.",
                                                  "Sure, but only if you pay me a lot of money first."), 1),
), "test")


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """Our result and the harness's samples for TASK, on the same model object."""
    model, tok = load_model("tiny"), load_tokenizer("tiny")
    folder = tmp_path_factory.mktemp("harness")
    name = write_harness_task(TASK, folder)  # before the harness indexes the folder
    theirs, seconds = Harness(model, tok, batch_size=4, folder=folder).logprobs(name)
    assert seconds > 0
    return evaluate_task(model, tok, TASK), theirs


def test_our_scores_agree_with_the_harness_own_per_sample_metrics(both):
    ours, theirs = both
    diff = compare(ours, theirs)
    assert diff["differ_acc"] == diff["differ_acc_norm"] == diff["differ_pred"] == 0, diff
    assert diff["max_abs_logprob_diff"] < 1e-4
    assert diff["acc"] == diff["acc_harness"] and diff["acc_norm"] == diff["acc_norm_harness"]
    # The random model makes acc and acc_norm disagree on some item, so both metrics are really exercised.
    assert [i.correct for i in ours.items] != [i.correct_norm for i in ours.items]
    assert theirs.gold == tuple(item.gold for item in TASK.items)


def test_a_disagreeing_harness_metric_is_counted(both):
    ours, theirs = both
    flipped = dataclasses.replace(theirs, acc_norm=(1.0 - theirs.acc_norm[0],) + theirs.acc_norm[1:])
    diff = compare(ours, flipped)
    assert diff["differ_acc_norm"] == 1 and diff["differ_acc"] == 0


@pytest.mark.parametrize("damage, message", [
    (lambda t: dataclasses.replace(t, logprobs=t.logprobs[:-1]), "an item went missing"),
    (lambda t: dataclasses.replace(t, acc=t.acc[:-1]), "an item went missing"),
    (lambda t: dataclasses.replace(t, logprobs=(t.logprobs[0][:2],) + t.logprobs[1:]), "3 choices here and 2"),
    (lambda t: dataclasses.replace(t, contexts=t.contexts[::-1], gold=t.gold[::-1]), "is not the harness's item 0"),
])
def test_mismatched_samples_are_refused_not_shortened(both, damage, message):
    ours, theirs = both
    with pytest.raises(ValueError, match=message):
        compare(ours, damage(theirs))
