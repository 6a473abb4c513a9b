"""The fine-tuning and held-out text: Shakespeare's plays, split by whole play, cut into token windows.

The split lives in ``data/shakespeare_split.json`` (committed, so it never depends on file order or a seed):
33 training plays; held out The Tempest (a romance), Julius Caesar (a tragedy) and Twelfth Night (a comedy); one
probe play (The Two Gentlemen of Verona) that only the configuration search scores, so selection never sees text a
reported metric uses; the five poems are excluded. Texts come from the asset cache (``python -m coa_lora prepare``).

Windows never cross a play boundary: each play is tokenised on its own, without special tokens.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch

from coa_lora.models.assets import PREPARE_COMMAND, AssetMissingError, cache_dir, shakespeare_dir
from coa_lora.storage import SHIPPED_DATA, read_safetensors, write_safetensors

SPLIT_FILE = SHIPPED_DATA / "shakespeare_split.json"
SPLITS = ("train", "heldout", "probe")
SPLIT_FORMAT_VERSION = 1


def load_split() -> dict[str, list[str]]:
    """``{"train": [...], "heldout": [...], "probe": [...], "excluded": [...]}``: play stems from :data:`SPLIT_FILE`,
    disjoint."""
    d = json.loads(SPLIT_FILE.read_text())
    if d.get("format_version") != SPLIT_FORMAT_VERSION:
        raise ValueError(f"{SPLIT_FILE} has format_version {d.get('format_version')!r}; this version reads "
                         f"{SPLIT_FORMAT_VERSION}.")
    parts = {k: list(d[k]) for k in (*SPLITS, "excluded")}
    seen: set[str] = set()
    for stems in parts.values():
        if seen & set(stems):
            raise ValueError(f"{SPLIT_FILE} lists {sorted(seen & set(stems))} in more than one part.")
        seen |= set(stems)
    return parts


def plays(split: str) -> dict[str, str]:
    """Stem -> full text of every play in ``split`` ("train", "heldout" or "probe"), sorted by stem.

    Raises:
        ValueError: unknown split name.
        AssetMissingError: the texts are not prepared.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {SPLITS}.")
    folder = shakespeare_dir()
    texts = {}
    for stem in sorted(load_split()[split]):
        path = folder / f"{stem}.txt"
        if not path.is_file():
            raise AssetMissingError(f"The Shakespeare text {path} is missing; run `{PREPARE_COMMAND}`.")
        texts[stem] = path.read_text(encoding="utf-8")
    return texts


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """``(n_tokens,)`` int64 ids of ``text``, without special tokens (windows are plain text continuations).

    A play takes about 0.2 s to tokenise, the training plays 6 s, and the same plays are windowed again and again
    (every held-out evaluation, every training run, in every process), so the ids are kept per (tokenizer, text) in
    memory and, for a fast tokenizer, on disk (``<cache>/tokens``, keyed by a hash of the tokenizer's full definition
    and of the text); the caller gets its own copy.
    """
    return _tokenize(tokenizer, text).clone()


@functools.lru_cache(maxsize=64)
def _tokenize(tokenizer, text: str) -> torch.Tensor:
    key = _tokenizer_key(tokenizer)
    path = None
    if key is not None:
        digest = hashlib.sha256(f"{key}\0{text}".encode()).hexdigest()[:32]
        path = cache_dir() / "tokens" / f"{digest}.safetensors"
        if path.is_file():
            try:
                return read_safetensors(path)[0]["ids"]
            except (ValueError, KeyError):
                pass  # an unreadable entry is recomputed and rewritten
    # verbose=False: whole plays exceed the model's context on purpose; they are cut into windows afterwards.
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    if path is not None:
        write_safetensors(path, {"ids": ids}, {"format": "pt"})
    return ids


@functools.lru_cache(maxsize=8)
def _tokenizer_key(tokenizer) -> str | None:
    """A hash of everything that decides a fast tokenizer's output (its JSON definition); None for a slow one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    return hashlib.sha256(backend.to_str().encode()).hexdigest()


def token_windows(
    tokenizer, text: str, length: int, stride: int | None = None, max_windows: int | None = None
) -> torch.Tensor:
    """Fixed-length windows of the tokenised ``text``.

    Window ``k`` covers tokens ``[k*stride, k*stride + length)``; ``stride`` defaults to ``length`` (non-overlapping,
    every token used once). A final partial window is dropped, so a text shorter than ``length`` gives none.

    Returns:
        ``(n_windows, length)`` int64, ``n_windows = min(max_windows, (n_tokens - length) // stride + 1)``
        (0 when ``n_tokens < length``).
    """
    stride = length if stride is None else stride
    if length < 1 or stride < 1:
        raise ValueError(f"Window length and stride must be positive integers, got length={length}, stride={stride}.")
    ids = tokenize(tokenizer, text)
    if ids.numel() < length:
        return torch.empty(0, length, dtype=torch.long)
    windows = ids.unfold(0, length, stride)
    if max_windows is not None:
        windows = windows[:max_windows]
    return windows.contiguous()


def calibration_batches(tokenizer, n: int, length: int, seed: int) -> torch.Tensor:
    """``n`` distinct windows of ``length`` tokens from the training plays, the same for the same seed.

    The pool is every non-overlapping window of every training and probe play (in sorted play order); ``n`` of them
    are drawn without replacement by a ``torch.Generator`` seeded with ``seed`` (the global RNG is not touched). Tokenising
    the 1.4M training tokens takes seconds, so the pool is kept per (tokenizer, length) for later calls.

    Returns:
        ``(n, length)`` int64 token ids.
    """
    if n < 1:
        raise ValueError(f"Number of calibration windows must be positive, got {n}.")
    # Train + probe: the 34 plays the damage tables were always calibrated on (the probe play left training later), so
    # every damage table and allocation grid computed before stays what a recomputation gives.
    pool = play_windows(tokenizer, length, ("train", "probe"))
    if n > len(pool):
        raise ValueError(f"Only {len(pool)} windows of {length} tokens exist in the training plays; asked for {n}.")
    generator = torch.Generator().manual_seed(seed)
    return pool[torch.randperm(len(pool), generator=generator)[:n]]


def play_windows(tokenizer, length: int, splits: tuple[str, ...] = ("train",)) -> torch.Tensor:
    """``(n_windows, length)`` every non-overlapping window of the plays of ``splits``, in sorted play order.

    Tokenising the 1.4M training tokens takes seconds, so the result is kept per (tokenizer, length, splits, text
    folder); it is shared, so callers index it (a copy) and never change it in place.
    """
    return _play_windows(tokenizer, length, tuple(splits), shakespeare_dir())


@functools.lru_cache(maxsize=8)
def _play_windows(tokenizer, length: int, splits: tuple[str, ...], folder: Path) -> torch.Tensor:
    # ``folder`` is only part of the cache key, so pointing COA_LORA_CACHE elsewhere is not served stale text.
    texts = {stem: text for split in splits for stem, text in plays(split).items()}
    return torch.cat([token_windows(tokenizer, texts[stem], length) for stem in sorted(texts)])
