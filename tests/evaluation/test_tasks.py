"""Task formats: items, the generic JSONL format, harness templates on hand-written rows, BIG-bench prompts."""
import json

import numpy as np
import pytest

from coa_lora.evaluation.bigbench import format_example, read_task
from coa_lora.evaluation.tasks import (EMBEDDED_DIR, HARNESS_TASKS, MCItem, embedded_tasks, harness_task,
                                       hellaswag_preprocess, load_embedded, load_jsonl, load_task)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---- items ----------------------------------------------------------------------------------------------------------

def test_requests_put_the_delimiter_before_each_choice():
    item = MCItem("Question: 2 + 2 =\nAnswer:", ("4", "5"), 0)
    assert item.requests() == [("Question: 2 + 2 =\nAnswer:", " 4"), ("Question: 2 + 2 =\nAnswer:", " 5")]


def test_partial_scoring_requests_complete_the_context_with_each_choice():
    item = MCItem("", ("The cup fell because the cup", "The cup fell because the table"), 1, continuation="was weak.")
    assert item.requests() == [("The cup fell because the cup", " was weak."),
                               ("The cup fell because the table", " was weak.")]


@pytest.mark.parametrize("choices, gold, message", [
    (("only",), 0, "at least 2 choices"),
    (("a", "b"), 2, "gold must be an index"),
    (("a", "b"), True, "gold must be an index"),
    (("a", "b"), "0", "gold must be an index"),
    (("a", 3), 0, "must be strings"),
])
def test_bad_items_are_refused(choices, gold, message):
    with pytest.raises(ValueError, match=message):
        MCItem("ctx", choices, gold)


# ---- generic JSONL --------------------------------------------------------------------------------------------------

def test_jsonl_round_trip(tmp_path):
    rows = [{"context": "Q: sky?\nA:", "choices": ["blue", "green"], "gold": 0},
            {"context": "", "choices": ["He said", "She said"], "gold": 1, "continuation": "hello."}]
    task = load_jsonl(write_jsonl(tmp_path / "mine.jsonl", rows))
    assert task.name == "mine" and [i.to_dict() for i in task.items] == rows
    assert task.chance == 0.5
    assert load_task(str(tmp_path / "mine.jsonl"), limit=1).items == task.items[:1]


def test_fingerprint_follows_content(tmp_path):
    a = load_jsonl(write_jsonl(tmp_path / "a.jsonl", [{"context": "x", "choices": ["1", "2"], "gold": 0}]))
    b = load_jsonl(write_jsonl(tmp_path / "b.jsonl", [{"context": "x", "choices": ["1", "2"], "gold": 1}]))
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == load_jsonl(tmp_path / "a.jsonl").fingerprint


@pytest.mark.parametrize("rows, message", [
    ([], "Task bad: .* holds no items"),
    (["", "   "], "holds no items"),
    ([{"context": "x", "choices": ["a", "b"], "gold": 0}, "{not json"], "Task bad, row 2: not valid JSON"),
    ([{"context": "x", "choices": ["a"], "gold": 0}], "Task bad, row 1: An item needs at least 2 choices"),
    ([{"context": "x", "choices": ["a", "b"]}], "Task bad, row 1: missing field\\(s\\) gold"),
    ([{"context": "x", "choices": "ab", "gold": 0}], "Task bad, row 1: choices must be a list"),
    (["[1, 2]"], "Task bad, row 1: expected a JSON object"),
])
def test_malformed_files_name_the_task_and_row(tmp_path, rows, message):
    with pytest.raises(ValueError, match=message):
        load_jsonl(write_jsonl(tmp_path / "bad.jsonl", rows))


def test_unknown_task_lists_what_exists():
    with pytest.raises(ValueError, match="Unknown task 'nope'.*piqa"):
        load_task("nope")
    with pytest.raises(ValueError, match="does not exist"):
        load_task("missing/file.jsonl")


# ---- harness templates (lm_eval 0.4.13 YAMLs) on rows written in each dataset's schema -----------------------------

def one(name, doc):
    return harness_task(name, [doc]).items[0]


def test_piqa_template():
    item = one("piqa", {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0})
    assert item == MCItem("Question: Open a jar\nAnswer:", ("Twist the lid.", "Eat the lid."), 0)


@pytest.mark.parametrize("name", ["arc_easy", "arc_challenge"])
def test_arc_template_with_letter_and_digit_keys(name):
    doc = {"question": "Which is a gas?", "answerKey": "B",
           "choices": {"text": ["ice", "steam", "rock"], "label": ["A", "B", "C"]}}
    assert one(name, doc) == MCItem("Question: Which is a gas?\nAnswer:", ("ice", "steam", "rock"), 1)
    doc = {**doc, "answerKey": "3", "choices": {"text": ["ice", "steam", "air"], "label": ["1", "2", "3"]}}
    assert one(name, doc).gold == 2


def test_hellaswag_template_cleans_wikihow_artifacts():
    doc = {"activity_label": "Baking cookies", "ctx_a": "A woman mixes flour.", "ctx_b": "she",
           "endings": ["pours it [title] into a bowl.", "  sings  [step] loudly. "], "label": "1"}
    item = one("hellaswag", doc)
    assert item.context == "Baking cookies: A woman mixes flour. She"
    assert item.choices == ("pours it. into a bowl.", "sings  loudly.")  # one pass of "  " -> " ", as the harness
    assert item.gold == 1
    assert hellaswag_preprocess(" a [title] b [x] c ") == "a. b c"


def test_hellaswag_cleaning_matches_the_harness_code():
    harness = pytest.importorskip("lm_eval.tasks.hellaswag.utils")
    for text in ["pours it [title] into a bowl.", "  sings  [step] loudly. ", "a [title] [b]  [c]   d"]:
        assert hellaswag_preprocess(text) == harness.preprocess(text)


def test_boolq_template():
    doc = {"passage": "Cats are mammals.", "question": "is a cat a mammal", "label": 1}
    assert one("boolq", doc) == MCItem("Cats are mammals.\nQuestion: is a cat a mammal?\nAnswer:", ("no", "yes"), 1)


def test_winogrande_template_scores_the_suffix():
    doc = {"sentence": "The trophy didn't fit in the suitcase because the _ was too big.",
           "option1": "trophy", "option2": "suitcase", "answer": "1"}
    item = one("winogrande", doc)
    assert item.choices == ("The trophy didn't fit in the suitcase because the trophy",
                            "The trophy didn't fit in the suitcase because the suitcase")
    assert item.continuation == "was too big." and item.gold == 0 and item.context == ""


def test_social_iqa_template():
    doc = {"context": "Tom gave Ann a gift.", "question": "How would Ann feel?", "answerA": "happy",
           "answerB": "angry", "answerC": "bored", "label": "1"}
    assert one("social_iqa", doc) == MCItem("Q: Tom gave Ann a gift. How would Ann feel?\nA:",
                                            ("happy", "angry", "bored"), 0)


def test_openbookqa_template():
    doc = {"question_stem": "The sun is a", "answerKey": " D",
           "choices": {"text": ["moon", "planet", "comet", "star"], "label": ["A", "B", "C", "D"]}}
    assert one("openbookqa", doc) == MCItem("The sun is a", ("moon", "planet", "comet", "star"), 3)


def test_harness_rows_in_the_wrong_schema_name_the_row():
    assert set(HARNESS_TASKS) == {"piqa", "arc_easy", "arc_challenge", "hellaswag", "boolq", "winogrande",
                                  "social_iqa", "openbookqa"}
    with pytest.raises(ValueError, match="Task piqa, row 2: does not match"):
        harness_task("piqa", [{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}, {"question": "q"}])


# ---- BIG-bench ------------------------------------------------------------------------------------------------------

def test_bigbench_prompt_with_appended_choices_in_bigbench_order():
    example = {"input": "What colour is the sky?", "target_scores": {"red": 0, "green": 0, "blue": 1}}
    item = format_example(example, {"task_prefix": "Answer the question.\n"})
    order = list(np.random.RandomState(seed=42).permutation(["blue", "green", "red"]))
    assert order == ["blue", "green", "red"]
    assert item.context == ("Answer the question.\n\nQ: What colour is the sky?"
                            "\n  choice: blue\n  choice: green\n  choice: red\nA:")
    assert item.choices == ("red", "green", "blue") and item.gold == 2


def test_bigbench_prompt_without_choices_and_first_top_score_wins():
    example = {"input": "Is it raining?", "target_scores": {"yes": 1, "no": 1, "maybe": 0}}
    item = format_example(example, {"append_choices_to_input": False, "example_output_prefix": "\nAnswer: "})
    assert item.context == "Q: Is it raining?\nAnswer:"
    assert item.gold == 0


def test_bigbench_prompt_ending_in_a_space_gets_one_space_before_the_answer():
    # unit_conversion's format: empty output prefix, the input itself ends in "is "; the harness's delimiter adds the
    # space, so the context must not keep its own (the continuation would start with two spaces).
    example = {"input": "23.5 daN expressed in units of N is ", "target_scores": {"120.0 N.": 0, "235.0 N.": 1}}
    item = format_example(example, {"append_choices_to_input": False, "example_input_prefix": "\n",
                                    "example_output_prefix": "", "choice_prefix": ""})
    assert item.context == "23.5 daN expressed in units of N is" and item.requests()[1][1] == " 235.0 N."
    assert item.gold == 1


def test_read_task_drops_duplicates_and_non_choice_examples(tmp_path):
    examples = [{"input": "a", "target_scores": {"x": 1, "y": 0}}, {"input": "a", "target_scores": {"x": 1, "y": 0}},
                {"input": "b", "target": "free text"}, {"input": "c", "target_scores": {"x": 0, "y": 1}}]
    path = tmp_path / "task.json"
    path.write_text(json.dumps({"canary": "GUID", "examples": examples}))
    items, meta = read_task(path)
    assert [i.gold for i in items] == [0, 1] and meta == {"canary": "GUID"}
    path.write_text(json.dumps({"examples": examples[2:3]}))
    with pytest.raises(ValueError, match="holds no multiple-choice example"):
        read_task(path)


def test_embedded_tasks_are_shipped_with_canary_and_licence():
    names = embedded_tasks()
    assert 3 <= len(names) <= 4
    assert (EMBEDDED_DIR / "LICENSE").is_file()
    for name in names:
        raw = json.loads((EMBEDDED_DIR / f"{name}.json").read_text())
        assert "canary GUID" in raw["canary"]
        task = load_embedded(name)
        assert len(task.items) >= 300
        assert load_task(name, limit=10).items == task.items[:10]
