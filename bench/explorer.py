"""The explorer's promises, measured: slider-to-configuration latency (allocator grid and searched set, against a live
MILP), time from `streamlit run` to the first chart (fresh and warm cache), and peak RSS of the app process during an
evaluation driven through Chromium.

    python bench/explorer.py                       # SmolLM2, the shipped reference run
    python bench/explorer.py --skip-browser        # latencies only

"Fresh cache" is a new COA_LORA_CACHE prepared with `python -m coa_lora prepare` (the model converted, the shipped
damage table and grid installed; no evaluation results, no weight cache): what a user has after `python3 tasks.py app`
on a new machine. Prints a table and, on its last line, one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
STEP = 0.05


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def latencies(model: str, run: Path, samples: int, seed: int, walk: bool) -> dict:
    from coa_lora import plots
    from coa_lora.configs.allocate import Allocator
    from coa_lora.explorer import Explorer

    ex = Explorer.load(model)
    ex.allocator()
    lo, hi = ex.budget_range
    rng = random.Random(seed)
    if walk:  # what a slider does: moves of 1-4 steps from where it is
        budgets, b = [], 3.0
        for _ in range(samples):
            b = min(max(b + rng.choice([-4, -3, -2, -1, 1, 2, 3, 4]) * STEP, lo + STEP), hi - STEP)
            budgets.append(round(b / STEP) * STEP)
    else:  # jumps anywhere: the weight cache (2 GiB) cannot hold them all, so many swaps quantize again
        budgets = [round(rng.uniform(lo + STEP, hi - STEP) / STEP) * STEP for _ in range(samples)]
    for b in budgets:  # warm the weight cache: the promise is for warm caches
        ex.instantiate(ex.allocate(b).config)
    out = {"alloc": [], "panel": []}
    for b in budgets:
        t0 = time.perf_counter()
        config = ex.allocate(b).config
        t1 = time.perf_counter()
        ex.instantiate(config)
        uniform = ex.uniform_counterpart(config)
        plots.bits_heatmap(config), plots.bits_difference_heatmap(config, uniform, "uniform")
        t2 = time.perf_counter()
        out["alloc"].append(t1 - t0)
        out["panel"].append(t2 - t0)
    searched = []
    view = ex.open_run(run) if run is not None and run.is_dir() else None
    if view is not None and view.has_search:
        low = view.searched_set(ex.layout)[0][0].avg_bits
        for b in budgets:
            if b >= low:
                t0 = time.perf_counter()
                config, _ = ex.searched_configuration(view, b)
                ex.instantiate(config)
                searched.append(time.perf_counter() - t0)
    live = []
    table = ex.wb.damage_table().values
    for b in budgets[:8]:  # a fresh allocator each time: no per-budget memo, as without the grid
        t0 = time.perf_counter()
        Allocator(ex.layout, table).allocate(b)
        live.append(time.perf_counter() - t0)
    return {"grid_live_solves": ex.allocator().live, "alloc": out["alloc"], "panel": out["panel"],
            "searched": searched, "live": live}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(cache: Path) -> tuple[subprocess.Popen, str, float]:
    port = _free_port()
    env = {**os.environ, "COA_LORA_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"),
                             "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}", t0


def tree_rss(proc: subprocess.Popen) -> int:
    try:
        p = psutil.Process(proc.pid)
        return sum(q.memory_info().rss for q in [p] + p.children(recursive=True))
    except psutil.NoSuchProcess:
        return 0


def browser_measures(cache_warm: Path) -> dict:
    from playwright.sync_api import sync_playwright
    from test_browser import CHROMIUM, CHROMIUM_ARGS

    fresh = Path(tempfile.mkdtemp(prefix="coa_lora_fresh_"))
    for sub in ("models", "shakespeare", "downloads"):  # the assets a fresh prepare would convert (minutes)
        shutil.copytree(cache_warm / sub, fresh / sub, symlinks=True)
    subprocess.run([sys.executable, "-m", "coa_lora", "prepare"], env={**os.environ, "COA_LORA_CACHE": str(fresh)},
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        for label, cache in (("fresh", fresh), ("warm", fresh)):  # the second start finds what the first left
            proc, url, t0 = start_app(cache)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            while True:
                try:
                    page.goto(url, timeout=5000)
                    break
                except Exception:  # noqa: BLE001 - the server is not listening yet
                    time.sleep(0.2)
            page.wait_for_selector(".js-plotly-plot", timeout=300_000)
            out[f"first_chart_{label}_s"] = time.time() - t0
            if label == "warm":  # an evaluation through the app: peak RSS of the server process (and children)
                page.goto(f"{url}/evaluate_view", timeout=60_000)
                page.get_by_role("button", name="Run evaluation").click()
                peak, t1 = 0, time.time()
                while time.time() - t1 < 900:
                    peak = max(peak, tree_rss(proc))
                    if page.locator("text=Done:").count() or page.locator('[data-testid="stAlertContentError"]').count():
                        break
                    time.sleep(0.25)
                out["eval_seconds"] = time.time() - t1
                out["peak_rss_gib"] = peak / 2**30
                page.wait_for_timeout(1500)
                shots = Path(os.environ.get("COA_LORA_ARTIFACTS", ROOT / "artifacts")) / "screenshots"
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shots / "5_evaluate.png"), full_page=True)
            page.close()
            proc.terminate()
            proc.wait(timeout=30)
        browser.close()
    shutil.rmtree(fresh, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--run", type=Path, default=ROOT / "data" / "reference" / "coa_search")
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-browser", action="store_true")
    p.add_argument("--jumps", action="store_true", help="random budgets anywhere instead of a slider's walk")
    args = p.parse_args()
    from coa_lora.models.assets import cache_dir

    lat = latencies(args.model, args.run, args.samples, args.seed, not args.jumps)
    rows = [("allocation (grid)", lat["alloc"]), ("slider panel: allocation + instantiate + figures", lat["panel"]),
            ("searched set + instantiate", lat["searched"]), ("live MILP, no grid", lat["live"])]
    print(f"{'what':52s} {'n':>4s} {'p50 ms':>9s} {'p95 ms':>9s}")
    for name, v in rows:
        if v:
            print(f"{name:52s} {len(v):4d} {1000 * pct(v, 0.5):9.2f} {1000 * pct(v, 0.95):9.2f}")
    result = {"budgets": "jumps" if args.jumps else "walk", "panel_p50_s": pct(lat["panel"], 0.5), "panel_p95_s": pct(lat["panel"], 0.95),
              "alloc_p95_s": pct(lat["alloc"], 0.95), "live_median_s": statistics.median(lat["live"]),
              "live_over_grid_p50": statistics.median(lat["live"]) / pct(lat["alloc"], 0.5),
              "grid_live_solves": lat["grid_live_solves"]}
    if lat["searched"]:
        result.update(searched_p50_s=pct(lat["searched"], 0.5), searched_p95_s=pct(lat["searched"], 0.95))
    if not args.skip_browser:
        b = browser_measures(cache_dir())
        for k, v in b.items():
            print(f"{k:52s} {v:10.2f}")
        result.update(b)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
