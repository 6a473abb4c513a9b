"""A comparison's reference: an earlier comparison whose numbers its report keeps as rows (e.g. the rank-8 comparison
after #37 moved the default to rank 64), so a change of settings never erases what was measured before.

    python -m coa_lora compare --merge runs/compare-smollm2-r64-a runs/compare-smollm2-r64-b \
        --out data/compare/smollm2 --reference data/compare/smollm2-rank8 --report docs/RESULTS.md

The comparison folder keeps the reference's path (relative to itself) in reference.json, so the explorer's Compare page
and a later ``--merge`` show the same rows.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from coa_lora.compare.report import read_results, read_why
from coa_lora.storage import write_json

REFERENCE_FILE = "reference.json"
# Plan fields that name how a reference differs from the comparison it stands beside, in this order.
_DIFFERENCES = ("model", "rank", "steps", "search", "methods", "budgets", "set_budgets", "train")


@dataclass(frozen=True)
class Reference:
    """An earlier comparison beside this one: what differs in its plan (``label``, e.g. "rank 8"), its summary.json,
    its folder and its diagnosis (the folder's why.json; empty when it has none)."""

    label: str
    summary: dict
    folder: Path
    why: dict


def check_reference(folder: str | os.PathLike, out: str | os.PathLike) -> dict:
    """The reference's summary; one sentence when ``folder`` holds no comparison results or is ``out`` itself."""
    folder, out = Path(folder), Path(out)
    if folder.resolve() == out.resolve():
        raise ValueError(f"--reference {folder} is the comparison itself; name an earlier comparison's folder.")
    try:
        return read_results(folder)[2]
    except (OSError, ValueError) as exc:
        raise ValueError(f"--reference {folder} is not a comparison folder with results ({exc}).") from None


def write_reference(out: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Record ``folder`` as ``out``'s reference (a path relative to ``out``: the two move together in a checkout)."""
    check_reference(folder, out)
    Path(out).mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(Path(folder).resolve(), Path(out).resolve())
    write_json(Path(out) / REFERENCE_FILE, {"folder": relative})


def stored_reference(folder: str | os.PathLike) -> Path | None:
    """The folder ``folder``'s reference.json points at, checked (None when there is none): one sentence, naming the
    way out, when it is not a reference file or its target moved or holds no results."""
    stored = _stored(folder)
    return None if stored is None else stored[0]


def read_reference(folder: str | os.PathLike, plan: dict) -> Reference | None:
    """``folder``'s reference, or None when it has none; its label names what it sets differently from ``plan``
    (``folder``'s own, as in its summary)."""
    stored = _stored(folder)
    if stored is None:
        return None
    target, summary = stored
    return Reference(reference_label(plan, summary["plan"]), summary, target, read_why(target))


def _stored(folder: str | os.PathLike) -> tuple[Path, dict] | None:
    """(the folder reference.json points at, its summary), read once; see :func:`stored_reference`."""
    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        target = Path(folder) / json.loads(path.read_text())["folder"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a reference file ({exc}); write it again with compare --reference.") from None
    try:
        return target, read_results(target)[2]
    except (OSError, ValueError):
        raise ValueError(f"{path} points at {target}, which holds no comparison results (moved?); pass --reference "
                         "again with its folder, or delete the file.") from None


def reference_label(plan: dict, reference_plan: dict) -> str:
    """What the reference's plan sets differently, e.g. ``"rank 8"`` or ``"rank 8, 30 steps"``."""
    parts = []
    for name in _DIFFERENCES:
        mine, theirs = plan.get(name), reference_plan.get(name)
        if mine == theirs:
            continue
        if name == "train":  # {option: value} (a saved plan): name those the reference sets differently
            ours, refs = dict(mine or {}), dict(theirs or {})
            parts += [f"{k} {refs.get(k, 'default')}" for k in dict.fromkeys([*refs, *ours])
                      if ours.get(k) != refs.get(k)]
            continue
        value = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in theirs) if isinstance(theirs, list) \
            else theirs
        parts.append(f"{value} steps" if name == "steps" else f"{name} {value}")
    return ", ".join(parts) or "same plan"
