import json

import pandas as pd
import pytest
import torch

from coa_lora.runs import (CHECKPOINT_FILE, RunInfo, append_metrics, load_checkpoint, read_metrics, read_run_info,
                           save_checkpoint, truncate_metrics, write_run_info)


def params_and_optimizer(seed=0, shape=(3, 4)):
    g = torch.Generator().manual_seed(seed)
    params = {"adapter.x.lora_A.weight": torch.nn.Parameter(torch.randn(shape, generator=g)),
              "network.out.bias": torch.nn.Parameter(torch.randn(5, generator=g))}
    optimizer = torch.optim.AdamW(params.values(), lr=0.1)
    return params, optimizer


def stepped(seed=0):
    params, optimizer = params_and_optimizer(seed)
    sum((p**2).sum() for p in params.values()).backward()
    optimizer.step()
    return params, optimizer


def test_checkpoint_round_trip_restores_parameters_and_adam_state(tmp_path):
    params, optimizer = stepped()
    save_checkpoint(tmp_path, 7, params, optimizer, "hash")
    fresh, fresh_opt = params_and_optimizer(seed=1)
    assert load_checkpoint(tmp_path, fresh, fresh_opt, "hash") == 7
    for n in params:
        assert torch.equal(fresh[n], params[n])
    a, b = optimizer.state_dict(), fresh_opt.state_dict()
    for i in a["state"]:
        for key, value in a["state"][i].items():
            assert torch.equal(torch.as_tensor(b["state"][i][key]), torch.as_tensor(value))
    assert b["param_groups"][0]["lr"] == 0.1


def test_no_checkpoint_gives_none(tmp_path):
    params, optimizer = params_and_optimizer()
    assert load_checkpoint(tmp_path, params, optimizer, "hash") is None


def assert_unchanged(params, before):
    assert all(torch.equal(params[n], before[n]) for n in params)


def test_checkpoint_of_another_model_or_shape_or_corrupt_file_changes_nothing(tmp_path):
    params, optimizer = stepped()
    save_checkpoint(tmp_path, 3, params, optimizer, "hash")
    target, target_opt = params_and_optimizer(seed=2)
    before = {n: p.detach().clone() for n, p in target.items()}
    with pytest.raises(ValueError, match="different model"):
        load_checkpoint(tmp_path, target, target_opt, "other-hash")
    other, other_opt = params_and_optimizer(seed=2, shape=(2, 4))
    with pytest.raises(ValueError, match="different adapter"):
        load_checkpoint(tmp_path, other, other_opt, "hash")
    data = (tmp_path / CHECKPOINT_FILE).read_bytes()
    (tmp_path / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path, target, target_opt, "hash")
    assert_unchanged(target, before)
    assert target_opt.state_dict()["state"] == {}


def test_run_json_round_trip_and_unknown_version(tmp_path):
    info = RunInfo("tiny-llama", "abc", "coa", {"steps": 3}, 0, {"torch": torch.__version__})
    write_run_info(tmp_path, info)
    assert read_run_info(tmp_path) == info
    d = json.loads((tmp_path / "run.json").read_text())
    d["format_version"] = 99
    (tmp_path / "run.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="format_version 99"):
        read_run_info(tmp_path)
    with pytest.raises(ValueError, match="not a run folder"):
        read_run_info(tmp_path / "missing")


def test_metrics_read_by_pandas_in_one_call_and_truncate(tmp_path):
    for step in range(1, 5):
        append_metrics(tmp_path, {"step": step, "loss": 1.0 / step})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a kill mid-line
    truncate_metrics(tmp_path, 3)
    assert pd.read_json(tmp_path / "metrics.jsonl", lines=True)["step"].tolist() == [1, 2, 3]
    assert read_metrics(tmp_path)["loss"].tolist() == [1.0, 0.5, 1.0 / 3]
