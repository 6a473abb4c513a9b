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


@pytest.fixture(scope="session")
def _smollm2_session():
    from coa_lora import Workbench
    from coa_lora.models import AssetMissingError

    try:
        return Workbench.load("smollm2")
    except AssetMissingError:
        pytest.skip("assets not prepared: run `python -m coa_lora prepare`")


@pytest.fixture()
def smollm2_wb(_smollm2_session):
    """The embedded SmolLM2 Workbench, loaded once per test process and shared: a test may apply configurations and
    wrap adapters, and must remove its adapters (``coa.remove_()``); the unquantized weights are put back after it."""
    from coa_lora import LoraLinear

    yield _smollm2_session
    _smollm2_session.qmodel.restore_()
    assert not any(isinstance(m, LoraLinear) for m in _smollm2_session.model.modules()), (
        "a test left an adapter wrapped around the shared SmolLM2: call remove_() on it")


def pytest_configure(config):
    # Under pytest-xdist each worker is one of two processes on two cores: one torch thread each (and in what they
    # start) uses the cores without oversubscribing them.
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


# The longest tests (about 20-70 s each on 2 cores), started first: with two xdist workers the suite ends when the
# last long test ends, so these must not be left for the end (longest-first is the classic schedule for that).
LONGEST_FIRST = (
    "tests/test_notebooks.py::test_notebook_runs_top_to_bottom",
    "tests/search/test_in_run.py::test_a_run_killed",
    "tests/test_distributed.py",
    "tests/compare/test_compare.py::test_a_killed",
    "tests/test_browser.py",
    "tests/lora/test_trainer.py::test_resume_after_sigkill",
    "tests/compare/test_compare.py::test_quick",
    "tests/search/test_rounds.py::test_search_beats_random",
    "tests/configs/test_allocate.py::test_pruned_milp",
    "tests/quant/test_kernels.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        hits = [i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)]
        return hits[0] if hits else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its file order
