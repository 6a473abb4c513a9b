"""Several people at once: N real browser sessions on one explorer server, each at its own budget, press Run together.

    python bench/explorer_load.py                       # SmolLM2, 1, 3 and 5 sessions
    COA_LORA_MODEL=tiny python bench/explorer_load.py --sessions 1 3 --items 5

For each N a fresh server (`streamlit run app/main.py`, its own empty evaluation cache, so nothing is answered from an
earlier phase) serves N headless Chromium sessions (Playwright, Debian's chromium). Each session moves the budget
slider on Instantiate to its own budget, opens Evaluate through the page menu (same session), sets the item limit,
and all press "Run evaluation" within a few milliseconds. Printed per phase: each session's seconds from the click to
"Done:", their ratio to the one-session time, the server's CPU seconds while the finished tabs then sit idle for
``--idle`` seconds (as % of one core), and the server's peak RSS. Last line: one JSON object.

``--gc both`` (the default) runs every phase twice, with Streamlit's ``runner.postScriptGC`` on (its default: a full
``gc.collect(2)`` after every script and fragment run, which holds the GIL for ~0.3-0.7 s with torch loaded) and off
(the explorer's setting, .streamlit/config.toml), so the ratio between them is measured on the same machine at once.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cache: str, gc: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "COA_LORA_EVAL_CACHE": cache, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"),
                             "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false", "--runner.postScriptGC", str(gc).lower()],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("streamlit did not start")


class Peak(threading.Thread):
    """Samples a process tree's RSS every 0.2 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc, self.peak, self.running = psutil.Process(pid), 0, True

    def run(self) -> None:
        while self.running:
            try:
                rss = self.proc.memory_info().rss + sum(c.memory_info().rss for c in self.proc.children(True))
                self.peak = max(self.peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


async def session(browser, url: str, budget_steps: int, items: int, ready: list, go: asyncio.Event) -> float:
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    await page.goto(f"{url}/instantiate_view", timeout=300_000)
    await page.wait_for_selector(".js-plotly-plot", timeout=300_000)
    thumb = page.locator('[data-testid="stSlider"] input[type="range"]').first
    await thumb.focus()
    for _ in range(budget_steps):
        await page.keyboard.press("ArrowRight")
    await page.wait_for_timeout(2500)
    await page.get_by_role("link", name="Evaluate").click()
    field = page.locator('[data-testid="stNumberInput"] input').first
    await field.wait_for(timeout=300_000)
    await field.fill(str(items))
    await field.press("Enter")
    await page.wait_for_timeout(1500)
    ready.append(True)
    await go.wait()
    t0 = time.perf_counter()
    await page.get_by_role("button", name="Run evaluation").click()
    await page.wait_for_selector("text=Done:", timeout=1_800_000)
    return time.perf_counter() - t0


async def phase(n: int, items: int, idle: float, gc: bool) -> dict:
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory() as cache:
        proc, url = start_server(cache, gc)
        peak = Peak(proc.pid)
        peak.start()
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
                go, ready = asyncio.Event(), []
                tasks = [asyncio.create_task(session(browser, url, 2 + 3 * i, items, ready, go)) for i in range(n)]
                while len(ready) < n:  # everyone on Evaluate with the item limit set before anyone presses Run
                    if any(t.done() for t in tasks):
                        await asyncio.gather(*tasks)  # a session failed: raise its error
                    await asyncio.sleep(0.2)
                go.set()
                seconds = await asyncio.gather(*tasks)
                await asyncio.sleep(3)  # the one rerun that draws each result
                before = cpu_seconds(proc.pid)
                await asyncio.sleep(idle)
                idle_cpu = cpu_seconds(proc.pid) - before
                await browser.close()
        finally:
            peak.running = False
            proc.terminate()
            proc.wait(timeout=30)
    return {"sessions": n, "post_script_gc": gc, "seconds": [round(s, 2) for s in seconds], "idle_cpu_percent": 100 * idle_cpu / idle,
            "peak_rss_mib": peak.peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--gc", choices=["off", "on", "both"], default="both",
                        help="Streamlit's runner.postScriptGC for the server (both: each phase with it on, then off)")
    args = parser.parse_args()
    out = {"model": os.environ.get("COA_LORA_MODEL", "smollm2"), "items": args.items, "phases": []}
    settings = {"off": [False], "on": [True], "both": [True, False]}[args.gc]
    for gc in settings:
        for n in args.sessions:
            result = asyncio.run(phase(n, args.items, args.idle, gc))
            out["phases"].append(result)
            print(f"postScriptGC {'on ' if gc else 'off'}: {n} session(s): {result['seconds']} s; idle server "
                  f"{result['idle_cpu_percent']:.1f} % of a core over {args.idle:.0f} s; peak RSS "
                  f"{result['peak_rss_mib']:.0f} MiB", flush=True)
    for gc in settings:
        phases = [p for p in out["phases"] if p["post_script_gc"] == gc]
        single = next((p for p in phases if p["sessions"] == 1), None)
        if single is not None:
            for p in phases:
                p["ratio_to_single"] = round(max(p["seconds"]) / single["seconds"][0], 2)
                print(f"postScriptGC {'on ' if gc else 'off'}: {p['sessions']} session(s): slowest "
                      f"{p['ratio_to_single']:.2f} x one session alone")
    if len(settings) == 2:
        out["gc_on_over_off"] = {str(n): round(max(a["seconds"]) / max(b["seconds"]), 2) for n in args.sessions
                                 for a in out["phases"] for b in out["phases"]
                                 if a["sessions"] == b["sessions"] == n and a["post_script_gc"] and
                                 not b["post_script_gc"]}
        print("slowest session, postScriptGC on / off: " + ", ".join(f"{n} session(s) {r:.2f} x"
                                                                    for n, r in out["gc_on_over_off"].items()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
