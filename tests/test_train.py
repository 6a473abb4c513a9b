import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from coa_lora import QuantizedModel, Workbench
from coa_lora.models import tiny_model
from coa_lora.runs import CHECKPOINT_FILE, read_metrics
from coa_lora.storage import read_safetensors
from coa_lora.data import plays, token_windows
from coa_lora.train import TrainOptions, even_budgets, load_trained, lr_at, probe_windows, train

SMALL = {"steps": 6, "budgets": (2.5, 4.0, 6.0), "seq_length": 32, "batch_size": 2, "checkpoint_every": 2,
         "eval_every": 3, "probe_windows": 2, "probe_configs": 2}


def test_options_validate_and_round_trip():
    o = TrainOptions(**SMALL)
    assert TrainOptions.from_dict(o.to_dict()) == o
    with pytest.raises(ValueError, match="Unknown method"):
        TrainOptions(method="dora")
    with pytest.raises(ValueError, match="exactly one budget"):
        TrainOptions(method="qlora", budgets=(2.5, 3.0))
    assert even_budgets(2.25, 7.25, 50)[::49] == (2.25, 7.25)


def test_schedule_warms_up_then_decays_to_zero():
    o = TrainOptions(steps=10, warmup=2, lr=1.0)
    assert [lr_at(s, o) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_at(9, o) < 0.05 and lr_at(6, o) == pytest.approx(0.5)


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


def test_quasi_draws_spread_every_stretch_of_steps_over_the_set():
    from coa_lora.step import quasi_draws

    for n, k in [(19, 2), (20, 2), (7, 3), (2, 2), (1, 2)]:
        draws = [quasi_draws(5, step, k, n) for step in range(12)]
        assert all(len(d) == len(set(d)) == min(k, n) and all(0 <= p < n for p in d) for d in draws)
        counts = torch.bincount(torch.tensor([p for d in draws for p in d]), minlength=n)
        # 12·k draws over n positions: each position as often as its share, give or take one (uniform random draws
        # gave the lowest of 19 positions 1 to 5 of 24).
        assert int(counts.max() - counts.min()) <= 2 and counts.sum() == 12 * min(k, n)
    assert quasi_draws(5, 3, 2, 19) == quasi_draws(5, 3, 2, 19) != quasi_draws(6, 3, 2, 19)


def test_bits_draws_train_the_initial_set_as_quasi_draws_and_a_grown_set_by_the_bit_axis():
    from coa_lora.step import anchor_bits_at, bits_draws, nearest_member, quasi_draws, step_draws

    anchors = [2.5 + 0.5278 * i for i in range(10)]  # the default 10-budget initial set's spacing
    for seed in range(4):
        for n in (10, 1, 2, 5):
            a = sorted(anchors[:n] if n < 10 else anchors)
            assert all(bits_draws(seed, step, 2, a, a) == quasi_draws(seed, step, 2, n) for step in range(200))
    # The end cells stop at the lowest and highest member yet own a full 1/n0 of the quantiles.
    assert anchor_bits_at(0.0, anchors) == anchors[0] and abs(anchor_bits_at(0.05, anchors) - 2.63195) < 1e-9
    assert abs(anchor_bits_at(0.999999, anchors) - anchors[-1]) < 1e-4 and anchor_bits_at(0.7, [3.0]) == 3.0
    assert [nearest_member(b, [2.5, 3.0, 4.0]) for b in (2.0, 2.74, 2.75, 3.6, 9.0)] == [0, 0, 1, 2, 2]
    # A search that adds six members between 2.5 and 3.05 bits: with draws over the members, that stretch takes 101
    # of 100 steps' 200 draws instead of 42, from the rest of the range; over the bit axis it keeps its 42, and the
    # new members split them.
    grown = sorted(anchors + [2.6, 2.7, 2.8, 2.9, 2.95, 3.0])
    def low_draws(draw, bits):
        return sum(bits[p] < 3.05 for step in range(100) for p in draw(step, bits))
    assert low_draws(lambda step, b: quasi_draws(1, step, 2, len(b)), anchors) == 42
    assert low_draws(lambda step, b: quasi_draws(1, step, 2, len(b)), grown) == 101
    assert low_draws(lambda step, b: bits_draws(1, step, 2, b, anchors), anchors) == 42
    assert low_draws(lambda step, b: bits_draws(1, step, 2, b, anchors), grown) == 42
    # Every draw trains the member nearest its point of the bit axis, distinct within a step.
    assert all(len(set(d)) == 2 for d in (bits_draws(1, step, 2, grown, anchors) for step in range(100)))
    with pytest.raises(ValueError, match="bits of all 3 configurations"):
        step_draws(TrainOptions(), 0, 0, 3, 10, [2.5, 3.0], [2.5])


def test_runs_saved_before_draws_existed_resume_with_random_draws():
    saved = {k: v for k, v in TrainOptions().to_dict().items() if k != "draws"}
    assert TrainOptions.saved(saved).draws == "random" and TrainOptions.from_dict(saved).draws == "bits"
    assert TrainOptions().draws == "bits"
    with pytest.raises(ValueError, match="draws"):
        TrainOptions(draws="sobol")
