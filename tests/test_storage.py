"""Atomic writes: the content, the file mode an ordinary open() would give, no temp files left behind."""
import json
import os
import subprocess
import sys

import pytest
import torch

from coa_lora.storage import read_safetensors, staged_folder, write_json, write_safetensors


def test_write_json_is_complete_and_world_readable_like_open(tmp_path):
    path = tmp_path / "sub" / "x.json"
    write_json(path, {"a": [1, 2]})
    write_json(path, {"a": [3]})  # replaces in place
    assert json.loads(path.read_text()) == {"a": [3]}
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.json"
    write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True} and len(list(tmp_path.iterdir())) == 1


def test_safetensors_round_trip_and_corrupt_file(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"w": torch.arange(6.0).reshape(2, 3).T}, {"k": "v"})
    tensors, meta = read_safetensors(path)
    assert torch.equal(tensors["w"], torch.arange(6.0).reshape(2, 3).T) and meta == {"k": "v"}
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_safetensors(path)


# ----- staged folders (assets, packed exports and compact runs all write through staged_folder) ------------------------
def test_staged_folder_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "asset"
    with pytest.raises(RuntimeError), staged_folder(dest) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed halfway")
    assert list(tmp_path.iterdir()) == []
    with staged_folder(dest) as tmp:
        (tmp / "whole.bin").write_bytes(b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["asset"]
    assert (dest / "whole.bin").read_bytes() == b"x"


def test_staged_folder_removes_stages_of_dead_processes_only(tmp_path):
    script = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    orphan = tmp_path / f".asset.staging-{int(dead.stdout)}-0000"
    alive = tmp_path / f".asset.staging-{1}-0000"  # pid 1 always exists
    orphan.mkdir()
    alive.mkdir()
    with staged_folder(tmp_path / "asset"):
        pass
    assert not orphan.exists() and alive.exists()


def test_staged_folder_replaces_keeps_or_refuses_an_existing_folder(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(OSError), staged_folder(dest) as tmp:  # plain: never over a non-empty folder
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in dest.iterdir()] == ["old.txt"]
    with staged_folder(dest, keep_existing=True) as tmp:  # another process finished first: theirs stays
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in dest.iterdir()] == ["old.txt"]
    with staged_folder(dest, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no stage, no moved-aside copy left


def test_staged_folder_check_runs_before_the_rename_and_can_veto_it(tmp_path):
    dest = tmp_path / "out"

    def veto():
        raise ValueError("someone wrote there meanwhile")

    with pytest.raises(ValueError, match="meanwhile"), staged_folder(dest, replace=True, check=veto) as tmp:
        (tmp / "new.txt").write_text("new")
    assert list(tmp_path.iterdir()) == []
