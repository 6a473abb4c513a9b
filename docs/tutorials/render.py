"""Render each tutorial notebook's key figure (the last plotly figure of its cell tagged ``key-figure``) as a PNG here.

    .venv/bin/python docs/tutorials/render.py                 # execute every notebook, write <notebook>.png
    .venv/bin/python docs/tutorials/render.py 04_pareto_search --all --out /tmp/figs   # every figure of one

Notebooks are executed with nbclient and their default parameters; the figure's JSON is drawn by plotly.js in
headless Chromium (Playwright, Debian's /usr/bin/chromium) and screenshotted, so no kaleido is needed.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nbformat
import plotly.graph_objects as go
import plotly.io as pio

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
PLOTLY = "application/vnd.plotly.v1+json"
CHROMIUM = "/usr/bin/chromium"


def execute(name: str) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    print(f"{name}: executed in {time.perf_counter() - start:.1f} s", flush=True)
    return nb


def figures(nb: nbformat.NotebookNode, key_only: bool) -> list[dict]:
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code" or (key_only and "key-figure" not in cell.metadata.get("tags", [])):
            continue
        out += [o["data"][PLOTLY] for o in cell.outputs if PLOTLY in o.get("data", {})]
    return out[-1:] if key_only else out


def screenshot(figure: dict, png: Path, width: int = 1000, page=None) -> None:
    fig = go.Figure(figure)
    height = int(fig.layout.height or 460)
    html = png.with_suffix(".html")
    pio.write_html(fig, html, include_plotlyjs=True, full_html=True, config={"displayModeBar": False},
                   default_width=f"{width}px", default_height=f"{height}px")
    page.set_viewport_size({"width": width + 20, "height": height + 20})
    page.goto(html.as_uri())
    page.wait_for_selector(".main-svg")
    page.wait_for_timeout(300)
    page.locator(".plotly-graph-div").screenshot(path=str(png))
    html.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names without .ipynb (default: all)")
    parser.add_argument("--all", action="store_true", help="every figure, not only the key figure")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    names = args.names or sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    args.out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(device_scale_factor=1)
        for name in names:
            found = figures(execute(name), key_only=not args.all)
            if not found:
                raise SystemExit(f"{name}: no key-figure cell with a plotly figure")
            for i, figure in enumerate(found):
                png = args.out / (f"{name}.png" if not args.all else f"{name}-{i:02d}.png")
                screenshot(json.loads(json.dumps(figure)), png, page=page)
                print(f"wrote {png}", flush=True)
        browser.close()


if __name__ == "__main__":
    main()
