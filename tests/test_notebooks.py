"""The tutorial notebooks (notebooks/): each runs top to bottom with its defaults, and its committed .ipynb carries no
outputs and matches its jupytext twin (the reviewable .py in percent format), cell for cell.

Executing a notebook loads SmolLM2 (marker ``smollm2``) and takes 15–90 s on 2 CPU cores; ``COA_NOTEBOOK_TIMEOUT``
bounds each cell (default 600 s).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def test_there_are_five_notebooks_each_with_its_twin():
    assert len(NAMES) == 5
    assert sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_ipynb_matches_its_py_twin_and_carries_no_outputs(name):
    ipynb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    text = jupytext.read(NOTEBOOKS / f"{name}.py")
    def cells(nb):
        return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]

    assert cells(ipynb) == cells(text), (
        f"{name}.ipynb and {name}.py differ: run `jupytext --sync notebooks/{name}.py`.")
    code = [c for c in ipynb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), (
        f"{name}.ipynb carries outputs: strip them (`jupytext --to ipynb notebooks/{name}.py`).")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_has_a_plotly_figure_a_notice_and_an_exercise(name):
    cells = jupytext.read(NOTEBOOKS / f"{name}.py").cells
    code = "\n".join(c.source for c in cells if c.cell_type == "code")
    markdown = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    assert "plots." in code and ".show()" in code
    assert "**Notice:**" in markdown and "## Try this" in markdown
    assert any("key-figure" in c.metadata.get("tags", []) for c in cells), "tag the cell of the README's figure"


# Smaller inputs where a loop only repeats the same work (every cell still runs, every figure is still drawn; the
# notebooks keep their defaults for readers): one perplexity budget instead of two (02, 03), one preset instead of two
# (05: its loop evaluates the same three columns per preset), 2 zero-shot items instead of 6, 4 tiny training steps
# instead of 12 (03: still one evaluation, at step 4, for its training figure).
TEST_PARAMETERS = {"02_allocator": "PPL_BUDGETS = (3.0,)",
                   "03_coa_lora": "TINY_STEPS = 4\nBUDGETS = (3.0,)",
                   "05_evaluate_deploy": "ITEMS = 2\nPRESET_NAMES = (\"nf4\",)"}


@pytest.mark.smollm2
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name, tmp_path):
    """Executed as JupyterLab would (the notebook's folder as working directory), with its default parameters except
    TEST_PARAMETERS."""
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    if name in TEST_PARAMETERS:  # after the parameters cell, as papermill injects them
        at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        nb.cells.insert(at + 1, nbformat.v4.new_code_cell(TEST_PARAMETERS[name],
                                                          metadata={"tags": ["injected-parameters"]}))
    client = NotebookClient(nb, timeout=int(os.environ.get("COA_NOTEBOOK_TIMEOUT", "600")), kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures, f"{name} showed no interactive plotly figure"
    print(f"{name}: {seconds:.1f} s")
    if os.environ.get("COA_NOTEBOOK_TIMINGS"):  # a folder: each cell's time, for finding where the suite's time goes
        timings = {"total": seconds, "cells": [[c.source.splitlines()[0][:80] if c.source else "", _cell_seconds(c)]
                                               for c in nb.cells if c.cell_type == "code"]}
        out = Path(os.environ["COA_NOTEBOOK_TIMINGS"])
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(timings, indent=1))


def _cell_seconds(cell) -> float:
    """Seconds from the kernel's start of a cell to its reply (nbclient records both)."""
    from datetime import datetime

    e = cell.metadata.get("execution", {})
    start, end = e.get("iopub.execute_input"), e.get("shell.execute_reply")
    if not (start and end):
        return float("nan")
    return (datetime.fromisoformat(end.replace("Z", "+00:00")) -
            datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
