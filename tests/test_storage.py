"""Atomic writes: the content, the file mode an ordinary open() would give, no temp files left behind."""
import json
import os

import pytest
import torch

from coa_lora.storage import read_safetensors, write_json, write_safetensors


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
