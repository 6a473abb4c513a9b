"""Atomic writes: files (a temp file in the same folder, fsync, rename) and whole folders (a staging sibling, renamed).

A reader therefore sees either the old file or folder or the new one, never half of one — also after a SIGKILL.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save


def _read_umask() -> int:
    # os.umask can only be read by setting it: do that once, at import, not per write (the app writes from threads).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()

# The project's shipped data (data/ beside the package): embedded tasks, the text split, precomputed tables.
SHIPPED_DATA = Path(__file__).resolve().parent.parent / "data"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file owner-only (0600); give it the mode an ordinary open() would (0666 minus umask).
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a corrupt file raises ValueError naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file ({exc}).") from None


@contextmanager
def staged_folder(dest: str | os.PathLike, replace: bool = False, keep_existing: bool = False,
                  check: Callable[[], None] | None = None) -> Iterator[Path]:
    """A fresh hidden sibling of ``dest`` to fill; renamed to ``dest`` when the block succeeds, removed otherwise.

    ``dest`` therefore holds either nothing (or what it held) or the complete new folder, also after a SIGKILL: stages
    of killed processes (their pid is in the name) are removed by the next call for the same ``dest``.

    - ``replace``: a non-empty ``dest`` is moved aside, the stage renamed into place, then the old one deleted (put
      back if the rename fails). Without it, renaming onto a non-empty ``dest`` fails with ``OSError``.
    - ``keep_existing``: if another process completed ``dest`` meanwhile, keep theirs and drop this stage.
    - ``check``: called after the block, just before renaming (e.g. to re-check that ``dest`` may be overwritten).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_stages(dest)
    stage = dest.parent / f".{dest.name}.staging-{os.getpid()}-{secrets.token_hex(4)}"
    stage.mkdir()  # mkdir (unlike mkdtemp) honours the umask: the renamed folder gets the usual permissions
    old = dest.parent / f".{dest.name}.replaced-{secrets.token_hex(4)}"
    try:
        yield stage
        if check is not None:
            check()
        moved = replace and dest.exists() and any(dest.iterdir())
        if moved:
            os.rename(dest, old)
        try:
            os.rename(stage, dest)
        except OSError:
            if moved:
                os.rename(old, dest)
            if not (keep_existing and dest.is_dir()):
                raise
        if moved:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_dead_stages(dest: str | os.PathLike) -> None:
    """Delete the staging folders of ``dest`` whose process (the pid in their name) is no longer alive."""
    dest = Path(dest)
    for stage in dest.parent.glob(f".{dest.name}.staging-*"):
        try:
            os.kill(int(stage.name.rsplit(".staging-", 1)[1].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(stage, ignore_errors=True)
        except (ValueError, PermissionError):  # not our naming, or another user's live process: leave it
            pass


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's content, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
