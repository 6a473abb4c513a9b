"""Reading a packed checkpoint (format in :mod:`coa_lora.deploy.packed`): check it, then rebuild the quantized model.

    model = load_packed("smollm2-3bit")                  # transformers model; a peft.PeftModel if it has an adapter
    model = load_packed("smollm2-3bit", adapter="merge")  # the adapter added into the weights: a plain model

Every way a folder can be wrong (not a packed folder, another version, a file missing, truncated or replaced, parts
that disagree with each other or with the model's config) raises ValueError with one sentence, before any model is
built.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Optional

import torch

from coa_lora.configs.model_config import ModelConfig
from coa_lora.deploy.packed import (FORMAT, FORMAT_VERSION, MANIFEST, PARTS, QUANT_CONFIG, QUANTIZED, UNQUANTIZED,
                                    PackedSummary, is_packed)
from coa_lora.lora.instantiate import layout_of
from coa_lora.deploy.bnb import use_bitsandbytes_
from coa_lora.deploy.packed_linear import PackedLinear
from coa_lora.models.loading import FolderLoader, register_loader
from coa_lora.progress import hf_progress_bars_off
from coa_lora.quant.packing import packed_nbytes
from coa_lora.quant.quantizer import QuantizedTensor, dequantize
from coa_lora.quant.space import QuantOption
from coa_lora.storage import file_sha256, read_safetensors

#: How :func:`load_packed` treats an included adapter: peft-wrapped, merged into the weights, or left out.
ADAPTER_MODES = ("peft", "merge", "none")
WEIGHT_MODES = ("dequantized", "packed")
KERNELS = ("auto", "dequantize")
_MANIFEST_KEYS = ("model_id", "weight_dtype", "avg_bits", "n_targets", "target_bytes", "ideal_target_bytes",
                  "size_bytes", "full_size_bytes", "adapter", "files")


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of a packed folder, after checking that every file it lists is there at its size.

    Raises:
        ValueError: not a packed folder, an unsupported version, or a file missing, truncated or replaced.
    """
    folder = Path(folder).expanduser()
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder} is not a coa-lora packed folder (it has no {MANIFEST}); write one with "
                         "`python -m coa_lora export`.")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); export the folder again.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{folder} is not a coa-lora packed folder ({MANIFEST} does not say format {FORMAT!r}).")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder} has packed format version {manifest.get('format_version')!r}; this version of "
                         f"coa-lora reads version {FORMAT_VERSION}.")
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing or not isinstance(manifest["files"], dict):
        raise ValueError(f"{path} is malformed (missing or bad: {missing or ['files']}); export the folder again.")
    for name, size in manifest["files"].items():
        file = folder / name
        if not file.is_file():
            raise ValueError(f"{folder} is incomplete: {name} is missing.")
        if file.stat().st_size != size:
            raise ValueError(f"{file} has {file.stat().st_size} bytes where the manifest says {size}: the file is "
                             "truncated or was replaced; export the folder again.")
    return manifest


def read_summary(folder: str | os.PathLike) -> PackedSummary:
    """The :class:`PackedSummary` of a packed folder (its manifest, checked)."""
    return PackedSummary.from_manifest(Path(folder).expanduser(), read_manifest(folder))


def load_packed(folder: str | os.PathLike, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None,
                adapter: str = "peft", weights: str = "dequantized", kernel: str = "auto") -> torch.nn.Module:
    """Rebuild the quantized model of a packed folder, in eval mode with every parameter frozen.

    Target weights are dequantized by :func:`~coa_lora.quant.quantizer.dequantize` from the stored codes, so the logits
    equal those of :class:`~coa_lora.QuantizedModel` under the same configuration on the same model.

    Args:
        device: where the model goes; dequantization runs on the CPU.
        dtype: of the rebuilt model; default: the dtype the model was exported from.
        adapter: with an included adapter, ``"peft"`` wraps the model in a ``peft.PeftModel``, ``"merge"`` adds
            scaling · B'A into the dequantized weights (a plain transformers model), ``"none"`` leaves it out. With
            ``weights="packed"`` both ``"peft"`` and ``"merge"`` keep it as a LoRA branch of each packed layer.
        weights: ``"dequantized"`` loads every target as a float matrix; ``"packed"`` keeps each one packed in a
            :class:`~coa_lora.deploy.packed_linear.PackedLinear`, dequantized on the fly in its forward: run-time
            memory then follows the configuration's bits (the logits are the same, bit for bit without an adapter).
        kernel: with ``weights="packed"``, ``"auto"`` hands every NF4 layer with blocks of 64 to bitsandbytes'
            ``Linear4bit`` when bitsandbytes works on ``device`` (same weights; :mod:`coa_lora.deploy.bnb`), and
            ``"dequantize"`` dequantizes every layer in torch code.

    Raises:
        ValueError: the folder is not a packed folder, is incomplete or corrupt, or its parts disagree.
    """
    from transformers import AutoConfig

    if adapter not in ADAPTER_MODES:
        raise ValueError(f"adapter must be one of {ADAPTER_MODES}, got {adapter!r}.")
    if weights not in WEIGHT_MODES:
        raise ValueError(f"weights must be one of {WEIGHT_MODES}, got {weights!r}.")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}.")
    folder = Path(folder).expanduser()
    manifest = read_manifest(folder)
    for name, digest in manifest.get("sha256", {}).items():  # folders written before hashes were kept: sizes only
        if file_sha256(folder / name) != digest:
            raise ValueError(f"{folder / name} does not hold what was exported (its sha256 differs from the "
                             "manifest's): the file was changed afterwards; export the folder again.")
    stored = getattr(torch, str(manifest["weight_dtype"]), None)
    if not isinstance(stored, torch.dtype):
        raise ValueError(f"{folder / MANIFEST} names an unknown weight dtype {manifest['weight_dtype']!r}.")
    dtype = dtype or stored
    hf_config = AutoConfig.from_pretrained(folder)
    model_class = _causal_lm_class(hf_config, folder)
    with torch.device("meta"):  # the skeleton only names the parameters: no memory, no initialisation
        skeleton = model_class(hf_config)
    layout = layout_of(skeleton, manifest["model_id"])
    config = ModelConfig.from_json((folder / QUANT_CONFIG).read_text(), layout)
    state, _ = read_safetensors(folder / UNQUANTIZED)
    quantized = _quantized_targets(folder, config)
    if weights == "packed":
        model = _packed_model(model_class, hf_config, state, quantized, dtype, folder)
        if manifest["adapter"] and adapter != "none":
            _attach_lora(model, folder, dtype)
        model = model.to(device).eval().requires_grad_(False)
        if kernel == "auto":
            use_bitsandbytes_(model)
        return model
    # One decode per matrix in a fresh process: compiling the decode kernels (seconds per bit width and block size)
    # costs far more than it saves here, so they run eagerly, with identical values (tests/quant/test_kernels.py).
    with torch.compiler.set_stance("force_eager"):
        state.update({f"{name}.weight": dequantize(qt, dtype) for name, qt in quantized.items()})
    expected = {n for n, _ in _unique_state(skeleton)}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"The weights in {folder} do not fit its config.json (missing {missing[:2]}, unknown "
                         f"{extra[:2]}); export the folder again.")
    with hf_progress_bars_off():
        model = model_class.from_pretrained(None, config=hf_config, state_dict=state, dtype=dtype)
    if manifest["adapter"] and adapter != "none":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder))
        if adapter == "merge":
            model = model.merge_and_unload()
    return model.to(device).eval().requires_grad_(False)


def _causal_lm_class(hf_config, folder: Path):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(hf_config)]
    except KeyError:
        raise ValueError(f"{folder}/config.json describes a {type(hf_config).__name__}, which transformers cannot "
                         "build as a causal language model.") from None


def _unique_state(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the state dict, each tied tensor once (under its first name)."""
    seen = set()
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) not in seen:
            seen.add(id(value))
            yield name, value


def _packed_model(model_class, hf_config, state: dict, quantized: dict, dtype: torch.dtype, folder: Path):
    """The model with a :class:`PackedLinear` at every target and ``state`` everywhere else, never holding a float
    copy of a target: the skeleton's parameters are empty (meta) until the stored tensors are assigned to them."""
    from accelerate import init_empty_weights
    from transformers import GenerationConfig

    with init_empty_weights():  # parameters on meta, buffers (rotary frequencies) real
        model = model_class(hf_config)
    for name, qt in quantized.items():
        parent, _, attr = name.rpartition(".")
        bias = state.pop(f"{name}.bias", None)
        model.get_submodule(parent).register_module(attr, PackedLinear(qt, None if bias is None else bias.to(dtype)))
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    empty = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unexpected or empty:
        raise ValueError(f"The weights in {folder} do not fit its config.json (missing {empty[:2]}, unknown "
                         f"{unexpected[:2]}); export the folder again.")
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model


def _attach_lora(model: torch.nn.Module, folder: Path, dtype: torch.dtype) -> None:
    """The folder's peft adapter as a LoRA branch of each packed layer (peft cannot wrap a PackedLinear)."""
    settings = json.loads((folder / "adapter_config.json").read_text())
    tensors, _ = read_safetensors(folder / "adapter_model.safetensors")
    scaling = settings["lora_alpha"] / settings["r"]
    for name, module in model.named_modules():
        if isinstance(module, PackedLinear):
            a, b = (tensors.get(f"base_model.model.{name}.lora_{x}.weight") for x in ("A", "B"))
            if a is None or b is None:
                raise ValueError(f"{folder / 'adapter_model.safetensors'} has no LoRA factors for {name}; export "
                                 "the folder again.")
            module.set_lora_(a.to(dtype), b.to(dtype), scaling)


def _quantized_targets(folder: Path, config: ModelConfig) -> dict[str, QuantizedTensor]:
    """``{target name: its QuantizedTensor}``, after checking the stored tensors against the configuration."""
    tensors, metadata = read_safetensors(folder / QUANTIZED)
    described = {t.name: {"shape": list(t.shape), "option": o.to_dict()}
                 for t, o in zip(config.layout.targets, config.options)}
    if json.loads(metadata.get("targets", "null")) != described:
        raise ValueError(f"{folder / QUANTIZED} does not hold the matrices of {folder / QUANT_CONFIG} (shapes or "
                         "options differ); export the folder again.")
    out = {}
    for target, option in zip(config.layout.targets, config.options):
        parts = {part: tensors.get(f"{target.name}.{part}") for part in PARTS}
        _check_parts(parts, target.numel, option, f"{folder / QUANTIZED}: {target.name}")
        out[target.name] = QuantizedTensor(parts["codes"], parts["scale_codes"], parts["group_max"],
                                           parts["offset"].reshape(()), target.shape, option)
    return out


def _check_parts(parts: dict, numel: int, option: QuantOption, where: str) -> None:
    """The four stored tensors of one matrix have the sizes and dtypes its option implies."""
    n_blocks = -(-numel // option.block_size)
    expected = {
        "codes": (packed_nbytes(n_blocks * option.block_size, option.bits), torch.uint8),
        "scale_codes": (packed_nbytes(n_blocks, option.scale_bits), torch.uint8),
        "group_max": (-(-n_blocks // option.scale_block_size), option.torch_scale_dtype),
        "offset": (1, torch.float32),
    }
    for part, (size, dtype) in expected.items():
        t = parts[part]
        if t is None or t.numel() != size or t.dtype != dtype:
            found = "missing" if t is None else f"{t.numel()} × {t.dtype}"
            raise ValueError(f"{where}.{part} is {found}, expected {size} × {dtype}; export the folder again.")



__all__ = ["ADAPTER_MODES", "KERNELS", "WEIGHT_MODES", "load_packed", "read_manifest", "read_summary"]


def _check_tokenizer(folder: str) -> None:
    if not read_manifest(folder).get("tokenizer", False):
        raise ValueError(f"The packed folder {folder} was exported without a tokenizer; export it again with one.")


# Packed folders load wherever a model name is accepted (load_model, the CLI's --model, the explorer), merged with
# their adapter so every command runs the deployed model; models/ never imports this layer (it is below it).
register_loader(FolderLoader("packed", recognizes=is_packed,
                             load=lambda folder, dtype: load_packed(folder, dtype=dtype, adapter="merge"),
                             check_tokenizer=_check_tokenizer))
