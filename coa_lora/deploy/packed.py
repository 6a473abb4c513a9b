"""A packed, deployable quantized checkpoint: one folder per configuration, whose bytes on disk match its bits.

    summary = save_packed(wb, config, "smollm2-3bit", adapter=coa)  # coa: a trained CoALoRAModel, optional
    model = load_packed("smollm2-3bit")                             # coa_lora.deploy.packed_load: the model back

Folder layout (format ``coa-lora-packed``, version 1):

- ``coa_lora_packed.json``: the manifest: format, version, source model, average bits, byte counts, the size of
  every other file and the sha256 of the weight files, so that a truncated, replaced or tampered file is named before
  anything is loaded.
- ``quantized.safetensors``: per target matrix ``<name>.codes`` (bit-packed NF codes of whole blocks, uint8),
  ``<name>.scale_codes`` (bit-packed first-level scale codes, uint8), ``<name>.group_max`` (second-level scales in the
  option's dtype) and ``<name>.offset`` (``(1,)`` float32); its metadata ``targets`` holds each matrix's shape and
  option, so the file describes itself.
- ``unquantized.safetensors``: every other parameter (embeddings, norms, an untied lm_head, biases) at its dtype.
- ``quant_config.json`` (:meth:`ModelConfig.to_dict`), ``config.json`` (+ ``generation_config.json``) of transformers,
  the tokenizer files, and a ``README.md`` for whoever receives the folder.
- with an adapter: ``adapter_model.safetensors`` + ``adapter_config.json`` from
  :func:`~coa_lora.lora.adapter.export_peft` (U_θ folded into B). They sit at the top so that the folder is also a
  standard peft adapter folder: ``PeftModel.from_pretrained(base, folder)`` reads it exactly as it reads
  ``export --adapter-only``'s output.

Bytes: the tensors of ``quantized.safetensors`` hold exactly Σ ``option.storage_bytes(numel)``. That exceeds
Σ bits_per_weight × numel / 8 by the padding, per matrix: the codes of the last, partial block (< B0 weights), the
last partial group's second-level scale (< one number of dtype s), the packing of the scale codes to whole bytes
(< b0/8 + 3 bytes), and the 4-byte offset (which the bits formula does not count). A matrix whose size is a
multiple of B0·B1 and whose block count is a multiple of 8 pads nothing but the offset. The file adds its JSON
header (a few hundred bytes per matrix, reported apart).

The folder is written atomically: everything is staged in a hidden sibling folder that is renamed into place only
when complete, so a failure (or a kill) leaves either no folder or the previous one. A kill leaves the staging folder
behind; the next export to the same place deletes it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from coa_lora.configs.model_config import ModelConfig
from coa_lora.lora.adapter import LoraLinear, export_peft
from coa_lora.lora.instantiate import QuantizedModel
from coa_lora.progress import ProgressFn, report
from coa_lora.quant.quantizer import quantize
from coa_lora.storage import file_sha256, staged_folder, write_json, write_safetensors

FORMAT = "coa-lora-packed"
FORMAT_VERSION = 1
MANIFEST = "coa_lora_packed.json"
QUANTIZED = "quantized.safetensors"
UNQUANTIZED = "unquantized.safetensors"
QUANT_CONFIG = "quant_config.json"
PARTS = ("codes", "scale_codes", "group_max", "offset")
# Files whose content the manifest also hashes (a same-size replacement of a weight file is caught at load).
HASHED = (QUANTIZED, UNQUANTIZED, "adapter_model.safetensors")


@dataclass(frozen=True)
class PackedSummary:
    """What a packed folder holds, in bytes (read back from its manifest)."""

    folder: Path
    model_id: str
    avg_bits: float
    n_targets: int
    target_bytes: int  # tensor bytes of quantized.safetensors: Σ option.storage_bytes(numel)
    ideal_target_bytes: float  # Σ bits_per_weight × numel / 8
    quantized_file_bytes: int  # quantized.safetensors on disk, header included
    unquantized_bytes: int  # unquantized.safetensors on disk
    size_bytes: int  # the configuration's computed whole-model size (ModelConfig.size_bytes)
    full_size_bytes: int  # the unquantized model at its dtype (ModelLayout.full_size_bytes)
    disk_bytes: int  # every file of the folder
    adapter: bool

    @classmethod
    def from_manifest(cls, folder: Path, m: dict) -> "PackedSummary":
        return cls(folder, m["model_id"], m["avg_bits"], m["n_targets"], m["target_bytes"], m["ideal_target_bytes"],
                   m["files"][QUANTIZED], m["files"][UNQUANTIZED], m["size_bytes"], m["full_size_bytes"],
                   sum(m["files"].values()), m["adapter"])

    def to_dict(self) -> dict:
        return {**asdict(self), "folder": str(self.folder)}

    def describe(self) -> str:
        """Three lines for the CLI: bytes on disk next to the computed bytes."""
        mib = 1024**2
        on_disk = self.quantized_file_bytes + self.unquantized_bytes
        padding = self.target_bytes - self.ideal_target_bytes
        header = self.quantized_file_bytes - self.target_bytes
        return "\n".join([
            f"{self.model_id} at {self.avg_bits:.4f} average bits -> {self.folder}"
            + (" (with its adapter)" if self.adapter else ""),
            f"weights on disk {on_disk / mib:.2f} MiB vs computed {self.size_bytes / mib:.2f} MiB; unquantized model "
            f"{self.full_size_bytes / mib:.2f} MiB ({on_disk / self.full_size_bytes:.1%}); whole folder "
            f"{self.disk_bytes / mib:.2f} MiB",
            f"target matrices {self.target_bytes:,} bytes = bits x weights / 8 ({self.ideal_target_bytes:,.0f}) + "
            f"{padding:,.0f} padding; file header {header:,} bytes",
        ])


def is_packed(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a folder with a packed checkpoint's manifest (not yet whether it is intact)."""
    return (Path(folder).expanduser() / MANIFEST).is_file()


# ----- writing --------------------------------------------------------------------------------------------------------
def save_packed(source, config: ModelConfig, folder: str | os.PathLike, adapter=None, tokenizer=None,
                overwrite: bool = False, progress: Optional[ProgressFn] = None) -> PackedSummary:
    """Write ``config`` of ``source``'s model as a packed folder (layout in the module docstring).

    Args:
        source: a :class:`~coa_lora.Workbench` (its tokenizer is included unless ``tokenizer`` is given) or a
            :class:`~coa_lora.QuantizedModel`. Target weights are quantized from its full-precision originals, so the
            configuration currently applied does not matter; an adapter wrapped around the model is skipped.
        config: one option per target matrix of ``source``'s layout.
        adapter: a :class:`~coa_lora.CoALoRAModel` on the same model, folded for ``config`` (it is set to ``config``).
        tokenizer: anything with ``save_pretrained(folder)``; None with a QuantizedModel writes no tokenizer.
        overwrite: replace an existing packed folder (a folder that is not one is never replaced).

    Raises:
        ValueError: ``config`` or ``adapter`` belongs to another model, or ``folder`` exists (and may not be
            replaced). Nothing is written then.
    """
    qmodel: QuantizedModel = getattr(source, "qmodel", source)
    if tokenizer is None and hasattr(source, "qmodel"):
        tokenizer = source.tokenizer  # before anything is computed: a missing asset fails first
    layout = qmodel.layout
    if config.layout.names != layout.names:
        raise ValueError("This configuration was made for a different model (its target matrices differ).")
    if adapter is not None and adapter.layout.names != layout.names:
        raise ValueError("The adapter was trained on a different model (its target matrices differ).")
    folder = Path(folder).expanduser()
    check_destination(folder, overwrite)

    total = len(layout) + 2
    tensors, described = {}, {}
    for i, (target, option) in enumerate(zip(layout.targets, config.options)):
        qt = quantize(qmodel.original_weight(target.name), option)
        for part in PARTS:
            tensors[f"{target.name}.{part}"] = getattr(qt, part).reshape(-1).cpu()
        described[target.name] = {"shape": list(target.shape), "option": option.to_dict()}
        report(progress, i + 1, total, target.name)
    weight_dtype = qmodel.original_weight(layout.names[0]).dtype

    # Re-checked just before the rename: someone may have written there in the meantime.
    with staged_folder(folder, replace=True, check=lambda: check_destination(folder, overwrite)) as stage:
        write_safetensors(stage / QUANTIZED, tensors, {"format": "pt", "targets": json.dumps(described)})
        write_safetensors(stage / UNQUANTIZED, _unquantized_state(qmodel), {"format": "pt"})
        write_json(stage / QUANT_CONFIG, config.to_dict())
        model = qmodel.model
        model.config.save_pretrained(stage)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(stage)
        if tokenizer is not None:
            tokenizer.save_pretrained(stage)
        report(progress, len(layout) + 1, total, "adapter" if adapter is not None else "files")
        if adapter is not None:
            export_peft(adapter, stage, config)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_id": layout.model_id,
            "weight_dtype": str(weight_dtype).removeprefix("torch."),
            "avg_bits": config.avg_bits,
            "n_targets": len(layout),
            "target_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
            "ideal_target_bytes": sum(o.bits_per_weight * t.numel for o, t in zip(config.options, layout.targets)) / 8,
            "size_bytes": config.size_bytes,
            "full_size_bytes": layout.full_size_bytes,
            "adapter": adapter is not None,
            "tokenizer": tokenizer is not None,
        }
        manifest["files"] = _file_sizes(stage)
        (stage / "README.md").write_text(_readme(PackedSummary.from_manifest(folder, manifest), weight_dtype))
        manifest["files"] = _file_sizes(stage)
        manifest["sha256"] = {name: file_sha256(stage / name) for name in HASHED if (stage / name).is_file()}
        write_json(stage / MANIFEST, manifest)
    report(progress, total, total, str(folder))
    return PackedSummary.from_manifest(folder, manifest)


def _unquantized_state(qmodel: QuantizedModel) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer except the targets, by its name in the bare model; a tied parameter
    once (transformers ties it again at load); the LoRA factors of a wrapped adapter are skipped (peft files)."""
    model = qmodel.model
    skip = {id(p) for p in qmodel.parameters.values()}
    skip |= {id(p) for m in model.modules() if isinstance(m, LoraLinear) for p in (m.lora_A.weight, m.lora_B.weight)}
    state = {}
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) not in skip:
            skip.add(id(value))
            state[name.replace(".base_layer.", ".")] = value.detach().cpu()
    return state


def _file_sizes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def check_destination(folder: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise ValueError unless ``folder`` may be written: absent, empty, or (with ``overwrite``) a packed folder."""
    folder = Path(folder).expanduser()
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return
    if overwrite and is_packed(folder):
        return
    what = "a packed folder" if is_packed(folder) else "not a packed folder"
    hint = "pass overwrite=True (CLI: --force) to replace it" if is_packed(folder) else "choose a new folder"
    raise ValueError(f"{folder} already exists and is {what}; {hint}.")


def _readme(s: PackedSummary, weight_dtype: torch.dtype) -> str:
    mib = 1024**2
    adapter = ("A CoA-LoRA adapter for this configuration is included as a standard peft LoRA "
               "(`adapter_model.safetensors`, `adapter_config.json`; U_θ folded into B). `load_packed` applies it."
               if s.adapter else "No adapter is included.")
    ideal = f"bits × weights / 8 = {s.ideal_target_bytes / mib:.2f} MiB"
    return f"""# {s.model_id} at {s.avg_bits:.3f} bits per weight (coa-lora packed checkpoint)

A mixed-precision quantization of {s.model_id}: each of its {s.n_targets} target matrices (the linear layers of the
decoder blocks) is stored as bit-packed NF codes with double-quantized block scales, under its own option
(`quant_config.json`). Every other parameter is kept at {str(weight_dtype).removeprefix("torch.")}.
{adapter}

| part | size |
|---|---|
| quantized target matrices (`{QUANTIZED}`) | {s.quantized_file_bytes / mib:.2f} MiB ({ideal}) |
| unquantized parameters (`{UNQUANTIZED}`) | {s.unquantized_bytes / mib:.2f} MiB |
| this folder | {s.disk_bytes / mib:.2f} MiB |
| the unquantized model | {s.full_size_bytes / mib:.2f} MiB |

## Load

```python
from coa_lora import load_packed
model = load_packed("path/to/this/folder")   # a transformers causal LM, adapter applied; device="cuda" to move it
```

or `python -m coa_lora eval --model path/to/this/folder --tasks ppl`. Weights are dequantized when loaded, so
the model runs at {str(weight_dtype).removeprefix("torch.")} in memory: the packing saves disk and transfer, not
run-time memory. Format `{FORMAT}` version {FORMAT_VERSION}; `{MANIFEST}` lists every file's size.
"""


__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "PackedSummary", "check_destination", "is_packed", "save_packed"]
