"""What a researcher sees on the first screen, in a real browser (issue 24): ``streamlit run
app.py`` + Playwright + Debian chromium, the default model on the first sample.

* the query-specific mode scales each sign on its own range and shows both on the bar;
* a one-line verdict next to the map, with its numbers, linking to "Does attention matter?";
* refusals and notices in the main area, next to what they affect;
* no request leaves the server;
* an 800x900 window: sidebar collapsed, whole-word labels, the image at full width;
* the reverse view's bar label, the raw readout, the PNG matching the screen.

Screenshots go to ``test-artifacts/ui_*.png``.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

import danet
from danet.analysis import ablate, knockout_curve, query_specificity
from danet.analysis.attention_stats import grid_labels
from danet.analysis.knockout import MAX_K
from danet.analysis.specificity import MAX_QUERIES
from danet.data.images import load_image
from danet.inspection import inspect_image
from danet_app import display_modes as dm
from danet_app.verdict import sink_peak, typical_query
from helpers_browser import require_browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
LOAD_TIMEOUT_MS = 240_000
WAIT_S = 60
SAMPLE = min((ROOT / "assets" / "samples").glob("*.png"))

require_browser()


def js_format(value: float) -> str:
    """The view's number format (``format`` in attention_view.js: toExponential(2) or toPrecision(3))."""
    def exponential(v: float, digits: int) -> str:
        mantissa, exponent = f"{v:.{digits}e}".split("e")
        return f"{mantissa}e{int(exponent):+d}"

    if not np.isfinite(value):
        return "–"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return exponential(value, 2)
    if value == 0:
        return "0.00"
    exponent = int(f"{value:.2e}".split("e")[1])                  # after rounding to 3 digits
    return exponential(value, 2) if exponent >= 3 else f"{value:.{max(0, 2 - exponent)}f}"


@pytest.fixture(scope="module")
def reference():
    """The default model on the first sample, as the app runs it."""
    loaded = danet.load(device="cpu")
    image = load_image(SAMPLE.read_bytes(), max_pixels=1_000_000).array
    result = inspect_image(loaded.model, image, loaded.meta.mean, loaded.meta.std)
    query, key = result.pam_query.numpy(), result.pam_key.numpy()
    _, mean_row = dm.row_statistics(query, key)
    return {"loaded": loaded, "result": result, "query": query, "key": key, "mean_row": mean_row, "image": image}


class Page:
    """One browser session on the inspector with its attention view ready."""

    def __init__(self, browser, url: str, width: int = 1500, height: int = 1000, path: str = ""):
        self.context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        self.page = self.context.new_page()
        self.outside: list[str] = []
        self.page.on("request", lambda r: None if r.url.startswith((url + "/", "data:", "blob:"))
                     else self.outside.append(r.url))
        self.page.goto(url + path)
        self.root = self.page.locator("#danet-attention")

    def ready(self) -> Page:
        self.root.wait_for(state="attached", timeout=LOAD_TIMEOUT_MS)
        self.wait_attr("ready", "1", LOAD_TIMEOUT_MS / 1000)
        return self

    def attr(self, name: str) -> str:
        return self.root.get_attribute(f"data-{name}") or ""

    def wait_attr(self, name: str, value: str, timeout_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while self.attr(name) != value:
            assert time.monotonic() < deadline, f"data-{name} stayed {self.attr(name)!r}, expected {value!r}"
            time.sleep(0.05)

    def hover(self, cell, grid) -> None:
        box = self.page.locator("#input-canvas").bounding_box()
        self.page.mouse.move(box["x"] + (cell[1] + 0.5) / grid[1] * box["width"],
                             box["y"] + (cell[0] + 0.5) / grid[0] * box["height"])
        self.wait_attr("query-cell", f"{cell[0]},{cell[1]}")

    def choose(self, label: str, option: str) -> None:
        updates = self.attr("updates")
        widget = self.page.locator("[data-testid='stSelectbox'], [data-testid='stRadio']").filter(has_text=label).first
        if widget.get_attribute("data-testid") == "stSelectbox":
            widget.click()
            self.page.get_by_role("option", name=option).click()
        else:
            widget.get_by_text(option).click()
        deadline = time.monotonic() + WAIT_S
        while self.attr("updates") == updates:
            assert time.monotonic() < deadline, f"the view did not get the setting {option}"
            time.sleep(0.05)

    def shot(self, name: str, full_page: bool = False) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


def test_query_specific_scales_each_sign_on_its_own_and_shows_both_ranges(app_server, browser, reference):
    result = reference["result"]
    grid = result.grid_size
    view = Page(browser, app_server).ready()
    view.choose("Display", dm.MODES["specific"])
    for cell in [(20, 25), (30, 40)]:
        view.hover(cell, grid)
        row = dm.attention_row(reference["query"], reference["key"], cell[0] * grid[1] + cell[1])
        shown, lo, hi = dm.display(row, "specific", baseline=reference["mean_row"])
        assert float(view.attr("vmin")) == pytest.approx(lo, rel=1e-3)
        assert float(view.attr("vmax")) == pytest.approx(hi, rel=1e-3)
        assert abs(lo) != pytest.approx(hi, rel=0.05)                     # not one symmetric scale
        share = float(view.attr("opaque-share"))
        assert share == pytest.approx(dm.opaque_share(shown, lo, hi, "specific"), abs=2e-3)
        assert share > 0.05                                                # it draws something
        # both ranges on the bar: its ends, a 0 at the centre, and the unit line
        assert view.page.locator("#bar-lo").inner_text() == js_format(lo)
        assert view.page.locator("#bar-hi").inner_text() == js_format(hi)
        assert view.page.locator("#bar-mid").is_visible() and view.page.locator("#bar-mid").inner_text() == "0"
        unit = view.page.locator("#bar-unit").inner_text()
        assert "each sign on its own scale" in unit
        assert f"red 0 to {js_format(hi)} (highest {js_format(shown.max())})" in unit
        assert f"blue 0 to {js_format(lo)} (lowest {js_format(shown.min())})" in unit
    view.shot("ui_query_specific.png")
    view.context.close()


def verdict_locator(view: Page):
    return view.page.locator("[data-testid='stCaptionContainer']").filter(has_text="alpha ").filter(
        has_text="typical query").first


def verdict_text(view: Page) -> str:
    """The verdict line once its measured numbers are in."""
    line = verdict_locator(view)
    line.wait_for(timeout=LOAD_TIMEOUT_MS)
    deadline = time.monotonic() + WAIT_S
    while "measuring" in line.inner_text() or "PAM off:" not in line.inner_text():
        assert time.monotonic() < deadline, line.inner_text()
        time.sleep(0.1)
    return line.inner_text()


def test_a_verdict_next_to_the_map_with_its_numbers_links_to_the_measures_page(app_server, browser, reference):
    result, loaded = reference["result"], reference["loaded"]
    grid = result.grid_size
    view = Page(browser, app_server).ready()
    text = verdict_text(view)
    line = verdict_locator(view).bounding_box()
    image = view.page.locator("#input-canvas").bounding_box()
    assert line["y"] + line["height"] <= image["y"] <= line["y"] + line["height"] + 80, (line, image)
    assert line["y"] + line["height"] <= 1000                            # on the first screen
    view.shot("ui_verdict.png")
    # its numbers: the typical query from the mean row, the sink, alpha, the card, the measures
    cells = grid_labels(result.prediction("fused"), grid, len(loaded.meta.classes)).ravel()
    name, share = typical_query(reference["mean_row"], cells, loaded.meta.classes)
    spec = query_specificity(result, max_queries=MAX_QUERIES)
    ablation = ablate(loaded.model, result, pam_off=True)
    for part in [f"typical query {share:.0%} on {name}",
                 f"strongest sink {sink_peak(reference['mean_row']):.0f}x uniform",
                 f"mean row {spec.share_mean:.0%} of a row", f"alpha {result.alpha:.3f}",
                 f"PAM off: {ablation.changed_fraction:.1%} of pixels change", "-1.08 val mIoU (model card)"]:
        assert part in text, (part, text)
    # pointer moves rerun nothing (no forward, no new verdict); a pin adds the point's numbers
    updates = view.attr("updates")
    for cell in [(5, 5), (20, 30), (40, 50), (10, 55)]:
        view.hover(cell, grid)
    assert view.attr("updates") == updates and verdict_text(view) == text
    view.hover((30, 20), grid)
    box = view.page.locator("#input-canvas").bounding_box()
    view.page.mouse.click(box["x"] + 20.5 / grid[1] * box["width"], box["y"] + 30.5 / grid[0] * box["height"])
    view.page.get_by_text("1 point pinned").wait_for(timeout=WAIT_S * 1000)
    deadline = time.monotonic() + WAIT_S
    while "knockout of point 1" not in verdict_text(view):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    pinned = verdict_text(view)
    x, y = (int(v) for v in view.page.url.split("points=")[1].split("&")[0].replace("%2C", ",").split(","))
    knockout = knockout_curve(loaded.model, result, cell=result.pixel_to_cell(x, y),
                              max_k=max(1, min(MAX_K, result.num_positions - 1)))
    assert f"knockout of point 1: {knockout.verdict}" in pinned and " · pinned " in pinned
    view.shot("ui_verdict_pinned.png")
    view.page.locator("[data-testid='stPageLink']").filter(has_text="Does attention matter?").click()
    view.page.get_by_role("heading", name="Does attention matter?").wait_for(timeout=WAIT_S * 1000)
    assert view.outside == []
    view.context.close()


def upload_image(view: Page, name: str, data: bytes) -> None:
    sidebar = view.page.locator("[data-testid='stSidebar']")
    sidebar.get_by_text("Upload an image", exact=True).click()
    uploader = sidebar.locator("[data-testid='stFileUploader']", has_text="Image (").locator("input[type='file']")
    uploader.wait_for(state="attached", timeout=WAIT_S * 1000)
    uploader.set_input_files(files=[{"name": name, "mimeType": "image/png", "buffer": data}])


def test_refusals_and_notices_are_shown_in_the_main_area_next_to_the_image(app_server, browser):
    view = Page(browser, app_server).ready()
    # a text file named .png: the reason, in the main area, on the first screen
    upload_image(view, "notes.png", b"just some text\n" * 20)
    main = view.page.locator("[data-testid='stMain']")
    error = main.locator("[data-testid='stAlertContainer']", has_text="Could not use notes.png")
    error.wait_for(timeout=WAIT_S * 1000)
    assert "supported formats: PNG, JPEG, GIF, WEBP, BMP, TIFF" in error.inner_text()
    assert view.page.locator("[data-testid='stSidebar'] [data-testid='stAlertContainer']").count() == 0
    box = error.bounding_box()
    assert box["y"] + box["height"] <= 1000, box                       # above the fold
    assert main.get_by_text("Choose a model and an image").count() == 0
    view.shot("ui_refusal_in_main.png")
    # a large image: the downscale notice right under the image's line, above the tabs
    from io import BytesIO

    from PIL import Image
    big = BytesIO()
    Image.open(SAMPLE).convert("RGB").resize((1600, 1200)).save(big, format="PNG")
    upload_image(view, "big.png", big.getvalue())
    notice = main.locator("[data-testid='stAlertContainer']", has_text="downscaled from 1600x1200")
    notice.wait_for(timeout=LOAD_TIMEOUT_MS)
    caption = main.locator("[data-testid='stCaptionContainer']", has_text="big.png").first.bounding_box()
    tabs = main.locator("[data-testid='stTabs']").first.bounding_box()
    box = notice.bounding_box()
    assert caption["y"] < box["y"] < tabs["y"] and box["y"] + box["height"] <= 1000, (caption, box, tabs)
    assert view.page.locator("[data-testid='stSidebar'] [data-testid='stAlertContainer']").count() == 0
    view.shot("ui_notice_in_main.png")
    assert view.outside == []
    view.context.close()


def test_no_request_leaves_the_server_on_any_page(app_server, browser):
    """Every asset comes from the app itself: the page icon was a Material Symbols name, which
    made every page load fetch an SVG from fonts.gstatic.com (21 failed requests per walk offline)."""
    view = Page(browser, app_server).ready()
    sidebar = view.page.locator("[data-testid='stSidebar']")
    for page, marker in [("Does attention matter?", "Switch attention off"), ("Channel attention", "inverts similarity"),
                         ("Model details", "Validation accuracy recorded with the weights"),
                         ("DANet inspector", "Position attention")]:
        sidebar.get_by_text(page, exact=True).click()
        view.page.get_by_text(marker).first.wait_for(timeout=LOAD_TIMEOUT_MS)
        time.sleep(1.0)                                     # charts and images finish loading
    view.page.reload()
    view.ready()
    icon = view.page.evaluate("() => document.querySelector(\"link[rel='shortcut icon']\")?.href || ''")
    assert icon.startswith(("data:", app_server)), icon
    assert view.outside == [], view.outside[:5]
    view.context.close()


SPLIT_WORDS_JS = """(root) => {
  // words of the text under root that the layout broke across lines ("Upsam|pling")
  const split = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (const match of node.textContent.matchAll(/[A-Za-z0-9%]+/g)) {
      const range = document.createRange();
      range.setStart(node, match.index); range.setEnd(node, match.index + match[0].length);
      const lines = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top)));
      if (lines.size > 1) split.push(match[0]);
    }
  }
  return split;
}"""


def test_an_800x900_window_collapses_the_sidebar_and_keeps_labels_and_the_image_whole(app_server, browser):
    view = Page(browser, app_server, 800, 900).ready()
    sidebar = view.page.locator("[data-testid='stSidebar']")
    deadline = time.monotonic() + WAIT_S
    while sidebar.get_attribute("data-collapsed") != "true":
        assert time.monotonic() < deadline, "the sidebar stayed open at 800 px"
        time.sleep(0.1)
    time.sleep(1.0)                                           # the main area widens
    main = view.page.locator("[data-testid='stMain'] [data-testid='stMainBlockContainer']").bounding_box()
    controls = view.page.locator("[data-testid='stTabs']").first
    split = view.page.evaluate(SPLIT_WORDS_JS, controls.element_handle())
    assert split == [], split                                 # was "Upsam|pling", "biline|ar"
    colour_map = view.page.locator("[data-testid='stSelectbox']").filter(has_text="Colour map").first
    shown = colour_map.evaluate("""el => { const input = el.querySelector('input');
        const box = input.getBoundingClientRect(), probe = document.createElement('canvas').getContext('2d');
        probe.font = getComputedStyle(input).font;
        return {value: input.value, width: box.width, needed: probe.measureText(input.value).width}; }""")
    assert shown["value"] == "jet" and shown["width"] >= shown["needed"] + 10, shown   # the value fits, with room
    left, right = (view.page.locator(f"#{name}").bounding_box() for name in ("input-canvas", "map-canvas"))
    assert left["width"] >= 340 and left["height"] >= 250, left          # was 228x171
    assert left["width"] + right["width"] >= 0.95 * main["width"] - 40       # the two span the main area
    view.shot("ui_800x900.png")
    # a visitor who opens the sidebar again keeps it open (Streamlit stores that choice)
    view.page.locator("[data-testid='stExpandSidebarButton']").click()
    view.page.wait_for_function("() => document.querySelector('[data-testid=stSidebar]').dataset.collapsed === 'false'")
    view.page.reload()
    view.ready()
    time.sleep(1.5)
    assert sidebar.get_attribute("data-collapsed") == "false"
    view.shot("ui_800x900_sidebar_opened.png")
    split = view.page.evaluate(SPLIT_WORDS_JS, view.page.locator("[data-testid='stTabs']").first.element_handle())
    assert split == [], split                                 # whole controls wrap onto a second row
    assert view.outside == []
    view.context.close()
    # a wide window keeps its sidebar
    wide = Page(browser, app_server, 1500, 1000).ready()
    time.sleep(1.0)
    assert wide.page.locator("[data-testid='stSidebar']").get_attribute("data-collapsed") == "false"
    wide.context.close()


def test_the_reverse_view_bar_and_the_raw_readout_say_what_they_show(app_server, browser, reference):
    result = reference["result"]
    grid = result.grid_size
    view = Page(browser, app_server).ready()
    view.hover((20, 30), grid)
    readout = view.page.locator("#readout").inner_text()
    value = js_format(float(view.attr("value")))
    assert readout.count(value) == 1 and "(weight" not in readout, readout     # raw: the number once
    assert view.page.locator("#bar-unit").inner_text() == dm.unit("raw", "row")
    view.choose("Display", dm.MODES["relative"])
    view.hover((20, 31), grid)
    assert "(weight " in view.page.locator("#readout").inner_text()           # another unit: the weight too
    view.choose("Display", dm.MODES["raw"])
    view.choose("Map", "Who looks here (column)")
    view.hover((20, 30), grid)
    unit = view.page.locator("#bar-unit").inner_text()
    assert unit == dm.unit("raw", "column") and "does not sum to 1" in unit and "a row sums" not in unit
    assert "does not sum to 1" in view.page.locator("#readout").inner_text()
    view.shot("ui_reverse_view.png")
    view.choose("Map", "Where it looks (row)")
    view.context.close()


def test_a_link_with_10000_points_keeps_the_first_8_and_says_so(app_server, browser):
    """10,000 valid points in ?points= (62,896 characters, about the longest query the server
    takes: Tornado answers 400 to a request line over 64 KB, so 10^5 points never reach the app)
    were silently dropped; now the first 8 are kept and a notice says so, next to the map."""
    tag = hashlib.sha256(SAMPLE.read_bytes()).hexdigest()[:12]
    points = ";".join(f"{i % 480},{i // 480 % 360}" for i in range(10_000))
    view = Page(browser, app_server, path=f"/?image={tag}&points={points}").ready()
    view.wait_attr("pinned-count", "8")
    notice = view.page.locator("[data-testid='stMain'] [data-testid='stAlertContainer']",
                               has_text="The URL holds 10,000 points")
    notice.wait_for(timeout=WAIT_S * 1000)
    assert "the first 8 are used (the inspector keeps at most 8 points per image)" in notice.inner_text()
    assert notice.bounding_box()["y"] < view.page.locator("#input-canvas").bounding_box()["y"]   # above the map
    view.page.wait_for_function("() => location.search.length < 200")        # the link now holds those 8
    view.shot("ui_link_10000_points.png")
    assert view.outside == []
    view.context.close()
