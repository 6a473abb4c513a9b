"""A training run on disk: one folder, everything written atomically, nothing pickled.

    runs/NAME/
      run.json                 format version, model id + weight hash, method, hyper-parameters, seed, versions
      configs.json             the training configuration set (allocation is slow; a resume reuses it)
      checkpoint.safetensors   adapter + θ + AdamW state as tensors; step and scalars in the JSON metadata
      metrics.jsonl            one JSON object per line: ``pandas.read_json(path, lines=True)``
      search.json              with ``--search``: the whole search state (coa_lora.search.state.SearchState)
      search_{pool,history,rounds}.jsonl   its three tables, one JSON object per line, rewritten after each change

A SIGKILL at any moment leaves either the previous or the new version of each file (temp file + rename), and the
metrics file is cut back to the checkpoint's step on resume, so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from coa_lora.configs.model_config import ModelConfig, ModelLayout
from coa_lora.storage import atomic_write_bytes, read_safetensors, staged_folder, write_json, write_safetensors

FORMAT_VERSION = 1
RUN_FILE = "run.json"
CONFIGS_FILE = "configs.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
_OPTIM_PREFIX = "optim."


def library_versions() -> dict[str, str]:
    # Read from the installed distributions: importing peft for its version imports bitsandbytes, whose kernel
    # registration costs 3 s (measured) in a process that does not otherwise need it.
    from importlib.metadata import version

    return {"python": platform.python_version(), "torch": torch.__version__,
            **{name: version(name) for name in ("transformers", "peft", "safetensors")}}


@dataclass(frozen=True)
class RunInfo:
    """The contents of ``run.json``."""

    model_id: str
    weight_hash: str  # sha256 of the unquantized model (coa_lora.models.loading.weight_hash): a checkpoint fits only it
    method: str
    hyper: dict  # every training option, as TrainOptions.to_dict() writes it
    seed: int
    versions: dict
    # With a search: the normalised (bits, loss) hypervolume plane fixed by the initial set (HypervolumePlane.to_dict),
    # so hypervolume curves are comparable across rounds and across runs that share it.
    search_plane: dict | None = None

    def to_dict(self) -> dict:
        d = {"format_version": FORMAT_VERSION, "model_id": self.model_id, "weight_hash": self.weight_hash,
             "method": self.method, "hyper": self.hyper, "seed": self.seed, "versions": self.versions}
        return d if self.search_plane is None else {**d, "search_plane": self.search_plane}

    @classmethod
    def from_dict(cls, d: Mapping, source: str = RUN_FILE) -> RunInfo:
        if not isinstance(d, Mapping) or d.get("format_version") != FORMAT_VERSION:
            version = d.get("format_version") if isinstance(d, Mapping) else None
            raise ValueError(f"{source} has run format_version {version!r}; this version of coa_lora reads "
                             f"{FORMAT_VERSION}.")
        try:
            plane = d.get("search_plane")
            return cls(d["model_id"], d["weight_hash"], d["method"], dict(d["hyper"]), int(d["seed"]),
                       dict(d["versions"]), None if plane is None else dict(plane))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source} is missing or has a malformed field ({exc}).") from None


def write_run_info(folder: str | Path, info: RunInfo) -> None:
    write_json(Path(folder) / RUN_FILE, info.to_dict())


def read_run_info(folder: str | Path) -> RunInfo:
    """``run.json`` of ``folder``; a missing, unreadable or unknown-version file raises ValueError."""
    path = Path(folder) / RUN_FILE
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{folder} is not a run folder (no {RUN_FILE}).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc.__class__.__name__}).") from None
    return RunInfo.from_dict(d, str(path))


# ----- configuration set ---------------------------------------------------------------------------------------------
def write_configs(folder: str | Path, configs: list[ModelConfig]) -> None:
    write_json(Path(folder) / CONFIGS_FILE, {"format_version": FORMAT_VERSION,
                                             "configs": [c.to_dict() for c in configs]})


def _read_json(path: Path):
    """The JSON in ``path``, or None when there is no such file; unreadable JSON raises one clear ValueError."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc.__class__.__name__}).") from None


def _write_jsonl(path: Path, rows: list) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def read_configs(folder: str | Path, layout: ModelLayout) -> list[ModelConfig] | None:
    """The cached configuration set, or None when the run has none yet."""
    path = Path(folder) / CONFIGS_FILE
    d = _read_json(path)
    if d is None:
        return None
    if d.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {d.get('format_version')!r}; this version reads {FORMAT_VERSION}.")
    return [ModelConfig.from_dict(c, layout) for c in d["configs"]]


# ----- checkpoints ---------------------------------------------------------------------------------------------------
def save_checkpoint(folder: str | Path, step: int, params: Mapping[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, weight_hash: str) -> None:
    """Write parameters and the optimiser state at ``step``; ``params`` in the optimiser's parameter order."""
    tensors = {n: p.detach() for n, p in params.items()}
    names = list(params)
    state = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{_OPTIM_PREFIX}{names[index]}.{key}"] = value
            else:
                scalars.setdefault(names[index], {})[key] = value
    groups = [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]]
    metadata = {"format_version": str(FORMAT_VERSION), "step": str(step), "weight_hash": weight_hash,
                "names": json.dumps(names), "param_groups": json.dumps(groups), "scalars": json.dumps(scalars)}
    write_safetensors(Path(folder) / CHECKPOINT_FILE, tensors, metadata)


def load_checkpoint(folder: str | Path, params: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer | None,
                    weight_hash: str) -> int | None:
    """Restore parameters (and, unless ``optimizer`` is None, the optimiser state) in place and return the
    checkpoint's step (None: no checkpoint). Parameters stored in another dtype (a compact copy) are cast.

    Everything is validated before anything is changed: a corrupt file, a different model, a different adapter
    shape, or a compact copy asked for its optimiser state raises ValueError and leaves ``params`` and ``optimizer``
    as they were.
    """
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    tensors, meta = read_safetensors(path)
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(f"{path} has checkpoint format_version {meta.get('format_version')!r}; this version reads "
                         f"{FORMAT_VERSION}.")
    if meta.get("weight_hash") != weight_hash:
        raise ValueError(f"{path} was trained on a different model (its weight hash differs from this model's).")
    if optimizer is not None and COMPACT_KEY in meta:
        raise ValueError(f"{path} is a compact copy ({meta[COMPACT_KEY]} parameters, no optimiser state): it can be "
                         f"evaluated and exported, not resumed; resume the run it was copied from.")
    try:
        names, groups, scalars = (json.loads(meta[k]) for k in ("names", "param_groups", "scalars"))
        step = int(meta["step"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path} has malformed metadata ({exc}).") from None
    if names != list(params):
        raise ValueError(f"{path} holds a different adapter (its parameter names differ from this model's).")
    for n, p in params.items():
        if n not in tensors or tuple(tensors[n].shape) != tuple(p.shape):
            raise ValueError(f"{path} holds a different adapter ({n} is missing or has another shape).")
    if optimizer is None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(tensors[n])
        return step
    state: dict[int, dict] = {}
    for i, n in enumerate(names):
        slots = {k[len(_OPTIM_PREFIX) + len(n) + 1:]: t for k, t in tensors.items()
                 if k.startswith(f"{_OPTIM_PREFIX}{n}.") and k[len(_OPTIM_PREFIX) + len(n) + 1:].isidentifier()}
        slots.update(scalars.get(n, {}))
        if slots:
            state[i] = slots
    current = optimizer.state_dict()["param_groups"]
    if len(groups) != len(current):
        raise ValueError(f"{path} holds an optimiser with {len(groups)} parameter groups, this one has {len(current)}.")
    param_groups = [{**g, "params": c["params"]} for g, c in zip(groups, current)]
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n])
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    return step


COMPACT_KEY = "compact_dtype"
COMPACT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def compact_run(src: str | Path, dst: str | Path, dtype: str = "float16") -> Path:
    """A read-only copy of run ``src`` small enough to ship: every file as it is, except the checkpoint, whose
    parameters are stored in ``dtype`` without the optimiser state (about 1/6 of the size in float16).

    The copy evaluates and exports like the run (parameters are cast back on load); resuming it is refused in one
    sentence. Written under a temporary name and renamed, so ``dst`` is either absent or complete.
    """
    import shutil

    src, dst = Path(src), Path(dst)
    if dtype not in COMPACT_DTYPES:
        raise ValueError(f"Unknown compact dtype {dtype!r}; choose one of {sorted(COMPACT_DTYPES)}.")
    read_run_info(src)  # a clear error for a folder that is not a run
    if not (src / CHECKPOINT_FILE).is_file():
        raise ValueError(f"Run {src} has no checkpoint yet; nothing to copy.")
    if dst.exists():
        raise ValueError(f"{dst} already exists; give a new folder for the compact copy.")
    tensors, meta = read_safetensors(src / CHECKPOINT_FILE)
    names = json.loads(meta["names"])
    compact = {n: tensors[n].to(COMPACT_DTYPES[dtype]) for n in names}
    with staged_folder(dst) as stage:
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name != CHECKPOINT_FILE and not f.name.startswith("."):
                shutil.copy2(f, stage / f.name)
        keep = {k: meta[k] for k in ("format_version", "step", "weight_hash", "names")}
        write_safetensors(stage / CHECKPOINT_FILE, compact, {**keep, "param_groups": "[]", "scalars": "{}",
                                                             COMPACT_KEY: dtype})
    return dst


# ----- metrics -------------------------------------------------------------------------------------------------------
def append_metrics(folder: str | Path, row: Mapping) -> None:
    """Append one JSON line (a line is small, so a kill leaves at most one partial last line, dropped on read)."""
    with open(Path(folder) / METRICS_FILE, "a") as f:
        f.write(json.dumps(dict(row)) + "\n")


def metric_rows(folder: str | Path) -> list[dict]:
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a partial last line from a kill
    return rows


def truncate_metrics(folder: str | Path, step: int) -> None:
    """Keep only the rows of steps ≤ ``step`` (the checkpoint a resume starts from)."""
    rows = [r for r in metric_rows(folder) if r.get("step", 0) <= step]
    _write_jsonl(Path(folder) / METRICS_FILE, rows)


def read_metrics(folder: str | Path):
    """The metrics of a run as a ``pandas.DataFrame`` (one row per logged step)."""
    import pandas as pd

    return pd.DataFrame(metric_rows(folder))


# ----- search state --------------------------------------------------------------------------------------------------
SEARCH_FILE = "search.json"
SEARCH_TABLES = ("pool", "history", "rounds")


def write_search(folder: str | Path, state) -> None:
    """Save a :class:`~coa_lora.search.state.SearchState` and rewrite its three JSONL tables (each write atomic).

    search.json is written last: it is the state a resume reads, the tables are views of it for pandas."""
    folder = Path(folder)
    for name in SEARCH_TABLES:
        _write_jsonl(folder / f"search_{name}.jsonl", getattr(state, name))
    write_json(folder / SEARCH_FILE, state.to_dict())


def read_search(folder: str | Path) -> dict | None:
    """The run's saved search state as written (``SearchState.from_dict`` rebuilds it), or None when it has none yet.

    A dict, not the state: this layer sits below the search (the layer diagram in ``coa_lora/__init__.py``)."""
    return _read_json(Path(folder) / SEARCH_FILE)


def read_search_tables(folder: str | Path) -> dict:
    """``{"pool", "history", "rounds"}`` → ``pandas.DataFrame`` of a run's search (empty frames when it has none)."""
    import pandas as pd

    out = {}
    for name in SEARCH_TABLES:
        path = Path(folder) / f"search_{name}.jsonl"
        out[name] = pd.read_json(path, lines=True) if path.is_file() and path.stat().st_size else pd.DataFrame()
    return out
