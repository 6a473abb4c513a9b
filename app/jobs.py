"""Background work for the explorer: evaluations in threads, training runs in a child process.

Threads never call Streamlit: they update a :class:`Job` (a small thread-safe record of progress, result and error)
that a fragment polls with ``run_every``. Training runs as ``python -m coa_lora train`` in its own process, so it
survives a closed tab, writes its run folder atomically as the CLI always does, and can be resumed with ``--resume``
after a cancel.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from coa_lora import EvaluationCancelled
from coa_lora.search import open_run


@dataclass
class Job:
    """Progress and outcome of one background task; every field is read and written under ``lock``."""

    title: str
    done: int = 0
    total: int = 0
    message: str = ""
    result: Any = None
    partial: Any = None  # what the work has so far (e.g. running accuracies), for the view to draw while it runs
    updates: int = 0  # how many times ``partial`` was published
    error: Optional[str] = None
    cancelled: bool = False
    finished: bool = False
    started: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def progress(self, done: int, total: int, message: str = "") -> None:
        with self.lock:
            self.done, self.total, self.message = done, total, message

    def publish(self, partial: Any) -> None:
        with self.lock:
            self.partial = partial
            self.updates += 1

    def snapshot(self) -> dict:
        with self.lock:
            return {"title": self.title, "done": self.done, "total": self.total, "message": self.message,
                    "result": self.result, "partial": self.partial, "updates": self.updates, "error": self.error, "cancelled": self.cancelled,
                    "finished": self.finished, "seconds": time.time() - self.started}

    @property
    def fraction(self) -> float:
        with self.lock:
            return min(self.done / self.total, 1.0) if self.total else 0.0

    def cancel(self) -> None:
        self.stop.set()


def start_thread(job: Job, work: Callable[[Job], Any]) -> Job:
    """Run ``work(job)`` in a daemon thread; its return value becomes ``job.result``, an exception ``job.error``."""
    def run() -> None:
        try:
            result = work(job)
            with job.lock:
                job.result = result
        except EvaluationCancelled:
            with job.lock:
                job.cancelled = True
                job.error = "The evaluation was cancelled; nothing was cached for the unfinished part."
        except (ValueError, RuntimeError, OSError) as exc:
            with job.lock:
                job.error = str(exc)
        finally:
            with job.lock:
                job.finished = True

    threading.Thread(target=run, name=f"coa-lora: {job.title}", daemon=True).start()
    return job


# ----- training in a child process -------------------------------------------------------------------------------------
TRAIN_LOG = "train.log"


def train_command(model: str, out: Path, options: dict[str, Any], resume: bool = False) -> list[str]:
    """The CLI command of a run: ``python -m coa_lora train --model M --out OUT --flag value ...``."""
    cmd = [sys.executable, "-m", "coa_lora", "train", "--model", model, "--out", str(out)]
    for key, value in options.items():
        if value is None or value == "":
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, (list, tuple)):
            value = ",".join(f"{v:g}" for v in value)
        cmd += [flag, str(value)]
    return cmd + (["--resume"] if resume else [])


class TrainJob:
    """A ``train`` child process and the run folder it writes; progress is read from the folder itself."""

    def __init__(self, cmd: list[str], out: Path):
        self.cmd, self.out = cmd, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = self.out / TRAIN_LOG
        with open(self.log, "ab") as log:
            # A new session: Ctrl-C in the terminal running Streamlit does not reach the run, and cancel() can signal
            # the whole group. stdin closed: the run never waits for input.
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.started = time.time()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def status(self) -> dict:
        """``{steps_done, steps, rounds, returncode, running, last_line}`` read from the run folder and its log."""
        steps_done, steps, rounds = 0, 0, 0
        try:
            view = open_run(self.out)
            steps_done, steps = view.steps_done, view.steps
            rounds = len(view.rounds)
        except ValueError:
            pass  # the run has not written run.json yet
        return {"steps_done": steps_done, "steps": steps, "rounds": rounds, "returncode": self.process.poll(),
                "running": self.running, "last_line": self.last_line()}

    def last_line(self) -> str:
        try:
            text = self.log.read_bytes()[-4000:].decode("utf-8", "replace")
        except OSError:
            return ""
        parts = [p.strip() for p in text.replace("\r", "\n").split("\n") if p.strip()]
        return parts[-1] if parts else ""

    def cancel(self) -> None:
        """SIGTERM to the run's process group. Every file of a run is written atomically (and a partial metrics line
        is dropped on read), so a run stopped at any instant is consistent, and ``train --resume`` continues it from
        its last checkpoint. (Not SIGINT: a process started from a background shell ignores it.)"""
        if self.running:
            os.killpg(self.process.pid, signal.SIGTERM)
