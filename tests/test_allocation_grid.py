"""The allocation grid: every answer it gives is the exact allocator's optimum, it survives the disk, and a corrupt
cache entry is solved again."""
import torch

from coa_lora import Workbench
from coa_lora.allocation_grid import GridAllocator, grid_budgets, load_or_solve_grid, solve_grid


def test_grid_budgets_are_the_step_multiples_inside_the_range():
    assert grid_budgets(2.032, 2.3, 0.05) == [2.05, 2.1, 2.15, 2.2, 2.25, 2.3]
    assert grid_budgets(2.0, 2.0, 0.05) == [2.0]


def test_grid_answers_equal_the_exact_allocator_at_every_budget(tmp_path):
    wb = Workbench.load("tiny")
    allocator = wb.allocator()
    grid = solve_grid(allocator, step=0.25)
    assert torch.all(grid.avg_bits <= grid.budgets + 1e-12)
    fast = GridAllocator(allocator, grid)
    lo, hi = allocator.budget_range
    budgets = [float(b) for b in torch.linspace(lo, hi, 41)] + [2.5, 3.0, 3.01, 4.0, 4.37]
    for b in budgets:
        exact = wb.allocator().allocate(b)  # the allocator's own answer (cached per budget, not from the grid)
        answer = fast.allocate(b)
        assert answer.avg_bits <= b + 1e-12
        assert abs(answer.damage - exact.damage) <= 1e-9 * max(1.0, exact.damage), b
    # On the grid itself no live solve is ever needed.
    before = fast.live
    for b in grid.budgets.tolist():
        fast.allocate(b)
    assert fast.live == before


def test_grid_round_trips_through_the_disk_and_a_corrupt_file_is_solved_again(tmp_path):
    wb = Workbench.load("tiny")
    table = wb.damage_table()
    grid = load_or_solve_grid(wb.allocator(), table.key, tmp_path, step=0.5)
    files = list(tmp_path.glob("grid-*.safetensors"))
    assert len(files) == 1
    again = load_or_solve_grid(wb.allocator(), table.key, tmp_path, step=0.5)
    assert torch.equal(again.options, grid.options) and torch.equal(again.damage, grid.damage)
    files[0].write_bytes(b"not a safetensors file")
    fixed = load_or_solve_grid(wb.allocator(), table.key, tmp_path, step=0.5)
    assert torch.equal(fixed.options, grid.options)
