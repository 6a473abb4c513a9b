"""The allocation grid: every answer it gives is the exact allocator's optimum, it survives the disk, and a corrupt
cache entry is solved again."""
import pytest
import torch

from coa_lora import Allocator, Workbench
from coa_lora.configs.allocation_grid import (GridAllocator, grid_budgets, grid_path, install_shipped, live_path,
                                              load_grid, read_live, shipped_dir, solve_grid, write_grid)


def test_grid_budgets_are_the_step_multiples_inside_the_range():
    assert grid_budgets(2.032, 2.3, 0.05) == [2.05, 2.1, 2.15, 2.2, 2.25, 2.3]
    assert grid_budgets(2.0, 2.0, 0.05) == [2.0]


@pytest.fixture(scope="module")
def tiny():
    wb = Workbench.load("tiny")
    return wb, solve_grid(wb.allocator(), step=0.5)


def test_grid_answers_equal_the_exact_allocator_at_every_budget(tiny):
    wb, grid = tiny
    allocator = wb.allocator()
    assert torch.all(grid.avg_bits <= grid.budgets + 1e-12) and len(grid.budgets) == 13
    fast = GridAllocator(allocator, grid)
    # Budgets between grid points, and the grid points themselves: the grid's answer has the exact optimum's damage.
    for b in [3.0, 3.2, 4.0, 4.37, 5.5, 7.9]:
        exact = Allocator(wb.layout, wb.damage_table().values).allocate(b)  # a fresh solve, no grid, no memo
        answer = fast.allocate(b)
        assert answer.avg_bits <= b + 1e-12 and answer.exact == exact.exact
        assert abs(answer.damage - exact.damage) <= 1e-9 * max(1.0, exact.damage), b
    before = fast.live
    for b in grid.budgets.tolist():
        fast.allocate(b)
    assert fast.live == before  # on the grid itself no live solve is ever needed


def test_grid_round_trips_through_the_disk_and_a_corrupt_file_is_solved_again(tiny, tmp_path):
    wb, grid = tiny
    key = wb.damage_table().key
    path = grid_path(tmp_path, key, 0.5)
    assert load_grid(key, tmp_path, len(wb.layout), 0.5) is None
    write_grid(path, grid, key, 0.5)
    again = load_grid(key, tmp_path, len(wb.layout), 0.5)
    assert torch.equal(again.options, grid.options) and torch.equal(again.damage, grid.damage)
    path.write_bytes(b"not a safetensors file")
    assert load_grid(key, tmp_path, len(wb.layout), 0.5) is None  # never trusted: solved again by load_or_solve


def test_shipped_tables_and_grids_install_whole_once(tmp_path):
    shipped = sorted(shipped_dir().glob("*.safetensors"))
    assert shipped  # SmolLM2's damage table and grid ship with the source
    copied = install_shipped(tmp_path)
    assert sorted(p.name for p in copied) == [p.name for p in shipped]
    assert all(dst.read_bytes() == (shipped_dir() / dst.name).read_bytes() for dst in copied)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p not in copied]  # no temporary file left behind
    assert install_shipped(tmp_path) == []  # present files are kept, not rewritten


def test_live_answers_are_kept_on_disk_for_the_next_process(tiny, tmp_path):
    wb, _ = tiny
    store = live_path(tmp_path, wb.damage_table().key)
    first = GridAllocator(wb.allocator(), store=store)
    answers = {b: first.allocate(b) for b in (3.3, 4.6)}
    assert first.live == 2 and store.is_file()
    again = GridAllocator(wb.allocator(), store=store)  # as a new process would build it: nothing solved
    for b, a in answers.items():
        got = again.allocate(b)
        assert got.config.key() == a.config.key() and got.damage == a.damage
    # The saved answers cover the budgets below them by the grid's rule (exact there too): still no solve.
    lower = again.allocate(answers[4.6].avg_bits)
    assert again.live == 0 and lower.config.key() == answers[4.6].config.key()
    # A third allocator adds its answer to the file, not over it.
    GridAllocator(wb.allocator(), store=store).allocate(2.9)
    assert sorted(a.budget for a in read_live(store, wb.layout)) == [2.9, 3.3, 4.6]
    store.write_bytes(b"not a safetensors file")
    assert read_live(store, wb.layout) == [] and GridAllocator(wb.allocator(), store=store).allocate(3.3).exact
