"""The real app in a real browser: ``streamlit run app.py`` driven by Playwright + Debian chromium.

Pins two points on a sample through the attention view, checks two different maps and per-point
statistics appear while the network ran once, checks the downloads, then checks a second browser
session only sees its own point. The view's own maths is checked in test_browser_attention.py.
Screenshots and timings go to ``test-artifacts/``.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from danet.weights import default_weights_path
from helpers_browser import require_browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
LOAD_TIMEOUT_MS = 240_000        # first page: model load + one forward on a busy CPU
CLICK_TIMEOUT_MS = 60_000

require_browser()


def open_inspector(browser, url: str):
    """A new browser context (= a new Streamlit session) on the inspector, its attention view ready."""
    context = browser.new_context(viewport={"width": 1500, "height": 1400})
    page = context.new_page()
    page.goto(url)
    root = page.locator("#danet-attention")
    root.wait_for(state="attached", timeout=LOAD_TIMEOUT_MS)
    page.wait_for_function("() => true")
    deadline = time.monotonic() + LOAD_TIMEOUT_MS / 1000
    while root.get_attribute("data-ready") != "1":
        assert time.monotonic() < deadline, "the attention view never got its data"
        time.sleep(0.1)
    return context, page, page.locator("#input-canvas")


def click_at(page, image, fx: float, fy: float, expected_points: int) -> float:
    """Click (pin) at a fraction of the displayed image; seconds until the new point's card is shown."""
    box = image.bounding_box()
    start = time.perf_counter()
    page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
    label = f"{expected_points} point{'s' if expected_points != 1 else ''}"
    page.get_by_text(re.compile(rf"^{label} pinned")).wait_for(timeout=CLICK_TIMEOUT_MS)
    cards(page, expected_points)
    return time.perf_counter() - start


def cards(page, count: int) -> list[str]:
    """Texts of the per-point statistic cards, waiting until ``count`` are shown."""
    locator = page.locator("[data-testid='stMarkdownContainer']").filter(has_text="same-class mass").filter(
        has_text="entropy")
    page.wait_for_function(
        "n => [...document.querySelectorAll(\"[data-testid='stMarkdownContainer']\")]"
        ".filter(e => e.innerText.includes('entropy') && e.innerText.includes('same-class mass')).length === n",
        arg=count, timeout=CLICK_TIMEOUT_MS)
    return [text.strip() for text in locator.all_inner_texts()]


def forward_passes(page) -> int:
    expander = page.locator("[data-testid='stSidebar'] [data-testid='stExpander']").filter(has_text="Diagnostics")
    text = expander.locator("[data-testid='stMarkdownContainer']").filter(has_text="forward passes").first
    if not text.is_visible():
        expander.get_by_text("Diagnostics").click()
    text.wait_for(timeout=CLICK_TIMEOUT_MS)
    return int(re.search(r"forward passes:\s*(\d+)", text.inner_text()).group(1))


def download(page, label: str) -> bytes:
    expander = page.locator("[data-testid='stExpander']").filter(has_text="Downloads, and loading a record back")
    if not page.locator("[data-testid='stDownloadButton']").first.is_visible():
        expander.get_by_text("Downloads, and loading a record back").click()
    with page.expect_download(timeout=CLICK_TIMEOUT_MS) as info:
        page.locator("[data-testid='stDownloadButton']").get_by_text(label).click()
    return Path(info.value.path()).read_bytes()


def check_downloads(page) -> None:
    """The three download buttons give what they promise for the two clicked points."""
    record = json.loads(download(page, "Record (JSON)"))
    sample = sorted((ROOT / "assets" / "samples").glob("*.png"))[0]
    assert record["image"]["name"] == sample.name
    assert record["image"]["sha256"] == hashlib.sha256(sample.read_bytes()).hexdigest()
    assert len(record["points"]) == 2 and record["model"]["layout"] == "danet-lens"
    # sizes are named (height, width) alike everywhere; the model is identified by its bytes
    assert record["image"]["size"] == record["inference"]["image_size"] == {"height": 360, "width": 480}
    assert record["model"]["sha256"] == hashlib.sha256(default_weights_path().read_bytes()).hexdigest()
    assert record["model"]["config"]["stem"] is None                  # MobileNetV2 has no ResNet stem
    maps = np.load(io.BytesIO(download(page, "Maps + CAM matrix (.npz)")))
    assert maps["pam_attention"].shape[0] == 2 and maps["fused_prediction"].shape == (360, 480)
    np.testing.assert_allclose(maps["pam_attention"].sum((1, 2)), 1.0, rtol=1e-4)
    png = download(page, "Figures (PNG)")
    (ARTIFACTS / "browser_download_figures.png").write_bytes(png)
    figure = Image.open(io.BytesIO(png))
    assert figure.format == "PNG" and figure.width > 1000


def test_two_points_two_maps_one_forward_and_isolated_sessions(app_server, browser):
    timings = {}
    first_context, first, first_image = open_inspector(browser, app_server)
    timings["click_1_to_card_s"] = click_at(first, first_image, 0.30, 0.25, 1)
    timings["click_2_to_card_s"] = click_at(first, first_image, 0.65, 0.80, 2)
    root = first.locator("#danet-attention")
    first.wait_for_function("() => true")
    first_cards = cards(first, 2)
    assert first_cards[0] != first_cards[1], first_cards
    checks = (root.get_attribute("data-pinned-checksums") or "").split(";")
    assert len(checks) == 2 and checks[0] != checks[1]                # two different maps side by side
    assert forward_passes(first) == 1
    first.screenshot(path=str(ARTIFACTS / "browser_session_1_two_points.png"))
    check_downloads(first)

    second_context, second, second_image = open_inspector(browser, app_server)
    timings["second_session_click_to_card_s"] = click_at(second, second_image, 0.80, 0.40, 1)
    (only,) = cards(second, 1)
    assert only not in first_cards
    x, y = map(int, re.search(r"\((\d+), (\d+)\)", only).groups())
    assert abs(x - 0.80 * 480) <= 3 and abs(y - 0.40 * 360) <= 3      # displayed -> image pixels
    assert forward_passes(second) == 1                                # same image + model: cached
    second.screenshot(path=str(ARTIFACTS / "browser_session_2_one_point.png"))

    # the first session reruns its fragment (a slider moves) and still has exactly its own two points
    block = first.locator("[data-testid='stSlider']").filter(has_text="Opacity").first
    block.locator("input[type='range']").first.focus()
    first.keyboard.press("ArrowLeft")
    block.get_by_text("0.55", exact=True).wait_for(timeout=CLICK_TIMEOUT_MS)
    assert cards(first, 2) == first_cards
    assert first.get_by_text(re.compile(r"^2 points pinned")).is_visible()

    # the other pages reuse the cached forward
    first.locator("[data-testid='stSidebar']").get_by_text("Channel attention").click()
    first.locator("[data-testid='stPlotlyChart']").first.wait_for(timeout=CLICK_TIMEOUT_MS)
    first.get_by_text("inverts similarity").wait_for(timeout=CLICK_TIMEOUT_MS)
    time.sleep(1.0)                                                   # let Plotly finish drawing
    first.screenshot(path=str(ARTIFACTS / "browser_channel_attention.png"))
    assert forward_passes(first) == 1
    first.locator("[data-testid='stSidebar']").get_by_text("Model details").click()
    first.get_by_text("Validation accuracy recorded with the weights").wait_for(timeout=CLICK_TIMEOUT_MS)
    first.screenshot(path=str(ARTIFACTS / "browser_model_details.png"))
    assert forward_passes(first) == 1
    first.locator("[data-testid='stSidebar']").get_by_text("DANet inspector").click()
    assert cards(first, 2) == first_cards                             # the points are still there

    (ARTIFACTS / "browser_timings.json").write_text(json.dumps(timings, indent=2))
    print("browser timings:", json.dumps(timings))
    first_context.close()
    second_context.close()
