import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from coa_lora import QuantizedModel, Workbench
from coa_lora.lora.trainer import TrainOptions, load_trained, probe_windows, train
from coa_lora.models.data import plays, token_windows
from coa_lora.models.loading import tiny_model
from coa_lora.runs import CHECKPOINT_FILE, read_metrics
from coa_lora.storage import read_safetensors

# Rank 8 (alpha 16): the hyperparameters these checks were tuned with on the tiny random model; the library's
# default is rank 64 since #37.
SMALL = {"rank": 8, "alpha": 16.0, "steps": 6, "budgets": (2.5, 4.0, 6.0), "seq_length": 32, "batch_size": 2,
         "checkpoint_every": 2, "eval_every": 3, "probe_windows": 2, "probe_configs": 2}


def held_out_losses(coa, configs, windows, bare=False):
    """Mean next-token loss on ``windows`` under each configuration, with the adapter or on the bare quantized base
    (adapters off)."""
    out = []
    coa.train(False)
    with torch.no_grad():
        for config in configs:
            coa.set_config(config)
            if bare:
                with coa.adapters_disabled():
                    out.append(coa.model(input_ids=windows, labels=windows).loss.item())
            else:
                out.append(coa.model(input_ids=windows, labels=windows).loss.item())
    return out


def test_coa_training_learns_and_changes_corrections(tmp_path):
    options = TrainOptions(**{**SMALL, "lr": 1e-2})
    wb = Workbench.load("tiny")
    result = train(wb, options, tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")
    assert metrics["step"].tolist() == list(range(1, 7))
    assert metrics["probe_loss"].notna().sum() == 2
    coa, configs = result.coa, result.configs
    # The probe loss falls: the run's last probe against the untrained adapter (B = 0: exactly the bare quantized
    # base) on the same probe windows, under the configurations the run probed (named in its metrics).
    probed = {f"probe_loss@{c.avg_bits:.3f}": c for c in configs}
    final = metrics.iloc[-1]
    keys = [k for k in final.index if k in probed]
    assert len(keys) == 2
    windows = probe_windows(wb.tokenizer, options.seq_length, options.probe_windows)
    after = [float(final[k]) for k in keys]
    assert after == pytest.approx(held_out_losses(coa, [probed[k] for k in keys], windows), rel=1e-5)
    # Learning shows on held-out text (the probe play's windows move little on the random tiny model in 6 steps:
    # 10.75 -> 10.72-10.76): the opening windows of the held-out plays, against the untrained adapter.
    held = torch.cat([token_windows(wb.tokenizer, text, options.seq_length, max_windows=1)
                      for text in plays("heldout").values()])
    trained = held_out_losses(coa, [probed[k] for k in keys], held)
    before = held_out_losses(coa, [probed[k] for k in keys], held, bare=True)
    assert all(a < b - 0.02 for a, b in zip(trained, before)), (before, trained)  # measured: 10.71 -> 10.68, 10.64
    coa.set_config(configs[0])
    u = [coa.wrappers[coa.layout.names[0]].correction.clone()]
    coa.set_config(configs[-1])
    u.append(coa.wrappers[coa.layout.names[0]].correction)
    assert not torch.equal(*u)  # different configurations get different corrections after training


def test_coa_corrections_beat_none_on_their_training_configurations(tmp_path):
    # Distilling the unquantized model makes the target the quantization error itself, which differs by configuration:
    # exactly what U_θ is for. (On the random tiny model the next-token loss hardly depends on the configuration,
    # so under the "lm" objective U has nothing configuration-specific to learn in a few steps.)
    options = TrainOptions(**{**SMALL, "lr": 1e-2, "objective": "kd"})
    wb = Workbench.load("tiny")
    result = train(wb, options, tmp_path / "run")
    coa, configs = result.coa, result.configs
    windows = probe_windows(wb.tokenizer, options.seq_length, 8)  # held out
    coa.train(False)
    with torch.no_grad(), coa.adapters_disabled():
        coa.qmodel.restore_()
        teacher = coa.model(input_ids=windows).logits.log_softmax(-1)

    def kl(zero_u):
        out = []
        with torch.no_grad():
            for config in configs:
                coa.set_config(config)
                if zero_u:
                    for w in coa.wrappers.values():
                        w.correction = None
                student = coa.model(input_ids=windows).logits.log_softmax(-1)
                out.append(float((teacher.exp() * (teacher - student)).sum(-1).mean()))
        return out

    own, none = kl(False), kl(True)
    # Measured: own U 0.0021 / 0.0013 / 0.0011 against U = 0 0.0034 / 0.0028 / 0.0028 at 2.5 / 4 / 6 bits.
    assert len(configs) == 3 and all(a < 0.8 * b for a, b in zip(own, none)), (own, none)


def test_resume_refuses_other_options_and_other_models(tmp_path):
    options = TrainOptions(**{**SMALL, "steps": 2, "method": "shared"})
    train(Workbench.load("tiny"), options, tmp_path)
    with pytest.raises(ValueError, match="already holds a run"):
        train(Workbench.load("tiny"), options, tmp_path)
    with pytest.raises(ValueError, match="other training options"):
        train(Workbench.load("tiny"), TrainOptions(**{**SMALL, "steps": 3, "method": "shared"}), tmp_path, resume=True)
    model = tiny_model(seed=1).eval().requires_grad_(False)
    other = Workbench("tiny", model, QuantizedModel.from_model(model, "tiny-llama"))
    with pytest.raises(ValueError, match="different model"):
        load_trained(other, tmp_path)


def test_lqlora_init_reproduces_the_weight_better_than_plain_quantization(tmp_path):
    wb = Workbench.load("tiny")
    result = train(wb, TrainOptions(**{**SMALL, "steps": 1, "method": "lqlora", "budgets": (2.5,)}), tmp_path)
    coa, config = result.coa, result.configs[0]
    name = coa.layout.names[0]
    w = coa.qmodel.original_weight(name)
    plain = coa.qmodel.quantized_weight(name, config.options[0])
    wrapper = coa.wrappers[name]
    assert not torch.equal(wrapper.base_layer.weight, plain)  # the base is Q(W − L1L2), not Q(W)
    lq = wrapper.base_layer.weight + wrapper.scaling * wrapper.lora_B.weight @ wrapper.lora_A.weight
    assert (w - lq).norm() < (w - plain).norm()


def tensors(folder):
    return read_safetensors(folder / CHECKPOINT_FILE)[0]


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    flags = ["--model", "tiny", "--steps", "8", "--budgets", "2.5,4,6", "--seq-length", "32", "--batch-size", "2",
             "--checkpoint-every", "2", "--eval-every", "4", "--objective", "kd"]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "coa_lora", "train", "--out", str(killed), *flags], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            metrics = killed / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 5:  # past the step-4 checkpoint
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    from coa_lora.cli import main

    assert main(["train", "--out", str(killed), "--model", "tiny", "--resume"]) == 0
    assert main(["train", "--out", str(tmp_path / "whole"), *flags]) == 0
    a, b = tensors(killed), tensors(tmp_path / "whole")
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
    ma, mb = read_metrics(killed), read_metrics(tmp_path / "whole")
    assert ma["step"].tolist() == list(range(1, 9))
    for column in ("loss", "grad_norm", "probe_loss"):
        assert ma[column].equals(mb[column])


def test_cli_export_writes_a_peft_adapter_equal_to_the_trained_model(tmp_path):
    from peft import PeftModel

    from coa_lora import ModelConfig
    from coa_lora.cli import main

    train(Workbench.load("tiny"), TrainOptions(**{**SMALL, "steps": 2, "lr": 1e-2}), tmp_path / "run")
    assert main(["export", "--model", "tiny", "--run", str(tmp_path / "run"), "--budget", "3.0",
                 "--out", str(tmp_path / "peft")]) == 0
    wb = Workbench.load("tiny")
    coa, _, _ = load_trained(wb, tmp_path / "run")
    config = ModelConfig.from_json((tmp_path / "peft" / "quant_config.json").read_text(), wb.layout)
    coa.set_config(config)
    ids = torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(0))
    base = Workbench.load("tiny")
    base.qmodel.apply_(config)
    peft_model = PeftModel.from_pretrained(base.model, str(tmp_path / "peft")).eval()
    with torch.no_grad():
        assert (peft_model(input_ids=ids).logits - coa.model(input_ids=ids).logits).abs().max() < 1e-4


def test_u_learning_rate_scale_moves_only_u_faster_and_its_init_spread_lets_every_layer_learn(tmp_path):
    # B starts at zero, so U_θ gets no gradient at step 1 and its first at step 2, where A, B and U are the same in
    # both runs: the same gradients (clipping sees the same global norm) and the same Adam history for A and B. Adam
    # moves each parameter by lr · f(its gradients), so with U_θ's learning rate 10x U_θ moves exactly 10x as far
    # while A and B move as with scale 1.
    from coa_lora.lora.trainer import build_adapter

    base = {**SMALL, "steps": 2, "warmup": 1, "lr": 1e-2, "u_init_std": 1e-3, "eval_every": 2, "checkpoint_every": 2}
    wb = Workbench.load("tiny")
    start = build_adapter(wb, TrainOptions(**base))
    before = start.state_dict()
    # N(0, 1e-3²) at the last layer: I + U is near I but not I, and varies with the configuration.
    corrections = []
    for budget in (2.5, 6.0):
        start.set_config(wb.allocate(budget).config)
        corrections.append(start.wrappers[start.layout.names[0]].correction.detach().clone())
    assert all(0 < float(c.abs().max()) < 0.05 for c in corrections) and not torch.equal(*corrections)
    assert float(start.network.out.weight.detach().std()) == pytest.approx(1e-3, rel=0.05)
    start.remove_()
    moved = {}
    for name, change in (("1x", {}), ("10x", {"u_lr_scale": 10.0}), ("zero init", {"u_init_std": 0.0})):
        result = train(Workbench.load("tiny"), TrainOptions(**{**base, **change}), tmp_path / name.replace(" ", "-"))
        after = result.coa.state_dict()
        start_of = before if name != "zero init" else {n: v.clone() for n, v in before.items()}
        if name == "zero init":
            start_of["network.out.weight"] = torch.zeros_like(before["network.out.weight"])
        moved[name] = {n: after[n] - start_of[n] for n in before}
    u = [n for n in before if n.startswith("network.")]
    ab = [n for n in before if not n.startswith("network.")]
    assert u and ab
    for n in ab:
        torch.testing.assert_close(moved["10x"][n], moved["1x"][n])
    for n in u:
        torch.testing.assert_close(moved["10x"][n], 10 * moved["1x"][n], rtol=1e-3, atol=1e-8)
        assert float(moved["1x"][n].abs().max()) > 0, n  # every layer of U learns from its first gradient
    # From a zero last layer the layers before it get no gradient until it has moved: only the last layer learns.
    still = [n for n in u if float(moved["zero init"][n].abs().max()) == 0]
    assert still and all(not n.startswith("network.out.") for n in still)
    assert float(moved["zero init"]["network.out.weight"].abs().max()) > 0
    with pytest.raises(ValueError, match="u_lr_scale must be a positive number"):
        TrainOptions(u_lr_scale=0.0)


def test_a_run_with_u_in_its_own_optimiser_group_resumes_to_the_uninterrupted_run(tmp_path):
    options = TrainOptions(**{**SMALL, "steps": 4, "checkpoint_every": 1, "eval_every": 4, "u_lr_scale": 10.0,
                              "u_init_std": 1e-3, "lr": 1e-2})
    whole = train(Workbench.load("tiny"), options, tmp_path / "whole").coa.state_dict()

    class Stop(Exception):
        pass

    def stop_after_two(row):
        if row["step"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(Workbench.load("tiny"), options, tmp_path / "cut", on_step=stop_after_two)
    resumed = train(Workbench.load("tiny"), options, tmp_path / "cut", resume=True).coa.state_dict()
    assert resumed.keys() == whole.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0)
