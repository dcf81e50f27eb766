"""The attention view in a real browser: ``streamlit run app.py`` + Playwright + Debian chromium.

The view computes attention in JavaScript at the cursor; here what it drew (its ``data-*``
attributes) is compared with the Python reference: ``InspectionResult.rows`` for rows, the
explicit N x N matrix for the reverse view, ``danet_app.display_modes`` for the display modes
and box queries. Then a pin, the URL round trip and two isolated sessions. Screenshots go to
``test-artifacts/``.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

import danet
from danet.maps.grid import grid_labels
from danet.data.images import load_image
from danet.inspection import inspect_image
from danet_app import display_modes as dm
from danet_app.state import point_statistics
from helpers_browser import require_browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
LOAD_TIMEOUT_MS = 240_000
WAIT_MS = 60_000
SAMPLE = sorted((ROOT / "assets" / "samples").glob("*.png"))[0]

require_browser()


@pytest.fixture(scope="module")
def reference():
    """The same forward in this process: the default model on the first sample, as the app runs it."""
    loaded = danet.load(device="cpu")
    image = load_image(SAMPLE.read_bytes(), max_pixels=1_000_000).array
    result = inspect_image(loaded.model, image, loaded.meta.mean, loaded.meta.std)
    query, key = result.pam_query.numpy(), result.pam_key.numpy()
    lse, mean_row = dm.row_statistics(query, key)
    cells = grid_labels(result.prediction("fused"), result.grid_size, len(loaded.meta.classes)).ravel()
    return {"result": result, "query": query, "key": key, "lse": lse, "mean_row": mean_row, "cells": cells,
            "classes": loaded.meta.classes}


class View:
    """One browser session on the inspector, and what its attention view says it drew."""

    def __init__(self, browser, url: str, width: int = 1600, height: int = 1000):
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.page.goto(url)
        self.root = self.page.locator("#danet-attention")
        self.root.wait_for(state="attached", timeout=LOAD_TIMEOUT_MS)
        self.wait_attr("ready", "1")
        self.canvas = self.page.locator("#input-canvas")

    def attr(self, name: str) -> str:
        return self.root.get_attribute(f"data-{name}") or ""

    def wait_attr(self, name: str, value: str, timeout_s: float = WAIT_MS / 1000) -> None:
        deadline = time.monotonic() + timeout_s
        while self.attr(name) != value:
            assert time.monotonic() < deadline, f"data-{name} stayed {self.attr(name)!r}, expected {value!r}"
            time.sleep(0.05)

    def position(self, cell: tuple[int, int], grid: tuple[int, int]) -> tuple[float, float]:
        """Page coordinates of the centre of grid ``cell``."""
        box = self.canvas.bounding_box()
        return (box["x"] + (cell[1] + 0.5) / grid[1] * box["width"],
                box["y"] + (cell[0] + 0.5) / grid[0] * box["height"])

    def hover(self, cell, grid) -> None:
        self.page.mouse.move(*self.position(cell, grid))
        self.wait_attr("query-cell", f"{cell[0]},{cell[1]}")

    def choose(self, label: str, option: str) -> None:
        """Pick ``option`` in the selectbox or radio labelled ``label``; waits for the view to redraw."""
        updates = self.attr("updates")
        widget = self.page.locator("[data-testid='stSelectbox'], [data-testid='stRadio']").filter(has_text=label).first
        if widget.get_attribute("data-testid") == "stSelectbox":
            widget.click()
            self.page.get_by_role("option", name=option).click()
        else:
            widget.get_by_text(option).click()
        deadline = time.monotonic() + WAIT_MS / 1000
        while self.attr("updates") == updates:
            assert time.monotonic() < deadline, f"the view did not get the setting {option}"
            time.sleep(0.05)

    def pinned_cards(self, count: int) -> list[str]:
        self.page.wait_for_function(
            "n => [...document.querySelectorAll(\"[data-testid='stMarkdownContainer']\")]"
            ".filter(e => e.innerText.includes('entropy') && e.innerText.includes('same-class mass')).length === n",
            arg=count, timeout=WAIT_MS)
        return [t.strip() for t in self.page.locator("[data-testid='stMarkdownContainer']")
                .filter(has_text="same-class mass").filter(has_text="entropy").all_inner_texts()]

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / name))


def two_cells_of_different_classes(reference) -> list[tuple[int, int]]:
    """Two cells with different predicted classes and a clear argmax (no near-tie to flip)."""
    gh, gw = reference["result"].grid_size
    chosen, classes = [], set()
    for cell in np.random.default_rng(0).permutation(gh * gw):
        row = dm.attention_row(reference["query"], reference["key"], int(cell))
        top = np.sort(row)[-2:]
        if reference["cells"][cell] not in classes and top[1] - top[0] > 1e-3:
            chosen.append(divmod(int(cell), gw))
            classes.add(reference["cells"][cell])
        if len(chosen) == 2:
            return chosen
    raise AssertionError("no two cells of different classes")


def test_rows_display_modes_regions_and_the_reverse_view_match_python(app_server, browser, reference):
    result = reference["result"]
    grid = result.grid_size
    view = View(browser, app_server)
    view.shot("attention_first_screen_1600x1000.png")
    box = view.canvas.bounding_box()
    assert box["y"] + box["height"] <= 1000, "the interactive image is not on the first screen"

    for cell in two_cells_of_different_classes(reference):
        view.hover(cell, grid)
        x, y = (int((cell[1] + 0.5) * result.image_size[1] / grid[1]), int((cell[0] + 0.5) * result.image_size[0] / grid[0]))
        assert result.pixel_to_cell(x, y) == cell
        (row,) = result.rows([(x, y)])
        row = row.ravel()
        assert view.attr("kind") == "row"
        assert view.attr("argmax") == "%d,%d" % divmod(int(row.argmax()), grid[1])
        assert float(view.attr("checksum")) == pytest.approx(dm.checksum(row), abs=1e-3)
        assert float(view.attr("max")) == pytest.approx(row.max(), abs=1e-3)
        assert float(view.attr("compute-ms")) < 1000
        assert reference["classes"][reference["cells"][cell[0] * grid[1] + cell[1]]] in \
            view.page.locator("#readout").inner_text()

    # display modes: the JS shows what display_modes computes on the same row
    cell = (grid[0] // 2, grid[1] // 3)
    flat = cell[0] * grid[1] + cell[1]
    row = dm.attention_row(reference["query"], reference["key"], flat)
    for mode, label in [("specific", "Query-specific"), ("relative", "Relative to uniform"),
                        ("log", "Log scale"), ("mass", "Smallest set")]:
        view.choose("Display", dm.MODES[mode])
        view.hover(cell, grid)
        view.wait_attr("mode", mode)
        shown, lo, hi = dm.display(row, mode, baseline=reference["mean_row"], fraction=0.9)
        assert view.attr("mode") == mode
        assert float(view.attr("display-checksum")) == pytest.approx(dm.checksum(shown), rel=1e-3, abs=1e-4)
        assert float(view.attr("vmax")) == pytest.approx(hi, rel=1e-3, abs=1e-6)
        if mode == "mass":
            assert abs(int(view.attr("mass-cells")) - int(np.isfinite(shown).sum())) <= 1
        if mode == "specific":
            view.shot("attention_query_specific.png")
    view.choose("Display", dm.MODES["raw"])

    # a box query: the mean of the rows inside it
    start, end = (10, 12), (14, 20)
    view.page.mouse.move(*view.position(start, grid))
    view.page.mouse.down()
    view.page.mouse.move(*view.position(end, grid), steps=6)
    view.page.mouse.up()
    view.wait_attr("kind", "region-row")
    assert view.attr("region") == "10,12,14,20"
    expected = dm.region_mean(reference["query"], reference["key"], dm.region_cells((*start, *end), grid))
    assert float(view.attr("checksum")) == pytest.approx(dm.checksum(expected), abs=1e-3)
    assert view.attr("argmax") == "%d,%d" % divmod(int(expected.argmax()), grid[1])
    view.shot("attention_box_query.png")
    view.page.keyboard.press("Escape")
    view.wait_attr("kind", "none")

    # the reverse view: a column of the explicit N x N matrix
    energy = reference["query"].astype(np.float64) @ reference["key"].astype(np.float64).T
    matrix = np.exp(energy - energy.max(axis=1, keepdims=True))
    matrix /= matrix.sum(axis=1, keepdims=True)
    view.choose("Map", "Who looks here (column)")
    target = (30, 40)
    view.hover(target, grid)
    column = matrix[:, target[0] * grid[1] + target[1]]
    assert view.attr("kind") == "column"
    assert float(view.attr("checksum")) == pytest.approx(dm.checksum(column), abs=1e-3)
    assert view.attr("argmax") == "%d,%d" % divmod(int(column.argmax()), grid[1])
    view.shot("attention_reverse_view.png")

    # arrow keys move the query one cell
    view.page.keyboard.press("ArrowRight")
    view.wait_attr("query-cell", f"{target[0]},{target[1] + 1}")
    view.choose("Map", "Where it looks (row)")
    view.context.close()


def test_pins_the_url_round_trip_and_isolated_sessions(app_server, browser, reference):
    result = reference["result"]
    grid = result.grid_size
    first = View(browser, app_server, 1280, 800)
    box = first.canvas.bounding_box()
    assert box["y"] + box["height"] <= 800, "the interactive image is not on the first screen at 1280x800"
    first.shot("attention_first_screen_1280x800.png")
    for count, cell in enumerate([(8, 10), (35, 45)], start=1):
        first.hover(cell, grid)
        started = time.perf_counter()
        first.page.mouse.click(*first.position(cell, grid))
        cards = first.pinned_cards(count)
        first.wait_attr("pinned-count", str(count))
        assert time.perf_counter() - started < 30
    x, y = map(int, re.search(r"\((\d+), (\d+)\)", cards[1]).groups())
    assert result.pixel_to_cell(x, y) == (35, 45)
    (row,) = result.rows([(x, y)])
    assert float(first.attr("pinned-checksums").split(";")[1]) == pytest.approx(dm.checksum(row.ravel()), abs=1e-3)
    # the statistics the view shows at once equal Python's (the cards that follow the rerun)
    points = [tuple(map(int, re.search(r"\((\d+), (\d+)\)", card).groups())) for card in cards]
    expected = point_statistics(result, points, result.rows(points), reference["classes"])
    for shown, stats in zip(first.attr("pinned-stats").split(";"), expected):
        entropy, same, class_id, top = shown.split(",")
        assert float(entropy) == pytest.approx(stats.entropy_bits, abs=1e-3)
        assert float(same) == pytest.approx(stats.same_class_share, abs=1e-4)
        assert (int(class_id), int(top)) == (stats.class_id, stats.top_class_id)
    first.page.wait_for_function("() => location.search.includes('points=')", timeout=WAIT_MS)
    shared = first.page.url
    # a page switch and back remounts the view: it takes the payload from its cache (or asks
    # Python for it again) and shows the same points
    first.page.get_by_role("link", name="Channel attention").click()
    first.page.get_by_role("link", name="DANet inspector").click()
    first.wait_attr("ready", "1")
    first.wait_attr("pinned-count", "2")
    assert first.pinned_cards(2) == cards
    assert "image=" in shared

    # another browser context: no points of its own...
    second = View(browser, app_server)
    assert second.attr("pinned-count") == "0"
    assert "0 points" in second.page.locator("[data-testid='stMarkdownContainer']").filter(
        has_text="pinned").first.inner_text()
    second.context.close()
    # ...and the shared link restores the first session's points
    third = View(browser, shared)
    assert third.pinned_cards(2) == cards
    third.wait_attr("pinned-count", "2")
    third.context.close()
    assert first.pinned_cards(2) == cards                          # the first session is unchanged
    first.context.close()
