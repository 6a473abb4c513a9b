"""A loaded model together with what the CLI, the app and the notebooks do with it: its layout, its cached damage
tables, the allocator and live configuration switching.

    wb = Workbench.load("smollm2")
    alloc = wb.allocate(3.0)        # damage table (cached on disk) -> exact MILP
    wb.qmodel.apply_(alloc.config)  # the model now runs quantized
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional

import torch

from coa_lora.configs.allocate import Allocation, Allocator
from coa_lora.configs.damage import DamageTable, fisher_diagonal, load_or_compute
from coa_lora.configs.model_config import ModelLayout
from coa_lora.lora.adapter import LoraLinear, adapters_disabled
from coa_lora.lora.instantiate import DEFAULT_CACHE_BYTES, QuantizedModel, layout_of
from coa_lora.progress import ProgressFn

WEIGHTINGS = ("none", "fisher")
# Fisher weighting is the default: on SmolLM2 at 3.0 bits its allocation keeps held-out perplexity near 100 where the
# unweighted squared error's allocation collapses (>10^5); see bench/allocator_weighting.py.
DEFAULT_WEIGHTING = "fisher"
FISHER_SEQUENCES = 8  # calibration sequences from the training plays
FISHER_LENGTH = 256  # tokens each
FISHER_SEED = 0


@dataclass
class Workbench:
    """A model by name, ready to be quantized to any configuration or budget."""

    name: str
    model: torch.nn.Module
    qmodel: QuantizedModel
    _tokenizer: object = None
    _tables: dict = field(default_factory=dict)
    _allocators: dict = field(default_factory=dict)
    _grids: dict = field(default_factory=dict)
    _weight_hash: Optional[str] = None

    @classmethod
    def load(
        cls, name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> "Workbench":
        """Load ``name`` (``smollm2``, ``tiny``, a local folder or a Hugging Face id) on ``device`` in ``dtype``."""
        from coa_lora.models.loading import load_model, model_id

        model = load_model(name, device=device, dtype=dtype)
        qmodel = QuantizedModel(model, layout_of(model, model_id(name)), cache_bytes=cache_bytes)
        return cls(name, model, qmodel)

    @property
    def layout(self) -> ModelLayout:
        return self.qmodel.layout

    @property
    def weight_hash(self) -> str:
        """sha256 of the unquantized model, equal to :func:`~coa_lora.models.loading.weight_hash` of the fresh model.

        Computed once (0.5–2 s for SmolLM2 on 2 CPU cores) from the original target weights and the parameters'
        names before any LoRA wrapping, so it is the same whatever configuration or adapter is in place: results
        cached under it (evaluations, run checkpoints) follow the model's content, not its name.
        """
        if self._weight_hash is None:
            from coa_lora.models.loading import hash_tensors

            self._weight_hash = hash_tensors(unquantized_parameters(self.model, self.qmodel))
        return self._weight_hash

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from coa_lora.models.loading import load_tokenizer

            self._tokenizer = load_tokenizer(self.name)
        return self._tokenizer

    def damage_table(self, weighting: str = DEFAULT_WEIGHTING, progress: Optional[ProgressFn] = None) -> DamageTable:
        """The damage table of the full-precision targets, from the disk cache when it is there."""
        if weighting not in WEIGHTINGS:
            raise ValueError(f"Unknown damage weighting {weighting!r}; choose one of {WEIGHTINGS}.")
        if weighting not in self._tables:
            from coa_lora.models.assets import cache_dir

            # Damage is measured against the full-precision weights, whatever configuration is applied now.
            weights = {t.name: self.qmodel.original_weight(t.name) for t in self.layout.targets}
            importance, settings = None, ""
            if weighting == "fisher":
                importance = functools.partial(self._fisher, progress)  # called only on a cache miss
                settings = f"fisher:{FISHER_SEQUENCES}x{FISHER_LENGTH}:seed{FISHER_SEED}"
            self._tables[weighting] = load_or_compute(weights, cache_dir() / "damage", importance, settings, progress)
        return self._tables[weighting]

    def _fisher(self, progress: Optional[ProgressFn] = None) -> dict[str, torch.Tensor]:
        """Diagonal Fisher of the bare full-precision base (adapters off), whatever configuration is applied now."""
        from coa_lora.models.data import calibration_batches

        batches = calibration_batches(self.tokenizer, FISHER_SEQUENCES, FISHER_LENGTH, FISHER_SEED)
        current = self.qmodel.config
        self.qmodel.restore_()
        try:
            with adapters_disabled(self.model):  # an adapter wrapped around the base must not count
                return fisher_diagonal(self.model, self.qmodel.parameters, batches, progress)
        finally:
            if current is not None:
                self.qmodel.apply_(current)

    def allocator(self, weighting: str = DEFAULT_WEIGHTING, progress: Optional[ProgressFn] = None) -> Allocator:
        if weighting not in self._allocators:
            table = self.damage_table(weighting, progress).for_layout(self.layout)
            self._allocators[weighting] = Allocator(self.layout, table.values)
        return self._allocators[weighting]

    def grid_allocator(self, weighting: str = DEFAULT_WEIGHTING, progress: Optional[ProgressFn] = None,
                       solve_grid: bool = False):
        """The allocator answered from the pre-solved allocation grid (:mod:`coa_lora.configs.allocation_grid`): shipped
        for the embedded model, made by ``python -m coa_lora prepare`` or, with ``solve_grid``, solved now and saved.
        Without a grid on disk every budget is solved live once and remembered, on disk too (the next run or explorer
        on this machine reads it). Answers equal :meth:`allocate`'s."""
        from coa_lora.configs.allocation_grid import (GridAllocator, install_shipped, live_path, load_grid,
                                                      load_or_solve_grid)
        from coa_lora.models.assets import cache_dir

        held = self._grids.get(weighting)
        if held is None or (solve_grid and held.grid is None):
            install_shipped(cache_dir())
            table = self.damage_table(weighting, progress)
            allocator = self.allocator(weighting, progress)
            folder = cache_dir() / "allocations"
            grid = (load_or_solve_grid(allocator, table.key, folder, progress=progress) if solve_grid
                    else load_grid(table.key, folder, len(self.layout)))
            store = None if grid is not None else live_path(folder, table.key)
            held = self._grids[weighting] = GridAllocator(allocator, grid, store)
        return held

    def allocate(
        self, budget: float, weighting: str = DEFAULT_WEIGHTING, progress: Optional[ProgressFn] = None
    ) -> Allocation:
        """The least-damage configuration within ``budget`` average bits per weight."""
        return self.allocator(weighting, progress).allocate(budget)


def unquantized_parameters(model: torch.nn.Module, qmodel: QuantizedModel) -> dict[str, torch.Tensor]:
    """The base model's parameters as they were loaded: names as before LoRA wrapping (``….q_proj.weight``, not
    ``….q_proj.base_layer.weight``), target weights at full precision whatever is applied, LoRA factors left out."""
    originals = {id(p): qmodel.original_weight(name) for name, p in qmodel.parameters.items()}
    lora = {id(p) for m in model.modules() if isinstance(m, LoraLinear)
            for p in (*m.lora_A.parameters(), *m.lora_B.parameters())}
    return {name.replace(".base_layer.", "."): originals.get(id(p), p)
            for name, p in model.named_parameters() if id(p) not in lora}
