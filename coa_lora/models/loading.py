"""Models by name, and the target matrices the quantizer and the adapter act on (METHOD.md §2).

A model name is one of:

* ``"smollm2"``: the embedded SmolLM2-135M-Instruct, converted once by ``python -m coa_lora prepare``;
* ``"tiny"``: a 2-layer random Llama built in code (:func:`tiny_model`), for tests and demos in seconds;
* a folder in a format with a registered loader (:func:`register_loader`): importing :mod:`coa_lora` registers the
  packed folders ``python -m coa_lora export`` writes (:mod:`coa_lora.deploy`; an included adapter is merged into the
  weights, so every command runs the deployed model). The deploy layer registers itself so that this layer never
  imports it (the layer diagram in ``coa_lora/__init__.py``);
* a local folder holding a transformers ``config.json``;
* otherwise a Hugging Face model id, downloaded by transformers (needs internet on the user's machine).
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from coa_lora.configs.model_config import Target
from coa_lora.progress import hf_progress_bars_off

SMOLLM2 = "smollm2"
TINY = "tiny"
# What to call the model with no configuration applied. Not "full precision": the embedded SmolLM2 was already
# 4-bit before we quantize it (REFERENCE_NOTE), so it is a reference point, not a lossless original.
REFERENCE_LABEL = "unquantized reference"
REFERENCE_NOTE = ("The embedded SmolLM2-135M-Instruct ships as a Q4_1 GGUF: its unquantized reference is that 4-bit "
                  "model dequantized to float32, and NF8 or ≥ 4-bit configurations re-quantize it.")
# Llama, Qwen2, Mistral, Gemma and friends all name their block linears this way.
LLAMA_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_ALLOWED = (f"'{SMOLLM2}' (embedded SmolLM2-135M-Instruct), '{TINY}' (random test model), a packed folder, a local "
            "folder with a config.json, or a Hugging Face model id")

__all__ = ["FolderLoader", "LLAMA_KINDS", "REFERENCE_LABEL", "REFERENCE_NOTE", "SMOLLM2", "TINY", "Target",
           "find_targets",
           "hash_tensors", "load_model", "load_tokenizer", "model_id", "register_loader", "tiny_model", "weight_hash"]


@dataclasses.dataclass(frozen=True)
class FolderLoader:
    """How to load a model folder written in a format of its own (a higher layer's, e.g. packed exports)."""

    name: str
    recognizes: Callable[[str], bool]  # name -> is this a folder in the format?
    load: Callable[[str, torch.dtype], nn.Module]  # (folder, dtype) -> model on the CPU
    check_tokenizer: Callable[[str], None]  # raises ValueError (one sentence) when the folder carries no tokenizer


_LOADERS: dict[str, FolderLoader] = {}


def register_loader(loader: FolderLoader) -> None:
    """Make :func:`load_model` and :func:`load_tokenizer` accept folders ``loader`` recognizes (idempotent by name)."""
    _LOADERS[loader.name] = loader


def _folder_loader(name: str) -> FolderLoader | None:
    return next((loader for loader in _LOADERS.values() if loader.recognizes(name)), None)


def load_model(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """The causal LM ``name`` on ``device`` in ``dtype``, in eval mode with every parameter frozen.

    Raises:
        AssetMissingError: ``"smollm2"`` is not prepared yet.
        ValueError: ``name`` is neither a known name, nor a folder with config.json, nor a loadable hub id.
    """
    loader = _folder_loader(name)
    if name == TINY:
        model = tiny_model(dtype=dtype)
    elif loader is not None:
        model = loader.load(name, dtype)
    else:
        from transformers import AutoModelForCausalLM

        source = _resolve(name)
        try:
            with hf_progress_bars_off():
                model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise _load_error(name, exc) from exc
    return model.to(device).eval().requires_grad_(False)


def load_tokenizer(name: str):
    """The tokenizer of model ``name`` (same resolution as :func:`load_model`; ``"tiny"`` uses SmolLM2's)."""
    from transformers import AutoTokenizer

    loader = _folder_loader(name)
    if loader is not None:
        loader.check_tokenizer(name)
    source = _resolve(SMOLLM2 if name == TINY else name)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _load_error(name, exc) from exc


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A tiny randomly initialised ``LlamaForCausalLM``, the same for the same seed, leaving the global RNG untouched.

    Its vocabulary is SmolLM2's (49,152 tokens) so it runs on real tokenised text. Target shapes are q/o 96×96,
    k/v 48×96, gate/up 160×96, down 96×160: none is a multiple of 64·256 weights, so quantizer padding is exercised.
    Returned in train mode like any freshly built model; :func:`load_model` ("tiny") gives the frozen eval version.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=49152,  # SmolLM2's tokenizer
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,  # head_dim 24
        num_key_value_heads=2,  # grouped-query attention, like SmolLM2
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    # transformers initialises weights from the global CPU generator: fork it so callers' RNG streams are unchanged.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype)


def model_id(name: str) -> str:
    """A stable display name: ``SmolLM2-135M-Instruct``, ``tiny-llama``, the absolute folder, or the hub id."""
    if name == SMOLLM2:
        return "SmolLM2-135M-Instruct"
    if name == TINY:
        return "tiny-llama"
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def weight_hash(model: nn.Module, names: Iterable[str] | None = None) -> str:
    """sha256 hex digest of parameters' names, dtypes, shapes and bytes, over ``names`` sorted (all when None).

    ``names`` are parameter names as in ``model.named_parameters()`` (``model.layers.0.self_attn.q_proj.weight``).
    Hashes about 2 GB/s, so SmolLM2's 135M float32 parameters take a few hundred milliseconds.
    """
    params = dict(model.named_parameters())
    chosen = sorted(params) if names is None else sorted(set(names))
    unknown = [n for n in chosen if n not in params]
    if unknown:
        raise ValueError(f"Unknown parameter names {unknown[:3]}; use names from model.named_parameters().")
    return hash_tensors({name: params[name] for name in chosen})


def hash_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex digest of named tensors' names, dtypes, shapes and bytes, in sorted name order (:func:`weight_hash`'s
    format, for callers that hold the tensors rather than a model, e.g. a model's original weights while it runs
    quantized)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
        # Bytes via a uint8 view: works for bfloat16, which numpy cannot represent.
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def find_targets(model: nn.Module) -> list[Target]:
    """The linear layers to quantize, ordered by block index then by module order inside the block.

    The decoder blocks are the ``nn.ModuleList`` holding the most parameters (``model.layers`` for Llama). Inside it,
    Llama-style names (:data:`LLAMA_KINDS`) are taken when present; otherwise every ``nn.Linear`` of the blocks.
    Embeddings, norms and ``lm_head`` live outside the blocks and are never targets.

    Raises:
        ValueError: the model has no repeated blocks, or no linear layer inside them.
    """
    prefix, blocks = _decoder_blocks(model)
    found = [
        Target(f"{prefix}.{layer}.{sub}", tuple(module.weight.shape), layer, sub.rsplit(".", 1)[-1])
        for layer, block in enumerate(blocks)
        for sub, module in block.named_modules()
        if isinstance(module, nn.Linear)
    ]
    llama = [t for t in found if t.kind in LLAMA_KINDS]
    targets = llama or found
    if not targets:
        raise ValueError(f"No linear layer found inside the decoder blocks '{prefix}' of {type(model).__name__}; "
                         "only models whose blocks use nn.Linear can be quantized.")
    return targets


def _decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    best, best_size = None, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:  # strict: an outer list wins over an equally sized list nested inside it
                best, best_size = (name, module), size
    if best is None:
        raise ValueError(f"No repeated decoder blocks (an nn.ModuleList of layers) found in {type(model).__name__}; "
                         "cannot tell which matrices to quantize.")
    return best


def _resolve(name: str) -> str:
    """What to pass to ``from_pretrained``: the prepared SmolLM2 folder, a local folder, or the hub id."""
    if name == SMOLLM2:
        from coa_lora.models.assets import smollm2_dir

        return str(smollm2_dir())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"Model folder {path} has no config.json; use {_ALLOWED}.")
        return str(path)
    # "org/model" could be either; more slashes, or a leading / . ~, can only be a path.
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ValueError(f"Unknown model {name!r}: no such folder; use {_ALLOWED}.")
    return name


def _load_error(name: str, exc: Exception) -> ValueError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ValueError(f"Unknown model {name!r}: it is not a prepared model or a local folder, and it could not be "
                      f"loaded from the Hugging Face hub ({reason}); use {_ALLOWED}.")
