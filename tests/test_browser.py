"""The explorer in a real browser: `streamlit run app/main.py` on the embedded SmolLM2 with the shipped reference runs,
driven by Playwright in Debian's headless Chromium (installed by `python3 tasks.py test` when missing). Screenshots
go to ``artifacts/screenshots`` (``$COA_LORA_ARTIFACTS`` overrides)."""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("COA_LORA_ARTIFACTS", ROOT / "artifacts")) / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # COA_LORA_MODEL / COA_LORA_REFERENCE pass through (default: SmolLM2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"streamlit did not start: {proc.stdout.read()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.smollm2
def test_the_app_in_chromium_shows_charts_moves_the_budget_slider_and_has_no_error_box(server):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `python3 tasks.py test` installs it"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        frames = []  # every websocket message the server sends: what a tab costs it
        page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(time.time())))
        page.goto(server, timeout=120_000)
        page.wait_for_selector("h1:has-text('coa-lora explorer')", timeout=180_000)
        page.wait_for_selector(".js-plotly-plot", timeout=180_000)
        page.wait_for_timeout(1500)  # let plotly finish drawing
        assert page.locator(ERRORS).count() == 0
        page.screenshot(path=str(SHOTS / "1_search.png"), full_page=True)

        page.goto(f"{server}/instantiate_view", timeout=120_000)
        page.wait_for_selector(".js-plotly-plot", timeout=180_000)
        bits = page.locator('[data-testid="stMetricValue"]').first
        before = bits.inner_text()
        page.screenshot(path=str(SHOTS / "2_instantiate.png"), full_page=True)
        thumb = page.locator('[data-testid="stSlider"] input[type="range"]').first
        thumb.focus()
        for _ in range(10):  # +0.5 bits
            page.keyboard.press("ArrowRight")
        # Settled: the configuration's average bits are within one slider step of the slider's value.
        page.wait_for_function(
            """() => {
                const v = parseFloat(document.querySelector('[data-testid="stSliderThumbValue"]').innerText);
                const m = parseFloat(document.querySelector('[data-testid="stMetricValue"]').innerText);
                return v > 3.4 && Math.abs(v - m) < 0.05;
            }""", timeout=120_000)
        after = bits.inner_text()
        assert float(re.sub(r"[^0-9.]", "", after)) > float(re.sub(r"[^0-9.]", "", before))
        page.wait_for_timeout(1500)
        assert page.locator(ERRORS).count() == 0
        page.screenshot(path=str(SHOTS / "3_instantiate_moved.png"), full_page=True)

        page.goto(f"{server}/about_view", timeout=120_000)
        page.wait_for_selector("h2:has-text('What CoA-LoRA does')", timeout=120_000)
        page.wait_for_timeout(1500)
        assert page.locator(ERRORS).count() == 0
        page.screenshot(path=str(SHOTS / "4_about.png"), full_page=True)

        # A finished evaluation is drawn once; then the tab sends nothing (it polled every second, forever, before).
        page.goto(f"{server}/evaluate_view", timeout=120_000)
        items = page.locator('[data-testid="stNumberInput"] input').first
        items.wait_for(timeout=120_000)
        items.fill("2")
        items.press("Enter")
        page.wait_for_timeout(1000)
        page.get_by_role("button", name="Run evaluation").click()
        page.wait_for_selector("text=Done:", timeout=300_000)
        page.wait_for_timeout(3000)  # the one rerun that draws the result
        before = len(frames)
        page.wait_for_timeout(6000)
        assert len(frames) - before <= 1, f"{len(frames) - before} messages in 6 s from a finished evaluation"
        assert page.locator(ERRORS).count() == 0
        page.screenshot(path=str(SHOTS / "5_evaluate.png"), full_page=True)

        # A shared link opens Generate in a new session at the budget the slider reached above (its weights are
        # quantized already); four new tokens in every column.
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(f"{server}/?page=generate&budget=3.5", timeout=120_000)
        page.wait_for_selector("text=allocator at 3.50 bits", timeout=180_000)
        tokens = page.locator('[data-testid="stNumberInput"] input').first
        tokens.fill("4")
        tokens.press("Enter")
        page.wait_for_timeout(1000)
        page.get_by_role("button", name="Generate").click()
        page.wait_for_function("() => (document.body.innerText.match(/tokens\\/s/g) || []).length >= 3",
                               timeout=300_000)
        page.wait_for_timeout(1500)
        assert page.locator(ERRORS).count() == 0
        page.screenshot(path=str(SHOTS / "6_generate_link.png"), full_page=True)

        for name, ready in (("compare_view", ".js-plotly-plot"), ("train_view", "text=Start training")):
            page.goto(f"{server}/{name}", timeout=120_000)
            page.wait_for_selector(ready, timeout=120_000)
            page.wait_for_timeout(1500)
            assert page.locator(ERRORS).count() == 0
            page.screenshot(path=str(SHOTS / f"7_{name}.png"), full_page=True)
            if name == "compare_view":  # the shipped comparison's diagnosis: the verdict's bars, scrolled into view
                heading = re.compile(r"^Why CoA-LoRA trails a LoRA per configuration( \(measured at .+\))?$")
                page.get_by_text(heading).wait_for(timeout=60_000)
                page.locator(".js-plotly-plot").last.scroll_into_view_if_needed(timeout=60_000)
                page.wait_for_timeout(1000)
                page.screenshot(path=str(SHOTS / "7_compare_why.png"))
        browser.close()
