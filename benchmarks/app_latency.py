"""How the inspector feels in a real browser: ``streamlit run app.py`` driven by Playwright + chromium.

    python -m benchmarks.app_latency [--moves 60] [--pins 8] [--large]

Prints one table: cold server start -> interactive default view, bytes sent to the browser for the
image, pointer move -> repainted heatmap (p50/p95, seen from Playwright, and the JS compute time the
view reports), click -> pinned point with its statistics on screen (p50/p95). ``--large`` adds a
random-weight ResNet-101 DANet (output stride 8, d = 64) on a 2048x1024 frame (N = 32,768): its
forward on a 2-core CPU takes minutes. Timings on a shared machine are noisy: run it when quiet.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
TARGETS = {"move_small": 0.050, "move_large": 0.150, "pin": 0.300, "cold": 5.0}
EARLIER = {"pin": "0.5-1.4 s (click -> rerun -> new <img> heatmaps; docs/app.md)"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.maxUploadSize", "1024"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_health(url: str, process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"streamlit exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("no health check answer")


FIND = ("(window.__dav && window.__dav.isConnected) ? window.__dav : (window.__dav = [...document.querySelectorAll('*')]"
        ".map(x => x.shadowRoot).filter(Boolean).map(r => r.querySelector('#danet-attention')).find(Boolean))")


def wait_ready(page, previous_id: str | None = None, timeout: float = 900) -> None:
    page.wait_for_function(
        f"prev => {{ const e = {FIND}; return e && e.dataset.ready === '1' && e.dataset.payloadId !== prev; }}",
        arg=previous_id or "", timeout=timeout * 1000, polling=50)


def root_attr(page, name: str) -> str:
    return page.locator("#danet-attention").get_attribute(f"data-{name}") or ""


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def pointer_moves(page, moves: int, seed: int = 0) -> dict:
    """Move to the centres of ``moves`` random cells (each a new one): the time from the move until
    the view reports that cell painted (polled every animation frame), and its own compute time."""
    box = page.locator("#input-canvas").bounding_box()
    gh, gw = map(int, root_attr(page, "grid").split(","))
    rng = np.random.default_rng(seed)
    seen, compute, previous = [], [], root_attr(page, "query-cell")
    while len(seen) < moves:
        row, col = int(rng.integers(0, gh)), int(rng.integers(0, gw))
        if f"{row},{col}" == previous:
            continue
        start = time.perf_counter()
        page.mouse.move(box["x"] + (col + 0.5) / gw * box["width"], box["y"] + (row + 0.5) / gh * box["height"])
        page.wait_for_function(f"cell => {{ const e = {FIND}; return e.dataset.queryCell === cell; }}",
                               arg=f"{row},{col}", polling="raf", timeout=30_000)
        seen.append(time.perf_counter() - start)
        compute.append(float(root_attr(page, "compute-ms") or 0) / 1000)
        previous = f"{row},{col}"
    return {"cells": gh * gw, "move": percentiles(seen), "compute": percentiles(compute)}


def pins(page, count: int, seed: int = 1) -> tuple[float, float]:
    """Click ``count`` random points; each: time until its statistics card is on screen."""
    canvas = page.locator("#input-canvas")
    box = canvas.bounding_box()
    rng = np.random.default_rng(seed)
    times = []
    for index in range(count):
        fx, fy = rng.uniform(0.05, 0.95, 2)
        start = time.perf_counter()
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        page.wait_for_function(
            "n => [...document.querySelectorAll(\"[data-testid='stMarkdownContainer']\")]"
            ".filter(e => e.innerText.includes('entropy') && e.innerText.includes('same-class mass')).length === n",
            arg=index + 1, timeout=60_000, polling="raf")
        times.append(time.perf_counter() - start)
    return percentiles(times)


def large_inputs(folder: Path) -> tuple[Path, Path]:
    """A random-weight ResNet-101 DANet (output stride 8, multi-grid) and a 2048x1024 frame."""
    # TODO(issue 13): build the checkpoint with danet.checkpoints.save.save_model(model, meta, path)
    # (it needs a ModelMeta) in the official layout, and drive the sidebar's uploads; not finished.
    raise SystemExit("--large is not finished yet: the N = 32,768 case was not measured")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=60)
    parser.add_argument("--pins", type=int, default=8)
    parser.add_argument("--large", action="store_true", help="also N = 32,768 (minutes of CPU)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "w") as log:
        started = time.perf_counter()
        server = start_server(port, log)
        try:
            wait_health(url, server)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                received = []
                page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: received.append(len(frame))))
                page.goto(url)
                wait_ready(page)
                cold = time.perf_counter() - started
                rows.append(("cold server start -> interactive default view", f"{cold:.2f} s", "< 5 s", ""))
                rows.append(("bytes sent over the websocket, first page", f"{sum(received) / 1e6:.2f} MB", "", ""))
                small = pointer_moves(page, args.moves)
                rows.append((f"pointer move -> repainted map, N = {small['cells']}: p50 / p95",
                             f"{small['move'][0] * 1000:.0f} / {small['move'][1] * 1000:.0f} ms", "p95 < 50 ms", ""))
                rows.append(("    of which the row in JS: p50 / p95",
                             f"{small['compute'][0] * 1000:.1f} / {small['compute'][1] * 1000:.1f} ms", "", ""))
                received.clear()
                pin = pins(page, args.pins)
                rows.append(("click -> pinned point with statistics on screen: p50 / p95",
                             f"{pin[0] * 1000:.0f} / {pin[1] * 1000:.0f} ms", "p95 < 300 ms", EARLIER["pin"]))
                rows.append(("bytes per pin (fragment rerun, payload re-sent)",
                             f"{sum(received) / max(args.pins, 1) / 1e6:.2f} MB", "", ""))
                if args.large:
                    weights, image = large_inputs(Path(tmp))
                    sidebar = page.locator("[data-testid='stSidebar']")
                    sidebar.get_by_text("Upload a checkpoint").click()
                    sidebar.locator("input[type='file']").first.set_input_files(str(weights))
                    sidebar.get_by_text("Input size limit").click()
                    limit = sidebar.locator("[data-testid='stNumberInput'] input").first
                    limit.fill("2.2")
                    limit.press("Enter")
                    sidebar.get_by_text("Upload an image").click()
                    previous = root_attr(page, "payload-id")
                    sidebar.locator("input[type='file']").nth(1).set_input_files(str(image))
                    forward_started = time.perf_counter()
                    wait_ready(page, previous, timeout=1800)
                    rows.append(("2048x1024 ResNet-101: upload -> interactive view",
                                 f"{time.perf_counter() - forward_started:.0f} s", "", "forward + row sweep on CPU"))
                    large = pointer_moves(page, args.moves)
                    rows.append((f"pointer move -> repainted map, N = {large['cells']}: p50 / p95",
                                 f"{large['move'][0] * 1000:.0f} / {large['move'][1] * 1000:.0f} ms",
                                 "p95 < 150 ms", ""))
                    rows.append(("    of which the row in JS: p50 / p95",
                                 f"{large['compute'][0] * 1000:.1f} / {large['compute'][1] * 1000:.1f} ms", "", ""))
                browser.close()
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\napp latency, {os.cpu_count()} CPUs, load average {load:.1f} (shared machine: timings are noisy)\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'this run':>18}  {'target':>13}  earlier")
    for name, value, target, note in rows:
        print(f"{name:<{width}}  {value:>18}  {target:>13}  {note}")


if __name__ == "__main__":
    main()
