"""Fixtures shared by several test modules."""
import json

import pytest

# A hand-made multiple-choice task in the JSONL format `eval --tasks FILE` reads (gold: index of the right choice).
HAND_ROWS = [
    {"context": "Question: What do cows drink?\nAnswer:", "choices": ["milk", "water", "tea"], "gold": 1},
    {"context": "The capital of France is", "choices": ["Paris", "a big city in Europe"], "gold": 0},
    {"context": "2 + 2 =", "choices": ["4", "5", "22"], "gold": 0},
    {"context": "The opposite of hot is", "choices": ["cold", "warm"], "gold": 0},
]


@pytest.fixture()
def task_file(tmp_path):
    path = tmp_path / "hand.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in HAND_ROWS))
    return str(path)


@pytest.fixture()
def hand_rows():
    return [dict(row) for row in HAND_ROWS]
