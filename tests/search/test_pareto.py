"""Golden cases for coa_lora.search.pareto, worked out by hand.

The point set (bits, loss), both minimised, with duplicates and ties:

    idx  name  bits loss
    0    A     1    3
    1    B     2    2
    2    C     2    2    duplicate of B
    3    D     3    1
    4    E     2    3    ties B in bits, loses in loss -> dominated
    5    F     3    2    dominated by B and D
    6    G     1    3    duplicate of A
    7    H     5    0    least loss -> non-dominated
    8    I     4    1    ties D in loss, more bits -> dominated
"""
import json

import pytest
import torch

from coa_lora.search.pareto import HypervolumePlane, hypervolume, non_dominated, segment_ids, segment_select

BITS = torch.tensor([1.0, 2, 2, 3, 2, 3, 1, 5, 4])
LOSS = torch.tensor([3.0, 2, 2, 1, 3, 2, 3, 0, 1])
T, F = True, False


def test_non_dominated_keeps_all_copies_of_duplicates():
    assert non_dominated(BITS, LOSS).tolist() == [T, T, T, T, F, F, T, T, F]


def test_non_dominated_deduplicated_keeps_first_copy():
    assert non_dominated(BITS, LOSS, deduplicate=True).tolist() == [T, T, F, T, F, F, F, T, F]


def test_non_dominated_empty_and_single():
    assert non_dominated(torch.zeros(0), torch.zeros(0)).tolist() == []
    assert non_dominated(torch.tensor([2.0]), torch.tensor([1.0])).tolist() == [T]


def test_hypervolume_staircase_by_hand():
    # Reference (4, 4): A covers bits [1,2) with height 4-3=1, B [2,3) height 2, D [3,4) height 3 -> 1+2+3 = 6.
    # H lies beyond the reference in bits and I on its edge: both add nothing; duplicates add nothing.
    points = torch.stack([BITS, LOSS], -1)
    assert hypervolume(points, torch.tensor([4.0, 4.0])) == pytest.approx(6.0)
    assert hypervolume(points[[0, 1, 3]], torch.tensor([4.0, 4.0])) == pytest.approx(6.0)
    assert hypervolume(points[:0], torch.tensor([4.0, 4.0])) == 0.0


def test_plane_normalises_to_fixed_ranges():
    plane = HypervolumePlane((0.0, 4.0), (0.0, 4.0), reference=1.0)
    assert plane.hypervolume(BITS, LOSS) == pytest.approx(6.0 / 16.0)


def test_plane_from_points_by_hand():
    # bits -> (b-1)/4, loss -> l/3, reference (1.1, 1.1). Front in the plane: A(0, 1), B(.25, 2/3), D(.5, 1/3), H(1, 0).
    # Staircase: .25*(1.1-1) + .25*(1.1-2/3) + .5*(1.1-1/3) + .1*1.1.
    plane = HypervolumePlane.from_points(BITS, LOSS, margin=0.1)
    assert plane.bits_range == (1.0, 5.0) and plane.loss_range == (0.0, 3.0) and plane.reference == pytest.approx(1.1)
    expected = 0.25 * 0.1 + 0.25 * (1.1 - 2 / 3) + 0.5 * (1.1 - 1 / 3) + 0.1 * 1.1
    assert plane.hypervolume(BITS, LOSS) == pytest.approx(expected)
    # Stored in run.json: the JSON round trip gives the same plane.
    assert HypervolumePlane.from_dict(json.loads(json.dumps(plane.to_dict()))) == plane


def test_plane_loss_axis_is_capped_at_twice_the_best_loss():
    # The SmolLM2 initial set's shape: one collapsed configuration (19.1) and the rest in 3.5-4.9.
    bits, loss = torch.tensor([2.5, 3.0, 4.0, 7.25]), torch.tensor([19.1, 4.9, 3.7, 3.5])
    plane = HypervolumePlane.from_points(bits, loss)
    assert plane.loss_range == pytest.approx((3.5, 7.0)) and plane.bits_range == (2.5, 7.25)
    assert HypervolumePlane.from_points(bits, loss, loss_cap=None).loss_range == pytest.approx((3.5, 19.1))
    # The collapsed point adds nothing until it comes within the reference; then it adds area.
    assert plane.hypervolume(bits, loss) == pytest.approx(plane.hypervolume(bits[1:], loss[1:]))
    assert plane.hypervolume(bits, torch.tensor([6.0, 4.9, 3.7, 3.5])) > plane.hypervolume(bits, loss)
    # Below the cap nothing changes.
    small = torch.tensor([4.0, 3.7, 3.5, 3.4])
    assert HypervolumePlane.from_points(bits, small).loss_range == pytest.approx((3.4, 4.0))


def test_plane_validation_and_degenerate_range():
    with pytest.raises(ValueError, match="high > low"):
        HypervolumePlane((3.0, 3.0), (0.0, 1.0))
    plane = HypervolumePlane.from_points(torch.tensor([3.0, 3.0]), torch.tensor([1.0, 2.0]))
    assert plane.bits_range == (2.5, 3.5)
    with pytest.raises(ValueError, match="finite"):
        non_dominated(torch.tensor([1.0]), torch.tensor([float("nan")]))


def test_segment_ids_edges_and_outside():
    # Range (1, 5), 4 segments of width 1; an inner edge belongs to the upper segment, 5 to the last one,
    # points outside go to the nearest end segment.
    bits = torch.tensor([1.0, 1.999, 2.0, 3.0, 4.5, 5.0, 0.2, 7.0])
    assert segment_ids(bits, 4, (1.0, 5.0)).tolist() == [0, 0, 1, 2, 3, 3, 0, 3]
    with pytest.raises(ValueError, match=">= 1"):
        segment_ids(bits, 0, (1.0, 5.0))


def test_segment_select_by_hand():
    # 4 segments over (1, 5): [1,2): A, G   [2,3): B, C, E   [3,4): D, F   [4,5]: I, H.
    # Segment fronts: A and G (duplicates, both kept); B and C (E loses to B); D (F loses); I and H: I is dominated
    # globally (by D) but not within its own segment, which is the point of the segment-wise selection.
    selected, segments = segment_select(BITS, LOSS, 4, (1.0, 5.0))
    assert segments.tolist() == [0, 1, 1, 2, 1, 2, 0, 3, 3]
    assert selected.tolist() == [T, T, T, T, F, F, T, T, T]
    selected, _ = segment_select(BITS, LOSS, 4, (1.0, 5.0), deduplicate=True)
    assert selected.tolist() == [T, T, F, T, F, F, F, T, T]


def test_segment_select_one_segment_is_the_global_front():
    selected, segments = segment_select(BITS, LOSS, 1)
    assert selected.tolist() == non_dominated(BITS, LOSS).tolist()
    assert segments.tolist() == [0] * 9
