"""The first minutes of the app, in headless chromium: page open -> heatmap following the pointer.

    python -m benchmarks.cold_start [--runs 3] [--entries app.py,serve.py] [--no-upload] [--out FILE]
                                    [--compare DIR]

For each entry point and run, a fresh ``streamlit run`` server (fresh caches) and three visits:

- **cold**: the page is opened as soon as the server's health check answers (a visitor who
  arrives at once; for ``serve.py`` its start-up warm-up is still running then);
- **warm**: a second visitor (a new browser session) on the same server afterwards;
- **upload**: in that session, a 1024x768 JPEG photo uploaded through the sidebar, until its
  own heatmap follows the pointer (the server's first upload: the decoding sandbox starts too).

"Following the pointer" is measured as a user sees it: the view has its payload, the pointer is
moved onto a cell, and the view reports that cell's map painted. The server runs with
``DANET_APP_TIMELINE=1`` (``danet_app.timeline``), so each visit's table says where its seconds
went: imports, model, image, forward, payload, and the browser's part after the view was sent.
Targets (issue 24): cold < 5 s, warm < 1.5 s, upload < 3 s, on a quiet machine; the load average
is printed with the figures. ``--compare DIR`` serves another checkout of the app (e.g. ``git
worktree add /tmp/before <commit>``) in turns with this one, run by run, so that a busy machine's
load hits both alike: the before/after ratios of one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))       # the test helpers: serving the app, chromium
from helpers_browser import ServerError, free_port, launch_chromium, stop, wait_healthy

from benchmarks.app_latency import FIND, root_attr, wait_ready

TARGETS = {"cold": 5.0, "warm": 1.5, "upload": 3.0}
UPLOAD_SIZE = (1024, 768)
TIMELINE = "danet-lens timeline: "


def photo(folder: Path) -> Path:
    """A 1024x768 JPEG (a CamVid sample scaled up: a photo's content, at a photo's size)."""
    from PIL import Image

    sample = sorted((ROOT / "assets" / "samples").glob("*.png"))[1]
    path = folder / "photo_1024x768.jpg"
    Image.open(sample).convert("RGB").resize(UPLOAD_SIZE, Image.BICUBIC).save(path, quality=90)
    return path


def follow(page, timeout: float = 60) -> None:
    """Move the pointer onto a cell and wait until the view has painted that cell's map."""
    box = page.locator("#input-canvas").bounding_box()
    gh, gw = map(int, root_attr(page, "grid").split(","))
    row, col = gh // 3, gw // 3
    page.mouse.move(box["x"] + (col + 0.5) / gw * box["width"], box["y"] + (row + 0.5) / gh * box["height"])
    page.wait_for_function(f"cell => {{ const e = {FIND}; return e.dataset.frameCell === cell; }}",
                           arg=f"{row},{col}", polling="raf", timeout=timeout * 1000)


def visit(browser, url: str) -> tuple[dict, object]:
    """Open the page in a new session; wall-clock times (time.time()) of what it showed."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    times = {"open": time.time()}
    page.goto(url)
    page.wait_for_selector("h1", timeout=300_000)
    times["first heading"] = time.time()
    wait_ready(page, timeout=300)
    times["view ready"] = time.time()
    follow(page)
    times["following"] = time.time()
    return times, page


def upload(page, path: Path) -> dict:
    """Upload ``path`` through the sidebar; times until its view follows the pointer."""
    previous = root_attr(page, "payload-id")
    sidebar = page.locator("[data-testid='stSidebar']")
    sidebar.get_by_text("Upload an image").click()
    chooser = sidebar.locator("input[type='file']").first
    chooser.wait_for(state="attached", timeout=60_000)
    times = {"open": time.time()}
    chooser.set_input_files(str(path))
    wait_ready(page, previous, timeout=300, grid=f"{UPLOAD_SIZE[1] // 8},{UPLOAD_SIZE[0] // 8}")
    times["view ready"] = time.time()
    follow(page)
    times["following"] = time.time()
    return times


def timeline(log: Path) -> list[tuple[float, str, str]]:
    """(unix time, thread, mark) of every ``danet_app.timeline`` line in the server log."""
    marks = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(TIMELINE):
            stamp, thread, name = line[len(TIMELINE):].split(" ", 2)
            marks.append((float(stamp), thread, name))
    return marks


def phases(times: dict, marks: list) -> list[tuple[str, float]]:
    """Seconds from each step to the next between the visit's start and the pointer followed: the
    server's marks (the first of each name; the warm-up thread's named as such) and the browser's."""
    start, end = times["open"], times["following"]
    seen, events = set(), []
    for stamp, thread, name in marks:
        label = f"server{' (warm-up thread)' if thread == 'danet-warmup' else ''}: {name}"
        if start <= stamp <= end and label not in seen:
            seen.add(label)
            events.append((stamp, label))
    events += [(stamp, f"browser: {name}") for name, stamp in times.items() if name != "open"]
    events.sort()
    steps, previous = [], start
    for stamp, name in events:
        steps.append((name, stamp - previous))
        previous = stamp
    return steps


def start_server(root: Path, entry: str, port: int, log) -> subprocess.Popen:
    """``streamlit run entry`` of the checkout at ``root`` (its own danet and danet_app first on the path)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DANET_APP_TIMELINE": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", entry, "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.maxUploadSize", "64"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)


def run_server(entry: str, browser, folder: Path, do_upload: bool, index: int, root: Path = ROOT,
               label: str = "") -> dict:
    log_path = folder / f"{label}{Path(entry).stem}-{index}.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        spawned = time.time()
        process = start_server(root, entry, port, log)
        try:
            wait_healthy(url, process, timeout=120, poll=0.05, log_path=log_path)
            healthy = time.time()
            cold, page = visit(browser, url)
            warm, warm_page = visit(browser, url)
            page.context.close()
            uploaded = upload(warm_page, photo(folder)) if do_upload else None
            warm_page.context.close()
        finally:
            stop(process)
    marks = timeline(log_path)
    warm_up = [line.split(": ", 1)[1] for line in log_path.read_text(errors="replace").splitlines()
               if line.startswith("danet-lens warm-up")]
    return {"entry": label + entry, "health": healthy - spawned, "cold": cold, "warm": warm, "upload": uploaded,
            "marks": marks, "warm_up": warm_up[0] if warm_up else ""}


def floor(browser, folder: Path) -> float:
    """Page open -> a heading on a fresh server of a one-line Streamlit app (``st.title``): what
    Streamlit's own page costs on this machine, below which no visit can go."""
    script = folder / "floor_app.py"
    script.write_text("import streamlit as st\n\nst.title('floor')\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(folder / "floor.log", "w") as log:
        process = start_server(folder, script.name, port, log)
        try:
            wait_healthy(url, process, timeout=120, poll=0.05)
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            page = context.new_page()
            opened = time.time()
            page.goto(url)
            page.wait_for_selector("h1", timeout=120_000)
            seconds = time.time() - opened
            context.close()
        finally:
            stop(process)
    return seconds


def total(times: dict | None) -> float:
    return float("nan") if times is None else times["following"] - times["open"]


def report(results: list[dict], load: tuple[float, float], floors: list[float]) -> str:
    lines = [(f"cold start in headless chromium, {os.cpu_count()} CPUs, load average {load[0]:.1f} at start, "
             f"{load[1]:.1f} at end (targets are for a quiet machine)"), ""]
    lines += ["| entry | visit | runs (s) | median (s) | target |", "|---|---|---|---|---|"]
    if floors:
        lines.append(f"| a one-line Streamlit app | page open -> its heading | {', '.join(f'{v:.2f}' for v in floors)} "
                     f"| {statistics.median(floors):.2f} | (Streamlit's own floor) |")
    for entry in dict.fromkeys(r["entry"] for r in results):
        runs = [r for r in results if r["entry"] == entry]
        for kind in ("cold", "warm", "upload"):
            values = [total(r[kind]) for r in runs if r[kind] is not None]
            if values:
                lines.append(f"| {entry} | {kind} | {', '.join(f'{v:.2f}' for v in values)} | "
                             f"{statistics.median(values):.2f} | < {TARGETS[kind]:g} s |")
    lines.append("")
    shown = {}
    for r in results:                                       # the median cold run of each entry, step by step
        shown.setdefault(r["entry"], []).append(r)
    for entry, runs in shown.items():
        runs = sorted(runs, key=lambda r: total(r["cold"]))
        r = runs[len(runs) // 2]
        lines.append(f"{entry}, the median run: server healthy {r['health']:.2f} s after its start; "
                     f"warm-up log: {r['warm_up'] or 'none'}")
        lines.append("")
        for kind in ("cold", "warm", "upload"):
            if r[kind] is None:
                continue
            lines.append(f"| {entry} {kind}: step | s |")
            lines.append("|---|---|")
            lines += [f"| {name} | {seconds:.2f} |" for name, seconds in phases(r[kind], r["marks"])]
            lines.append(f"| **page open -> following** | **{total(r[kind]):.2f}** |")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh servers per entry point")
    parser.add_argument("--entries", default="app.py,serve.py")
    parser.add_argument("--no-upload", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the report here")
    parser.add_argument("--compare", type=Path, help="another checkout of the app, served in turns with this one")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    roots = [(ROOT, "")] + ([(args.compare.resolve(), "before: ")] if args.compare else [])
    load_start = os.getloadavg()[0]
    results, floors = [], []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        warm_browser = browser.new_page()                      # chromium itself is started before any server
        warm_browser.close()
        try:
            for index in range(args.runs):
                floors.append(floor(browser, Path(tmp)))
                for entry in args.entries.split(","):
                    for root, label in roots if index % 2 == 0 else roots[::-1]:
                        results.append(run_server(entry, browser, Path(tmp), not args.no_upload, index, root, label))
                        print(f"{label}{entry} run {index + 1}: cold {total(results[-1]['cold']):.2f} s, "
                              f"warm {total(results[-1]['warm']):.2f} s, upload {total(results[-1]['upload']):.2f} s, "
                              f"load {os.getloadavg()[0]:.1f}", flush=True)
        except ServerError as error:
            raise SystemExit(str(error)) from None
        finally:
            browser.close()
    text = report(results, (load_start, os.getloadavg()[0]), floors)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
