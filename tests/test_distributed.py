"""Data-parallel training on the tiny model: two real gloo processes under torchrun against one process, and a
kill -9 of one rank followed by --resume."""
import dataclasses
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from coa_lora import Workbench
from coa_lora.distributed import Ranks
from coa_lora.lora.step import quasi_draws, step_draws
from coa_lora.lora.trainer import TrainOptions, train
from coa_lora.runs import CHECKPOINT_FILE, read_metrics, read_run_info, read_search_tables
from coa_lora.storage import read_safetensors

# A search round (random ablation, run on rank 0) at step 5 of 10: the other rank must take its new training set.
FLAGS = ["--model", "tiny", "--steps", "10", "--budgets", "2.5,4,6", "--seq-length", "32", "--batch-size", "2",
         "--checkpoint-every", "2", "--eval-every", "5", "--search", "random", "--rounds", "1", "--proposals", "2",
         "--segments", "4"]
OPTIONS = TrainOptions(steps=10, budgets=(2.5, 4.0, 6.0), seq_length=32, batch_size=2, checkpoint_every=2,
                       eval_every=5, search="random", rounds=1, proposals=2, segments=4, replicas=2)


def torchrun(*args: str) -> subprocess.Popen:
    # --standalone: a rendezvous on a free local port, so parallel test sessions never collide.
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "coa_lora", "train", *args], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]


def tensors(folder):
    return read_safetensors(folder / CHECKPOINT_FILE)[0]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp") / "run"
    finish(torchrun("--out", str(folder), *FLAGS))
    return folder


def test_replicas_split_over_ranks_in_contiguous_blocks():
    assert Ranks().replicas(2) == range(0, 2)
    assert [Ranks(r, 2).replicas(4) for r in (0, 1)] == [range(0, 2), range(2, 4)]
    with pytest.raises(ValueError, match="3 data-parallel replicas cannot be split over 2 processes"):
        Ranks(1, 2).replicas(3)


def test_replica_zero_draws_what_the_single_process_trainer_drew_and_others_draw_their_own():
    o = TrainOptions(seed=3, batch_size=4, grad_accumulation=2, configs_per_step=2, draws="random")
    g = torch.Generator().manual_seed(3 * 1_000_003 + 7)  # the trainer's (seed, step) stream, in its order
    chosen = torch.randperm(5, generator=g)[:2].tolist()
    rows = [torch.randint(100, (4,), generator=g) for _ in range(2)]
    dropout = int(torch.randint(2**62, (1,), generator=g))
    c0, r0, d0 = step_draws(o, 7, 0, 5, 100, 5)
    assert (c0, d0) == (chosen, dropout) and all(torch.equal(a, b) for a, b in zip(r0, rows))
    # Quasi-random configuration draws change which configurations, never the windows or the dropout seed.
    q0, qr0, qd0 = step_draws(dataclasses.replace(o, draws="quasi"), 7, 0, 5, 100, 5)
    assert q0 == quasi_draws(3, 7, 2, 5) and qd0 == d0 and all(torch.equal(a, b) for a, b in zip(qr0, r0))
    c1, r1, d1 = step_draws(o, 7, 1, 5, 100, 5)
    assert c1 == c0 and d1 != d0 and not any(torch.equal(a, b) for a, b in zip(r1, r0))
    again = step_draws(o, 7, 1, 5, 100, 5)
    assert again[0] == c1 and again[2] == d1 and all(torch.equal(a, b) for a, b in zip(again[1], r1))


def test_two_gloo_processes_train_the_adapter_one_process_trains_on_the_same_global_batch(two_processes, tmp_path):
    assert read_run_info(two_processes).hyper == OPTIONS.to_dict()  # the CLI set one replica per process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's processes run, so that the matrix products round alike
    try:
        train(Workbench.load("tiny"), OPTIONS, tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    a, b = tensors(two_processes), tensors(tmp_path / "one")
    assert set(a) == set(b)
    worst = max((a[n] - b[n]).abs().max().item() for n in a if not n.startswith("optim."))
    assert worst <= 1e-6  # two summands add up alike in either order: 0.0 on this machine
    ma, mb = read_metrics(two_processes), read_metrics(tmp_path / "one")
    assert ma["step"].tolist() == list(range(1, 11)) and ma["configs"].tolist() == mb["configs"].tolist()
    for column in ("loss", "grad_norm", "probe_loss"):
        assert ma[column].fillna(0).to_numpy() == pytest.approx(mb[column].fillna(0).to_numpy(), rel=1e-6)
    pool_a, pool_b = read_search_tables(two_processes)["pool"], read_search_tables(tmp_path / "one")["pool"]
    assert len(pool_a) > 3 and pool_a["options"].tolist() == pool_b["options"].tolist()  # the round added to it
    assert pool_a["f1"].to_numpy() == pytest.approx(pool_b["f1"].to_numpy(), rel=1e-6)


def test_kill_9_of_one_rank_then_resume_equals_the_uninterrupted_run(two_processes, tmp_path):
    killed = tmp_path / "killed"
    proc = torchrun("--out", str(killed), *FLAGS)
    try:
        deadline = time.time() + 300
        metrics = killed / "metrics.jsonl"
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:  # past the step-2 checkpoint
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        rank1 = [c for c in psutil.Process(proc.pid).children() if c.environ().get("RANK") == "1"]
        assert len(rank1) == 1
        os.kill(rank1[0].pid, signal.SIGKILL)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0  # torchrun tore the job down
    assert len(read_metrics(killed)) < 10
    finish(torchrun("--out", str(killed), "--model", "tiny", "--resume"))
    a, b = tensors(killed), tensors(two_processes)
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)  # adapter and optimiser state, bit for bit
    ma, mb = read_metrics(killed), read_metrics(two_processes)
    assert ma["step"].tolist() == list(range(1, 11))
    for column in ("loss", "grad_norm", "probe_loss"):
        assert ma[column].equals(mb[column])
    assert read_search_tables(killed)["pool"].equals(read_search_tables(two_processes)["pool"])
