"""Pareto fronts, hypervolume and segment-wise selection in the (average bits, loss) plane (METHOD.md §6).

Both objectives are minimised here: fewer bits and lower loss are better. BoTorch's utilities maximise, so every
call negates the points on the way in. Everything is a pure function of tensors; nothing keeps state.

    bits = torch.tensor([2.5, 3.0, 3.0, 4.0])
    loss = torch.tensor([3.0, 2.0, 2.5, 1.0])
    non_dominated(bits, loss)                       # tensor([True, True, False, True])
    plane = HypervolumePlane.from_points(bits, loss)
    plane.hypervolume(bits, loss)                   # area dominated in the normalised plane
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from botorch.utils.multi_objective.box_decompositions.dominated import DominatedPartitioning
from botorch.utils.multi_objective.pareto import is_non_dominated

PLANE_VERSION = 1
LOSS_CAP = 2.0  # the loss axis ends at most at this multiple of the best initial loss (see from_points)


def _points(bits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """``(n, 2)`` float64 (bits, loss) from two ``(n,)`` tensors, with a shape check."""
    bits = torch.as_tensor(bits, dtype=torch.float64).reshape(-1)
    loss = torch.as_tensor(loss, dtype=torch.float64).reshape(-1)
    if bits.shape != loss.shape:
        raise ValueError(f"bits and loss need one value per configuration, got {bits.numel()} and {loss.numel()}.")
    if not torch.isfinite(loss).all() or not torch.isfinite(bits).all():
        raise ValueError("bits and loss must be finite; a NaN or infinite loss means the evaluation failed.")
    return torch.stack([bits, loss], dim=-1)


def non_dominated(bits: torch.Tensor, loss: torch.Tensor, deduplicate: bool = False) -> torch.Tensor:
    """Mask of the configurations no other one beats in (bits, loss), both minimised.

    A point is dominated when another has no more bits and no more loss, and strictly less of one of them. A tie in
    one objective is therefore decided by the other; exact duplicates never dominate each other, so all copies of a
    non-dominated point are kept unless ``deduplicate`` (then only the first copy is).

    Args:
        bits: ``(n,)`` average bits.
        loss: ``(n,)`` loss.
        deduplicate: keep a single copy of identical non-dominated points.

    Returns:
        ``(n,)`` bool.
    """
    pts = _points(bits, loss)
    if pts.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    return is_non_dominated(-pts, maximize=True, deduplicate=deduplicate)


def hypervolume(points: torch.Tensor, reference: torch.Tensor) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` (both objectives minimised).

    Points that do not beat the reference in both objectives add nothing (BoTorch drops them).

    Args:
        points: ``(n, 2)`` (bits, loss) in any consistent units.
        reference: ``(2,)`` the worst corner of the measured region.

    Returns:
        The area, >= 0.
    """
    points = torch.as_tensor(points, dtype=torch.float64).reshape(-1, 2)
    reference = torch.as_tensor(reference, dtype=torch.float64).reshape(2)
    if points.shape[0] == 0:
        return 0.0
    return float(DominatedPartitioning(ref_point=-reference, Y=-points).compute_hypervolume())


@dataclass(frozen=True)
class HypervolumePlane:
    """The fixed normalised (bits, loss) plane in which a run reports hypervolume.

    ``bits_range`` and ``loss_range`` map to [0, 1]; the reference point is ``(reference, reference)`` there. It is
    fixed once, from the initial set, and stored with the run, so hypervolumes are comparable across rounds and runs
    (the official code's (0, 0) reference was dominated by nothing, so every hypervolume was 0). Losses that later fall
    below ``loss_range[0]`` map below 0 and simply add area.

    Attributes:
        bits_range: (low, high) average bits mapped to 0 and 1.
        loss_range: (low, high) loss mapped to 0 and 1.
        reference: normalised coordinate of the reference point on both axes (> 1, so the worst initial point counts).
    """

    bits_range: tuple[float, float]
    loss_range: tuple[float, float]
    reference: float = 1.1

    def __post_init__(self) -> None:
        for name in ("bits_range", "loss_range"):
            lo, hi = getattr(self, name)
            if not hi > lo:
                raise ValueError(f"HypervolumePlane.{name} must be (low, high) with high > low, got {(lo, hi)}.")
        if not self.reference > 0:
            raise ValueError(f"HypervolumePlane.reference must be > 0, got {self.reference}.")

    @classmethod
    def from_points(
        cls, bits: torch.Tensor, loss: torch.Tensor, margin: float = 0.1,
        bits_range: Optional[tuple[float, float]] = None, loss_cap: Optional[float] = LOSS_CAP,
    ) -> "HypervolumePlane":
        """The plane spanned by a point set (usually the initial set), with the reference ``margin`` beyond its far
        end on both axes. A degenerate range (one value) is widened by one unit so the plane stays valid.

        The loss axis ends at the worst loss, but at most ``loss_cap`` × the best (``None``: no cap). One collapsed
        configuration must not decide the scale: on SmolLM2 the 2.5-bit allocation starts at probe loss 19.1 while
        the other nine lie in 3.5–4.9, so an uncapped axis squeezes every difference that matters into its bottom
        tenth. Twice the best loss is the square of the best perplexity: a configuration beyond that is unusable,
        and adds no area until the adapter brings it back."""
        pts = _points(bits, loss)
        if pts.shape[0] == 0:
            raise ValueError("A hypervolume plane needs at least one point.")

        def span(lo: float, hi: float) -> tuple[float, float]:
            return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)

        b = bits_range or span(float(pts[:, 0].min()), float(pts[:, 0].max()))
        lo_l, hi_l = float(pts[:, 1].min()), float(pts[:, 1].max())
        if loss_cap is not None and lo_l > 0:
            hi_l = min(hi_l, loss_cap * lo_l)
        lo_l, hi_l = span(lo_l, hi_l)
        return cls((float(b[0]), float(b[1])), (lo_l, hi_l), 1.0 + margin)

    def normalise(self, bits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """``(n, 2)`` float64 normalised (bits, loss)."""
        pts = _points(bits, loss)
        lo = torch.tensor([self.bits_range[0], self.loss_range[0]], dtype=torch.float64)
        hi = torch.tensor([self.bits_range[1], self.loss_range[1]], dtype=torch.float64)
        return (pts - lo) / (hi - lo)

    def denormalise(self, points: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` normalised (bits, loss) back in bits and loss: the inverse of :meth:`normalise`."""
        lo = torch.tensor([self.bits_range[0], self.loss_range[0]], dtype=torch.float64)
        hi = torch.tensor([self.bits_range[1], self.loss_range[1]], dtype=torch.float64)
        return lo + points.double() * (hi - lo)

    def corner(self) -> tuple[float, float]:
        """The reference point in bits and loss: no point beyond it (in either objective) adds area."""
        bits, loss = self.denormalise(torch.full((2,), float(self.reference), dtype=torch.float64)).tolist()
        return bits, loss

    def hypervolume(self, bits: torch.Tensor, loss: torch.Tensor) -> float:
        """Hypervolume of the ``(n,)`` points in this plane (at most ``(reference - min)²`` per axis span)."""
        ref = torch.full((2,), float(self.reference), dtype=torch.float64)
        return hypervolume(self.normalise(bits, loss), ref)

    def to_dict(self) -> dict:
        return {
            "format_version": PLANE_VERSION,
            "bits_range": list(self.bits_range),
            "loss_range": list(self.loss_range),
            "reference": self.reference,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "HypervolumePlane":
        if d.get("format_version") != PLANE_VERSION:
            raise ValueError(f"Unsupported hypervolume plane format_version {d.get('format_version')!r}; this "
                             f"version reads {PLANE_VERSION}.")
        return cls(tuple(d["bits_range"]), tuple(d["loss_range"]), float(d["reference"]))


def segment_ids(bits: torch.Tensor, n_segments: int, bits_range: tuple[float, float]) -> torch.Tensor:
    """Segment of each configuration: ``n_segments`` equal, contiguous bit intervals over ``bits_range``.

    Segment u covers ``[lo + u·w, lo + (u+1)·w)`` with ``w = (hi - lo) / n_segments``; a point on an inner edge belongs
    to the upper segment, ``hi`` to the last one, and points outside the range to the nearest end segment.

    Args:
        bits: ``(n,)`` average bits.
        n_segments: U >= 1 (the paper uses 40).
        bits_range: (low, high).

    Returns:
        ``(n,)`` int64 in ``[0, n_segments)``.
    """
    if n_segments < 1:
        raise ValueError(f"The number of segments must be >= 1, got {n_segments}.")
    lo, hi = bits_range
    if not hi > lo:
        raise ValueError(f"bits_range must be (low, high) with high > low, got {bits_range}.")
    bits = torch.as_tensor(bits, dtype=torch.float64).reshape(-1)
    # Rounding before floor keeps a point that sits on an edge (up to float error) in the upper segment.
    pos = torch.round((bits - lo) / (hi - lo) * n_segments, decimals=9)
    return torch.floor(pos).long().clamp(0, n_segments - 1)


def segment_select(
    bits: torch.Tensor, loss: torch.Tensor, n_segments: int, bits_range: Optional[tuple[float, float]] = None,
    deduplicate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment-wise Pareto selection: the union over segments of each segment's non-dominated configurations.

    Keeping each segment's own front (rather than the global front) keeps configurations at every budget, so the
    adapter keeps training across the whole bit range instead of crowding one end of the front.

    Args:
        bits: ``(n,)`` average bits.
        loss: ``(n,)`` loss.
        n_segments: U.
        bits_range: (low, high) of the segments; default: the points' own min and max.
        deduplicate: keep one copy of identical points within a segment (see :func:`non_dominated`).

    Returns:
        ``(selected, segments)``: ``(n,)`` bool and ``(n,)`` int64.
    """
    pts = _points(bits, loss)
    if pts.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.int64)
    if bits_range is None:
        lo, hi = float(pts[:, 0].min()), float(pts[:, 0].max())
        bits_range = (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)
    seg = segment_ids(pts[:, 0], n_segments, bits_range)
    selected = torch.zeros(pts.shape[0], dtype=torch.bool)
    for u in torch.unique(seg).tolist():
        idx = torch.nonzero(seg == u).reshape(-1)
        selected[idx] = non_dominated(pts[idx, 0], pts[idx, 1], deduplicate=deduplicate)
    return selected, seg
