"""The configuration-aware LoRA adapter (METHOD.md §4).

For target matrix i with LoRA factors A_i (r × in), B_i (out × r) and scaling s = lora_alpha / r:

    y = x·W̃_iᵀ + s · B_i (I_r + U_i) A_i x,      U_i = U_θ(q_i)  (r × r)

W̃_i is the dequantized weight of the current configuration (swapped in by :class:`~coa_lora.QuantizedModel`),
q_i = (five option ordinals, block index, module kind). U_θ is ONE small network shared by all matrices.

    qm = QuantizedModel.from_model(model, "tiny")   # before wrapping: it keeps references to the base weights
    coa = CoALoRAModel(qm, AdapterOptions(r=8))
    coa.set_config(cfg)                             # swap base weights + one batched call of U_θ
    logits = coa.model(input_ids=ids).logits

For a fixed configuration B_i(I + U_i) is just another matrix: :func:`export_peft` folds it into B and writes a
standard peft adapter folder.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from coa_lora.configs.model_config import ModelConfig, ModelLayout
from coa_lora.lora.instantiate import QuantizedModel
from coa_lora.quant.space import FIELD_VALUES

N_FEATURES = len(FIELD_VALUES) + 2  # five option ordinals, block index, module kind


@dataclass(frozen=True)
class AdapterOptions:
    """Shape of the adapter; peft's names where peft has one."""

    r: int = 8  # LoRA rank; U is r × r
    lora_alpha: float = 16.0  # scaling = lora_alpha / r, as in peft
    lora_dropout: float = 0.05  # on the adapter's input only, as in peft
    embed_dim: int = 16  # per-field embedding width of U_θ; 7 fields are concatenated
    hidden_dim: int = 64  # U_θ's hidden width: θ stays tiny next to A and B
    # U_θ's last layer at initialisation: 0 makes I + U = I exactly (and the layers before it get no gradient until
    # it moves); the official code draws it from N(0, 1e-3²).
    u_init_std: float = 0.0

    def __post_init__(self) -> None:
        if self.r < 1 or self.embed_dim < 1 or self.hidden_dim < 1:
            raise ValueError(f"r, embed_dim and hidden_dim must be positive integers, got {self}.")
        if not (0.0 <= self.u_init_std < float("inf")):
            raise ValueError(f"u_init_std must be a finite number >= 0, got {self.u_init_std}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r


class LoraLinear(nn.Module):
    """peft-style wrapper of one ``nn.Linear``: ``base_layer(x) + scaling · B((I + U)(A(dropout(x))))``.

    ``correction`` is this matrix's U ``(r, r)``, set from outside by :class:`CoALoRAModel` (None: plain LoRA).
    Shapes: x ``(..., in)`` -> ``(..., out)``.
    """

    def __init__(self, base_layer: nn.Linear, r: int, lora_alpha: float, lora_dropout: float,
                 generator: torch.Generator | None = None):
        super().__init__()
        weight = base_layer.weight
        self.base_layer = base_layer
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=weight.device, dtype=weight.dtype)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=weight.device, dtype=weight.dtype)
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.scaling = lora_alpha / r
        self.correction: torch.Tensor | None = None
        self.enabled = True
        # peft's init: A Kaiming-uniform (a=√5), B zero, so a fresh adapter changes nothing.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if not self.enabled:
            return result
        h = self.lora_A(self.lora_dropout(x))  # (..., r)
        if self.correction is not None:
            h = h + h @ self.correction.T  # (I + U) applied to each column vector A x, in row form
        return result + self.lora_B(h) * self.scaling

    def merged_B(self) -> torch.Tensor:
        """``(out, r)`` B(I + U): the plain-LoRA B that gives the same output under the current correction."""
        b = self.lora_B.weight
        if self.correction is None:
            return b.detach().clone()
        eye = torch.eye(b.shape[1], dtype=b.dtype, device=b.device)
        return (b @ (eye + self.correction)).detach()


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run the block with every :class:`LoraLinear` of ``model`` switched off (the bare base model)."""
    wrappers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    states = [w.enabled for w in wrappers]
    for w in wrappers:
        w.enabled = False
    try:
        yield
    finally:
        for w, state in zip(wrappers, states):
            w.enabled = state


class ConfigNetwork(nn.Module):
    """U_θ: per-matrix features ``(N, 7)`` int64 -> corrections ``(N, r, r)``.

    Features are the five option ordinals (field sizes 4, 4, 3, 3, 3, :data:`~coa_lora.quant.space.FIELD_VALUES` order),
    the block index and the module-kind index. Each gets a learned embedding; concat -> LayerNorm -> Linear -> SiLU
    -> Linear(r·r). The last layer's bias starts at zero and its weight at zero (``init_std`` 0: I + U = I exactly at
    initialisation) or drawn from N(0, init_std²).
    """

    def __init__(self, r: int, n_layers: int, n_kinds: int, embed_dim: int = 16, hidden_dim: int = 64,
                 generator: torch.Generator | None = None, init_std: float = 0.0):
        super().__init__()
        self.r = r
        sizes = [len(v) for v in FIELD_VALUES.values()] + [n_layers, n_kinds]
        self.embeddings = nn.ModuleList(nn.Embedding(n, embed_dim) for n in sizes)
        self.norm = nn.LayerNorm(len(sizes) * embed_dim)
        self.hidden = nn.Linear(len(sizes) * embed_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, r * r)
        with torch.no_grad():  # deterministic init from ``generator``, global RNG untouched
            for emb in self.embeddings:
                emb.weight.normal_(generator=generator)
            bound = 1 / math.sqrt(self.hidden.in_features)
            self.hidden.weight.uniform_(-bound, bound, generator=generator)
            self.hidden.bias.uniform_(-bound, bound, generator=generator)
            self.out.weight.zero_()
            self.out.bias.zero_()
            if init_std > 0:  # drawn last: the zero-start default keeps the generator's stream of runs made before
                self.out.weight.normal_(0.0, init_std, generator=generator)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != len(self.embeddings):
            raise ValueError(f"Features must have shape (N, {len(self.embeddings)}), got {tuple(features.shape)}.")
        x = torch.cat([emb(features[:, j]) for j, emb in enumerate(self.embeddings)], dim=-1)  # (N, 7·e)
        u = self.out(nn.functional.silu(self.hidden(self.norm(x))))  # (N, r·r)
        return u.reshape(-1, self.r, self.r)


def layout_kinds(layout: ModelLayout) -> tuple[str, ...]:
    """The module kinds of ``layout`` in order of first appearance (their index is U_θ's kind feature)."""
    return tuple(dict.fromkeys(t.kind for t in layout.targets))


def config_features(config: ModelConfig, kinds: tuple[str, ...]) -> torch.Tensor:
    """``(n_targets, 7)`` int64: option ordinals, block index, kind index of every target of ``config``."""
    blocks = torch.tensor([[t.layer, kinds.index(t.kind)] for t in config.layout.targets], dtype=torch.int64)
    return torch.cat([config.to_ordinals(), blocks], dim=1)


class CoALoRAModel:
    """A model whose target linears are wrapped by :class:`LoraLinear`, plus the shared U_θ.

    ``config_aware=False`` gives a plain LoRA over the same wrappers (Shared-LoRA, per-configuration LoRA).
    The wrapped model stays ``self.model``; base parameters stay frozen, only A, B and θ train.
    """

    def __init__(self, qmodel: QuantizedModel, options: AdapterOptions = AdapterOptions(),
                 config_aware: bool = True, seed: int = 0):
        self.qmodel = qmodel
        self.model = qmodel.model
        self.layout = qmodel.layout
        self.options = options
        self.kinds = layout_kinds(self.layout)
        self.config: ModelConfig | None = None
        generator = torch.Generator().manual_seed(seed)
        self.wrappers: dict[str, LoraLinear] = {}
        for name in self.layout.names:
            base = self.model.get_submodule(name)
            if not isinstance(base, nn.Linear):
                raise TypeError(f"Target {name} is a {type(base).__name__}, not an nn.Linear; wrap a fresh model.")
            wrapper = LoraLinear(base, options.r, options.lora_alpha, options.lora_dropout, generator)
            self.model.set_submodule(name, wrapper)
            self.wrappers[name] = wrapper
        self.network: ConfigNetwork | None = None
        if config_aware:
            device = next(iter(self.wrappers.values())).lora_A.weight.device
            n_layers = max(t.layer for t in self.layout.targets) + 1
            self.network = ConfigNetwork(options.r, n_layers, len(self.kinds), options.embed_dim, options.hidden_dim,
                                         generator, options.u_init_std).to(device)
        self._features: dict[str, torch.Tensor] = {}

    # ----- parameters -------------------------------------------------------------------------------------------
    def named_parameters(self) -> dict[str, nn.Parameter]:
        """Trainable parameters by stable name: ``adapter.<target>.lora_A.weight``, ``network.<param>``."""
        params = {}
        for name, w in self.wrappers.items():
            params[f"adapter.{name}.lora_A.weight"] = w.lora_A.weight
            params[f"adapter.{name}.lora_B.weight"] = w.lora_B.weight
        if self.network is not None:
            params.update({f"network.{n}": p for n, p in self.network.named_parameters()})
        return params

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.named_parameters().items()}

    def fingerprint(self) -> str:
        """A short hash of the trainable state (names, shapes, dtypes, values): the evaluation cache's adapter key."""
        h = hashlib.sha256()
        for name, p in sorted(self.named_parameters().items()):
            t = p.detach().to("cpu").contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
        return h.hexdigest()[:16]

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy ``state`` in; names or shapes that differ raise ValueError before anything is changed."""
        params = self.named_parameters()
        if set(state) != set(params):
            missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise ValueError(f"The adapter state does not fit this model (missing {missing[:2]}, unknown {extra[:2]}).")
        bad = [n for n, p in params.items() if tuple(state[n].shape) != tuple(p.shape)]
        if bad:
            raise ValueError(f"The adapter state does not fit this model ({bad[0]} has shape "
                             f"{tuple(state[bad[0]].shape)}, expected {tuple(params[bad[0]].shape)}).")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state[n])

    def train(self, mode: bool = True) -> CoALoRAModel:
        """Dropout on (train) or off (eval) in the adapters; the base model's own modules follow too."""
        self.model.train(mode)
        if self.network is not None:
            self.network.train(mode)
        return self

    # ----- configuration ----------------------------------------------------------------------------------------
    def set_config(self, config: ModelConfig) -> CoALoRAModel:
        """Swap the quantized base weights to ``config`` and compute every target's U in one batched call."""
        self.qmodel.apply_(config)
        self.config = config
        return self.refresh()

    def refresh(self) -> CoALoRAModel:
        """Recompute U for the current configuration (with autograd when grad is enabled): call after each
        optimiser step and before each backward pass, since one backward frees the graph of U."""
        if self.network is None or self.config is None:
            return self
        key = self.config.key()
        if key not in self._features:
            device = self.network.out.weight.device
            self._features[key] = config_features(self.config, self.kinds).to(device)
        corrections = self.network(self._features[key])  # (N, r, r)
        for wrapper, u in zip(self.wrappers.values(), corrections):
            wrapper.correction = u
        return self

    def adapters_disabled(self) -> Iterator[None]:
        """Run the block on the bare (quantized or restored) base model."""
        return adapters_disabled(self.model)

    def remove_(self) -> nn.Module:
        """Unwrap: put every target's original ``nn.Linear`` back, so the model is the bare base again (another
        adapter may then be wrapped around it). Returns the model; this object is unusable afterwards."""
        for name, wrapper in self.wrappers.items():
            self.model.set_submodule(name, wrapper.base_layer)
        self.wrappers, self.network, self.config = {}, None, None
        return self.model

    def merged_factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{target: (A (r, in), B' (out, r))}`` with B' = B(I + U) under the current configuration."""
        with torch.no_grad():
            self.refresh()
        return {name: (w.lora_A.weight.detach().clone(), w.merged_B()) for name, w in self.wrappers.items()}


def export_peft(coa: CoALoRAModel, folder: str | Path, config: ModelConfig | None = None,
                base_model_name_or_path: str | None = None) -> Path:
    """Fold U into B for ``config`` (default: the current one) and write a standard peft LoRA folder.

    Writes ``adapter_model.safetensors`` (peft key names ``base_model.model.<target>.lora_A.weight``),
    ``adapter_config.json`` and ``quant_config.json`` (the configuration, :meth:`ModelConfig.to_dict`). Load with
    ``PeftModel.from_pretrained(base, folder)`` on a base model quantized to the same configuration.
    """
    from coa_lora.storage import write_json, write_safetensors

    if config is not None:
        coa.set_config(config)
    if coa.config is None:
        raise ValueError("No configuration to export: pass one or call set_config first.")
    folder = Path(folder)
    tensors = {}
    for name, (a, b) in coa.merged_factors().items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a
        tensors[f"base_model.model.{name}.lora_B.weight"] = b
    opts = coa.options
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path or coa.layout.model_id,
        "r": opts.r,
        "lora_alpha": opts.lora_alpha,
        "lora_dropout": opts.lora_dropout,
        "target_modules": list(coa.kinds),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "modules_to_save": None,
    }
    write_safetensors(folder / "adapter_model.safetensors", tensors, {"format": "pt"})
    write_json(folder / "adapter_config.json", adapter_config)
    write_json(folder / "quant_config.json", coa.config.to_dict())
    return folder


__all__ = ["AdapterOptions", "CoALoRAModel", "ConfigNetwork", "LoraLinear", "config_features", "export_peft",
           "layout_kinds"]
