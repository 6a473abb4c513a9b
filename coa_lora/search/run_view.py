"""A run folder as the explorer and the notebooks read it: its record, its metrics and its search tables as pandas
frames, with one clear sentence for anything that is not a readable run of this model.

    view = open_run("data/reference/coa_search", weight_hash=wb.weight_hash)
    view.history_at(2)            # every configuration evaluated up to round 2, with that round's f1 and selection
    view.searched_set()           # the final training set: [(ModelConfig, f1)], for the budget slider
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from coa_lora.configs.model_config import ModelConfig, ModelLayout
from coa_lora.runs import CHECKPOINT_FILE, METRICS_FILE, RUN_FILE, SEARCH_TABLES, RunInfo, metric_rows, read_run_info
from coa_lora.search.pareto import HypervolumePlane


@dataclass(frozen=True)
class RunView:
    """What a run folder holds, read once.

    Attributes:
        folder: the run folder.
        info: its run.json.
        metrics: one row per logged step (``step, loss, lr, ..., probe_loss``).
        pool, history, rounds: the search tables (empty frames for a run without search; see
            :class:`~coa_lora.search.state.SearchState`).
        plane: the run's fixed hypervolume plane, or None without search.
    """

    folder: Path
    info: RunInfo
    metrics: pd.DataFrame
    pool: pd.DataFrame = field(default_factory=pd.DataFrame)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    rounds: pd.DataFrame = field(default_factory=pd.DataFrame)
    plane: Optional[HypervolumePlane] = None

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def method(self) -> str:
        return self.info.method

    @property
    def search_mode(self) -> str:
        return str(self.info.hyper.get("search", "off"))

    @property
    def label(self) -> str:
        """``name (method, search mode)``: how plots and menus name the run."""
        mode = "" if self.search_mode == "off" else f", {self.search_mode}"
        return f"{self.name} ({self.method}{mode})"

    @property
    def has_search(self) -> bool:
        return not self.history.empty

    @property
    def steps(self) -> int:
        return int(self.info.hyper.get("steps", 0))

    @property
    def steps_done(self) -> int:
        return int(self.metrics["step"].max()) if "step" in self.metrics and not self.metrics.empty else 0

    @property
    def has_checkpoint(self) -> bool:
        return (self.folder / CHECKPOINT_FILE).is_file()

    @property
    def segments(self) -> int:
        return int(self.info.hyper.get("segments", 40))

    def round_numbers(self) -> list[int]:
        """The rounds logged so far (0 = the initial set; the last may be the ``final`` re-measurement)."""
        return sorted(self.history["round"].unique().tolist()) if self.has_search else []

    def round_modes(self) -> dict[int, str]:
        return dict(zip(self.rounds["round"], self.rounds["mode"])) if not self.rounds.empty else {}

    def history_at(self, round_: int) -> pd.DataFrame:
        """One row per configuration evaluated up to ``round_``: ``id, round, source, avg_bits, f1, f1_round,
        segment, selected`` as logged after that round's selection."""
        return self.history[self.history["round"] == round_].reset_index(drop=True)

    def segment_edges(self) -> list[float]:
        """The U + 1 bit boundaries of the selection segments (empty without search)."""
        if self.plane is None:
            return []
        lo, hi = self.plane.bits_range
        return [lo + (hi - lo) * u / self.segments for u in range(self.segments + 1)]

    def proposals(self) -> pd.DataFrame:
        """One row per configuration the search proposed, as the round that proposed it saw it: ``id, round,
        candidate, avg_bits, distance_bits, changed_matrices, predicted, predicted_sd, measured`` (empty for runs
        logged before proposals carried their prediction, and for random / frozen runs)."""
        cols = ["id", "round", "candidate", "avg_bits", "distance_bits", "changed_matrices", "predicted_f1",
                "predicted_sd", "measured_f1"]
        if self.pool.empty or "predicted_f1" not in self.pool:
            return pd.DataFrame(columns=[c.replace("_f1", "") for c in cols])
        rows = self.pool[self.pool["source"] == "search"][cols]
        return rows.rename(columns={"predicted_f1": "predicted", "measured_f1": "measured"}).reset_index(drop=True)

    def gp_hyperparameters(self) -> pd.DataFrame:
        """One row per search round: the GP's fitted ``outputscale``, ``noise``, ``mean`` and ``lengthscale`` (a list;
        in standardised outcome units), empty when the run logged none."""
        if self.rounds.empty or "gp" not in self.rounds:
            return pd.DataFrame()
        rows = self.rounds.dropna(subset=["gp"])
        return pd.DataFrame([{"round": int(r), **g} for r, g in zip(rows["round"], rows["gp"]) if isinstance(g, dict)])

    def searched_set(self, layout: ModelLayout) -> list[tuple[ModelConfig, float]]:
        """The training set after the last logged round, ``[(configuration, f1)]`` by ascending bits. Without search,
        empty (the configuration set of such a run is the allocator's, see ``configs.json``)."""
        if not self.has_search:
            return []
        last = self.history_at(self.round_numbers()[-1])
        chosen = last[last["selected"]].merge(self.pool[["id", "options"]], on="id").sort_values("avg_bits")
        return [(ModelConfig.from_option_indices(layout, o), float(f)) for o, f in zip(chosen["options"], chosen["f1"])]


def _frame(path: Path) -> pd.DataFrame:
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    try:
        return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is corrupt ({exc.__class__.__name__}); the run cannot be shown.") from None


def open_run(folder: str | Path, weight_hash: Optional[str] = None, model_id: Optional[str] = None) -> RunView:
    """Read run ``folder``. With ``weight_hash`` (the loaded model's), a run trained on another model is refused.

    Raises ValueError with one sentence for: a missing or empty folder, a folder that is not a run, a run of another
    model, a corrupt run file.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; give the folder a `train --out` wrote.")
    if not any(folder.iterdir()):
        raise ValueError(f"{folder} is empty; give the folder a `train --out` wrote.")
    if not (folder / RUN_FILE).is_file():
        raise ValueError(f"{folder} is not a coa-lora run folder (it has no {RUN_FILE}); give the folder a "
                         f"`train --out` wrote.")
    info = read_run_info(folder)
    if weight_hash is not None and info.weight_hash != weight_hash:
        raise ValueError(f"{folder} was trained on {info.model_id}, not on the loaded model"
                         f"{f' {model_id}' if model_id else ''}; open it with that model.")
    tables = {name: _frame(folder / f"search_{name}.jsonl") for name in SEARCH_TABLES}
    try:
        plane = None if info.search_plane is None else HypervolumePlane.from_dict(info.search_plane)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{folder / RUN_FILE} has a malformed search_plane ({exc}).") from None
    try:
        metrics = pd.DataFrame(metric_rows(folder))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{folder / METRICS_FILE} is not readable ({exc.__class__.__name__}).") from None
    history = tables["history"]
    needed = {"round", "id", "avg_bits", "f1", "segment", "selected", "source"}
    if not history.empty and not needed <= set(history.columns):
        raise ValueError(f"{folder / 'search_history.jsonl'} is corrupt (columns {sorted(needed - set(history))} are "
                         f"missing).")
    return RunView(folder, info, metrics, tables["pool"], history, tables["rounds"], plane)


def find_runs(root: str | Path) -> list[Path]:
    """Run folders directly inside ``root`` (those with a run.json), sorted by name."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / RUN_FILE).is_file())
