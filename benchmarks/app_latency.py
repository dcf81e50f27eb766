"""How the inspector feels in a real browser: ``streamlit run app.py`` driven by Playwright + chromium.

    python -m benchmarks.app_latency [--moves 60] [--pins 8] [--large] [--entry serve.py|app.py]

Prints one table: cold server start -> interactive default view, bytes sent to the browser for the
image, pointer move -> repainted heatmap (p50/p95, seen from Playwright, and the JS compute time the
view reports), click -> pinned point with its statistics on screen (p50/p95). ``--large`` adds a
random-weight ResNet-101 DANet (output stride 8, d = 64) on a 2048x1024 frame (N = 32,768): its
forward on a 2-core CPU takes minutes. Timings on a shared machine are noisy: run it when quiet.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))       # the test helpers: serving the app, model layouts
from helpers_browser import ServerError, launch_chromium, streamlit_server  # noqa: E402

TARGETS = {"move_small": 0.050, "move_large": 0.150, "pin": 0.300, "cold": 5.0}
EARLIER = {"pin": "0.5-1.4 s (click -> rerun -> new <img> heatmaps; docs/app.md)"}


FIND = ("(window.__dav && window.__dav.isConnected) ? window.__dav : (window.__dav = [...document.querySelectorAll('*')]"
        ".map(x => x.shadowRoot).filter(Boolean).map(r => r.querySelector('#danet-attention')).find(Boolean))")


def wait_ready(page, previous_id: str | None = None, timeout: float = 900, grid: str = "") -> None:
    """Until the view shows a payload other than ``previous_id`` (and of grid ``grid`` if given)."""
    page.wait_for_function(
        f"([prev, grid]) => {{ const e = {FIND}; return e && e.dataset.ready === '1' && e.dataset.payloadId !== prev "
        "&& (!grid || e.dataset.grid === grid); }",
        arg=[previous_id or "", grid], timeout=timeout * 1000, polling=200)


def root_attr(page, name: str) -> str:
    return page.locator("#danet-attention").get_attribute(f"data-{name}") or ""


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def pointer_moves(page, moves: int, seed: int = 0) -> dict:
    """Move to the centres of ``moves`` random cells (each a new one). Two clocks:

    - seen from Playwright: from sending the move until the view reports that cell painted
      (polled every animation frame: the driver's round trips and polling are in it);
    - in the page: from the pointer event's timestamp to the end of the paint (``latency-ms``) and
      to the next animation frame after it (``frame-ms``: the painted frame was committed), plus
      the row's compute time and the whole paint (row + display mode + upsampling + drawing).
    """
    box = page.locator("#input-canvas").bounding_box()
    gh, gw = map(int, root_attr(page, "grid").split(","))
    rng = np.random.default_rng(seed)
    seen, inside, frame, compute, paint = [], [], [], [], []
    previous = root_attr(page, "query-cell")
    while len(seen) < moves:
        row, col = int(rng.integers(0, gh)), int(rng.integers(0, gw))
        if f"{row},{col}" == previous:
            continue
        start = time.perf_counter()
        page.mouse.move(box["x"] + (col + 0.5) / gw * box["width"], box["y"] + (row + 0.5) / gh * box["height"])
        page.wait_for_function(f"cell => {{ const e = {FIND}; return e.dataset.queryCell === cell; }}",
                               arg=f"{row},{col}", polling="raf", timeout=30_000)
        seen.append(time.perf_counter() - start)
        values = page.wait_for_function(
            f"cell => {{ const e = {FIND}; return e.dataset.frameCell === cell && "
            "[e.dataset.latencyMs, e.dataset.frameMs, e.dataset.computeMs, e.dataset.paintMs].map(Number); }",
            arg=f"{row},{col}", polling="raf", timeout=30_000).json_value()
        for store, value in zip((inside, frame, compute, paint), values):
            store.append(value / 1000)
        previous = f"{row},{col}"
    return {"cells": gh * gw, "move": percentiles(seen), "inside": percentiles(inside),
            "frame": percentiles(frame), "compute": percentiles(compute), "paint": percentiles(paint)}


def move_rows(moves: dict, target: str) -> list[tuple[str, str, str, str]]:
    ms = lambda pair, digits=0: f"{pair[0] * 1000:.{digits}f} / {pair[1] * 1000:.{digits}f} ms"  # noqa: E731
    n = moves["cells"]
    return [(f"pointer move -> repainted map, N = {n}, in the page (event -> next frame): p50 / p95",
             ms(moves["frame"], 1), target, ""),
            ("    event -> paint done, in the page: p50 / p95", ms(moves["inside"], 1), "", ""),
            ("    seen from Playwright (driver round trips + rAF polling): p50 / p95", ms(moves["move"]), "", ""),
            ("    the whole paint (row + mode + upsampling + draw): p50 / p95", ms(moves["paint"], 1), "", ""),
            ("    of which the row in JS: p50 / p95", ms(moves["compute"], 1), "", "")]


def pins(page, count: int, seed: int = 1) -> dict:
    """Click ``count`` random points. Each: the time until the view shows the pinned map with its
    statistics (drawn in the browser at once), and until Python's statistics card is on screen
    (the fragment's rerun); both seen from Playwright, and the view's own drawing time."""
    canvas = page.locator("#input-canvas")
    box = canvas.bounding_box()
    rng = np.random.default_rng(seed)
    times, drawn, inside = [], [], []
    for index in range(count):
        fx, fy = rng.uniform(0.05, 0.95, 2)
        start = time.perf_counter()
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        page.wait_for_function(f"n => {{ const e = {FIND}; return e.dataset.pinnedCount === String(n) && "
                               "(e.dataset.pinnedStats || '').split(';').length === n; }",
                               arg=index + 1, timeout=60_000, polling="raf")
        drawn.append(time.perf_counter() - start)
        inside.append(float(root_attr(page, "pin-draw-ms") or "nan") / 1000)
        page.wait_for_function(
            "n => [...document.querySelectorAll(\"[data-testid='stMarkdownContainer']\")]"
            ".filter(e => e.innerText.includes('entropy') && e.innerText.includes('same-class mass')).length === n",
            arg=index + 1, timeout=60_000, polling="raf")
        times.append(time.perf_counter() - start)
    return {"cards": percentiles(times), "view": percentiles(drawn), "inside": percentiles(inside)}


def large_inputs(folder: Path) -> tuple[Path, Path]:
    """A random-weight ResNet-101 DANet in the official layout (output stride 8, multi-grid 4-8-16,
    512 head channels: d = 64), saved as the official code saves a ``.pth``, and a 2048x1024 frame
    (a CamVid sample scaled up): N = 256 x 128 = 32,768 cells."""
    import torch
    from PIL import Image

    from helpers_checkpoints import foreign_state, make_model

    weights = folder / "danet101_random_official.pth"
    model = make_model("official", backbone="resnet101", num_classes=19, head_channels=512)
    torch.save(foreign_state(model, "official", with_extras=False), weights)
    del model
    sample = sorted((ROOT / "assets" / "samples").glob("*.png"))[0]
    image = folder / "frame_2048x1024.png"
    Image.open(sample).convert("RGB").resize((2048, 1024), Image.BILINEAR).save(image)
    return weights, image


def large_case(page, folder: Path, moves: int, received: list) -> list:
    """Upload the ResNet-101 checkpoint and the 2048x1024 frame through the sidebar (size limit
    raised to 2.2 MP: no downscaling), then measure pointer moves at N = 32,768."""
    rows = []
    weights, image = large_inputs(folder)
    previous = root_attr(page, "payload-id")
    sidebar = page.locator("[data-testid='stSidebar']")
    sidebar.get_by_text("Upload a checkpoint").click()
    sidebar.locator("input[type='file']").first.set_input_files(str(weights))
    wait_ready(page, previous, timeout=1800)          # the new model on the sample: the sidebar is settled
    previous = root_attr(page, "payload-id")
    sidebar.get_by_text("Input size limit").click()
    limit = sidebar.locator("[data-testid='stNumberInput'] input").first
    limit.fill("2.2")
    limit.press("Enter")
    page.wait_for_timeout(3000)                        # the rerun that takes the new limit
    sidebar.get_by_text("Upload an image").click()
    received.clear()
    sidebar.locator("input[type='file']").nth(1).set_input_files(str(image))
    forward_started = time.perf_counter()
    wait_ready(page, previous, timeout=1800, grid="128,256")
    rows.append(("2048x1024 ResNet-101: upload -> interactive view",
                 f"{time.perf_counter() - forward_started:.0f} s", "", "forward + row sweep on CPU"))
    grid = root_attr(page, "grid")
    if grid != "128,256":
        raise RuntimeError(f"the large frame was not used at full size: grid {grid}")
    rows.append(("bytes sent over the websocket for the large image",
                 f"{sum(received) / 1e6:.2f} MB", "", "Q, K as float16"))
    rows += move_rows(pointer_moves(page, moves), "p95 < 150 ms")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=60)
    parser.add_argument("--pins", type=int, default=8)
    parser.add_argument("--large", action="store_true", help="also N = 32,768 (minutes of CPU)")
    parser.add_argument("--entry", default="serve.py", help="serve.py (warm-up at server start) or app.py")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        try:
            with streamlit_server(Path(tmp) / "server.log", args.entry, ["--server.maxUploadSize", "1024"],
                                  timeout=120, poll=0.2) as (url, _), sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                received = []
                page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: received.append(len(frame))))
                page.goto(url)
                wait_ready(page)
                cold = time.perf_counter() - started
                rows.append((f"cold server start ({args.entry}) -> interactive default view", f"{cold:.2f} s", "< 5 s",
                             "13.6 s (app.py, round 1)"))
                rows.append(("bytes sent over the websocket, first page", f"{sum(received) / 1e6:.2f} MB", "", ""))
                rows += move_rows(pointer_moves(page, args.moves), "p95 < 50 ms")
                received.clear()
                pin = pins(page, args.pins)
                rows.append(("click -> pinned map + its statistics drawn by the view: p50 / p95",
                             f"{pin['view'][0] * 1000:.0f} / {pin['view'][1] * 1000:.0f} ms", "p95 < 300 ms",
                             EARLIER["pin"]))
                rows.append(("    of which drawing it, in the page: p50 / p95",
                             f"{pin['inside'][0] * 1000:.1f} / {pin['inside'][1] * 1000:.1f} ms", "", ""))
                rows.append(("click -> Python's statistics card on screen (fragment rerun): p50 / p95",
                             f"{pin['cards'][0] * 1000:.0f} / {pin['cards'][1] * 1000:.0f} ms", "", ""))
                rows.append(("bytes per pin (fragment rerun; the payload is not re-sent)",
                             f"{sum(received) / max(args.pins, 1) / 1e3:.1f} kB", "", "0.6 MB before"))
                if args.large:
                    try:
                        rows += large_case(page, Path(tmp), args.moves, received)
                    except Exception as error:  # noqa: BLE001 - report it in the table, keep the rest
                        rows.append(("2048x1024 ResNet-101", "not measured", "", f"{type(error).__name__}: "
                                     f"{str(error).splitlines()[0][:120]}"))
                browser.close()
        except ServerError as error:
            raise SystemExit(str(error)) from None
        warm = [line.strip() for line in (Path(tmp) / "server.log").read_text().splitlines() if "warm-up" in line]
        if warm:
            rows.append(("    the server's warm-up (in the background)", warm[0].split(": ", 1)[1], "", ""))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\napp latency, {os.cpu_count()} CPUs, load average {load:.1f} (shared machine: timings are noisy)\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'this run':>18}  {'target':>13}  earlier")
    for name, value, target, note in rows:
        print(f"{name:<{width}}  {value:>18}  {target:>13}  {note}")


if __name__ == "__main__":
    main()
