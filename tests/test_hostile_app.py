"""The app under load: one bad upload never takes another session down, memory stays bounded.

* Each bad upload (a corrupt checkpoint, hostile pickles from ``helpers_hostile``'s generators, a
  valid 3,000-class model on an image too large for its results, a truncated image, a
  progressive-JPEG bomb) shows exactly one one-line ``st.error`` in the uploading session only;
  a second session keeps its points, runs no new forward and keeps working.
* A valid 3,000-class model on a small image works, and its sidebar legend is bounded.
* 30 distinct uploads (models and results of a 200-class model) keep the byte-bounded caches
  within their budgets and the process RSS (after gc + ``malloc_trim``) within ``RSS_CEILING_MB``.
* A real ``streamlit run`` server answers ``/_stcore/health`` in under a second, every time,
  while a chromium session uploads a hash-bomb pickle and an 8 MP progressive JPEG at the
  decode-time limit (slow, browser).

Run ``python tests/test_hostile_app.py`` for the table of cases in docs/hardening.md.
"""
from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from conftest import make_tiny_model, save_tiny
from danet.checkpoints import isolated
from danet_app import budget, sidebar
from danet_app.state import FORWARDS
from helpers_app import errors, png, point_cards
from helpers_browser import CHROMIUM, launch_chromium, streamlit_server
from helpers_hostile import BYTEARRAY_PICKLE, hash_bomb_pickle, progressive_jpeg, zip_with_pickle

pytestmark = [pytest.mark.app, pytest.mark.fuzz]

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
TIMEOUT = 180
CROP = (96, 128)                   # (H, W) of the good image
RSS_CEILING_MB = 150               # growth allowed over 25 distinct uploads after a 5-upload warm-up


# ---- inputs -----------------------------------------------------------------------------------
def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def files(tiny_camvid_checkpoint, tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("hostile_app")
    many = save_tiny(make_tiny_model(3000, head_channels=8), folder / "classes3000.safetensors",
                     dtype=torch.float16)
    return {"tiny.safetensors": tiny_camvid_checkpoint.read_bytes(), "crop.png": png(noise(*CROP)),
            "classes3000.safetensors": many.read_bytes(), "small.png": png(noise(48, 64, 1)),
            "photo.png": png(noise(480, 640, 2))}


# name -> (uploader key, file name, bytes (from ``files``), text the error must hold)
CASES = {
    "corrupt checkpoint": ("checkpoint_upload", "corrupt.safetensors",
                           lambda f: f["tiny.safetensors"][:4000], "Could not load `corrupt.safetensors`"),
    "pickle: bytearray(2e9) in 32 bytes (zip)": (
        "checkpoint_upload", "alloc.pth", lambda f: zip_with_pickle(BYTEARRAY_PICKLE),
        "Could not load `alloc.pth`: alloc.pth could not be read safely (needed more than"),
    "pickle: hash bomb, 60k colliding keys": (
        "checkpoint_upload", "bomb.pth", lambda f: zip_with_pickle(hash_bomb_pickle()),
        "Could not load `bomb.pth`: bomb.pth could not be read safely (used more than 3 s of CPU time)"),
    "3,000-class model, 640x480 image": (
        "checkpoint_upload", "classes3000.safetensors", lambda f: f["classes3000.safetensors"],
        "Not run: the result for a 640x480 image with 3,000 classes would hold"),
    "truncated image": ("image_upload", "cut.png", lambda f: f["crop.png"][:300],
                        "Could not use `cut.png`: the upload is truncated"),
    "progressive JPEG bomb, 5,000 scans": (
        "image_upload", "scans.jpg", lambda f: progressive_jpeg(5000),
        "Could not use `scans.jpg`: the upload is a JPEG with 5,000 scans"),
}
SLOW = {"pickle: hash bomb, 60k colliding keys"}


@pytest.fixture
def tight_limits(monkeypatch):
    """The sandbox's CPU limit lowered as in test_hostile (a hash bomb stops after 3 s, not 30 s)."""
    monkeypatch.setattr(isolated, "CPU_LIMIT_S", 3)
    monkeypatch.setattr(isolated, "WALL_LIMIT_S", 30)


# ---- sessions -----------------------------------------------------------------------------------
def session(model: tuple[str, bytes] | None = None, image: tuple[str, bytes] | None = None) -> AppTest:
    """A fresh session with both sources on "upload" (no default-model forward first)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["model_source"] = "Upload a checkpoint"
    at.session_state["image_source"] = "Upload an image"
    at.run()
    if model is not None:
        upload(at, "checkpoint_upload", *model)
    if image is not None:
        upload(at, "image_upload", *image)
    return at


def upload(at: AppTest, key: str, name: str, data: bytes) -> AppTest:
    at.sidebar.file_uploader(key=key).set_value((name, data, "application/octet-stream")).run()
    return at


def victim(files) -> AppTest:
    """A session working on the tiny model and the crop, with two points pinned."""
    at = session(("tiny.safetensors", files["tiny.safetensors"]), ("crop.png", files["crop.png"]))
    at.session_state["points"] = [(10, 10), (100, 60)]
    at.run()
    assert not at.exception and errors(at) == [] and len(point_cards(at)) == 2
    return at


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.slow] if c in SLOW else [])
                                  for c in CASES])
def test_a_bad_upload_errs_only_in_its_own_session(case, files, tight_limits):
    key, name, make, expected = CASES[case]
    first = victim(files)
    forwards = FORWARDS.total
    # the attacker: a good counterpart for the other slot, then the bad file
    if key == "checkpoint_upload":
        other_image = files["photo.png"] if "3,000" in case else files["crop.png"]
        attacker = session(image=("other.png", other_image))
    else:
        attacker = session(model=("tiny.safetensors", files["tiny.safetensors"]))
    started = time.perf_counter()
    upload(attacker, key, name, make(files))
    seconds = time.perf_counter() - started

    shown = errors(attacker)
    assert not attacker.exception
    assert len(shown) == 1 and expected in shown[0], shown
    assert "\n" not in shown[0] and "Traceback" not in shown[0]
    attacker.run()                                            # a rerun: the same one line, not re-parsed
    assert errors(attacker) == shown
    if "3,000" in case:
        assert FORWARDS.total == forwards, "a result over the byte budget must be refused before the forward"

    first.run()                                               # the other session is untouched ...
    assert not first.exception and errors(first) == []
    assert first.session_state["points"] == [(10, 10), (100, 60)] and len(point_cards(first)) == 2
    first.session_state["points"] = [(10, 10), (100, 60), (64, 40)]
    first.run()                                               # ... and keeps working, from its cache
    assert not first.exception and len(point_cards(first)) == 3
    assert "(cached)" in first.caption[0].value
    print(f"\n{case}: {seconds:.2f} s, error: {shown[0][:140]}")


def hostile_records(sha: str) -> dict[str, tuple[bytes, str]]:
    """name -> (the record's bytes, what its one-line notice must say); ``sha`` is the image's."""
    def record(points: str, size: str = '{"height": 96, "width": 128}') -> bytes:
        return ('{"tool": "danet-lens", "image": {"name": "crop.png", "sha256": "%s", "size": %s}, "points": %s}'
                % (sha, size, points)).encode()

    return {
        "nested 100,000 deep": (record("[" * 100_000 + "]" * 100_000), "nests 100,001 levels deep"),
        "an infinite x": (record('[{"x": 1e400, "y": 3}]'), "a number out of range (1e400)"),
        "NaN": (record('[{"x": NaN, "y": 3}]'), "holds NaN"),
        "x a string": (record('[{"x": "5", "y": 3}]'), "point 1's x is \"5\", not a whole number"),
        "points an object": (record('{"x": 5}'), "points are {\"x\": 5}, not a list"),
        "size infinite": (record("[]", '{"height": 1e999, "width": 128}'), "a number out of range"),
        "10^6 points": (record("[" + ",".join(['{"x":1,"y":2}'] * 10**6) + "]"), "values, more than the 1,000,000"),
        "20 points": (record(json.dumps([{"x": i, "y": 2} for i in range(20)])), "holds 20 points; a page keeps at most 8"),
        "a point outside": (record('[{"x": 128, "y": 3}]'), "point (128, 3) lies outside the 128x96 image"),
    }


@pytest.mark.slow
def test_a_hostile_record_is_one_notice_and_keeps_the_points(files):
    """Load a record: deep, non-finite, wrong types, out-of-range, 10^6 points: one line, no page error."""
    at = victim(files)
    sha = hashlib.sha256(files["crop.png"]).hexdigest()
    for name, (data, expected) in hostile_records(sha).items():
        at.file_uploader(key="record_upload").set_value((f"{name}.json", data, "application/json")).run()
        assert not at.exception, (name, at.exception)
        notices = [w.value for w in at.warning if "Record not loaded" in w.value]
        assert len(notices) == 1 and expected in notices[0] and "\n" not in notices[0], (name, notices)
        assert at.session_state["points"] == [(10, 10), (100, 60)], name
    good = json.dumps({"tool": "danet-lens", "image": {"sha256": sha}, "points": [{"x": 7, "y": 8}]}).encode()
    at.file_uploader(key="record_upload").set_value(("good.json", good, "application/json")).run()
    assert not at.exception and at.session_state["points"] == [(7, 8)]


def test_a_3000_class_model_on_a_small_image_works_with_a_bounded_legend(files):
    at = session(("classes3000.safetensors", files["classes3000.safetensors"]), ("small.png", files["small.png"]))
    assert not at.exception and errors(at) == [], errors(at)
    assert at.title[0].value == "DANet inspector"
    assert any("3,000 classes" in c.value and f"{sidebar.LEGEND_ROWS} shown" in c.value for c in at.sidebar.caption)
    at.sidebar.text_input(key="legend_query").set_value("class 29").run()     # search narrows the legend
    assert not at.exception
    matches = sidebar.matching_classes(at.session_state["selection"].classes, "class 29")
    assert any(f"{min(len(matches), sidebar.LEGEND_ROWS)} shown" in c.value for c in at.sidebar.caption)


def test_legend_helpers_bound_names_and_search():
    assert sidebar.short_name("x" * 200_000) == "x" * (sidebar.LEGEND_NAME_CHARS - 1) + "…"
    assert sidebar.short_name("  road\n marking ") == "road marking"
    classes = tuple(f"class {i}" for i in range(3000))
    assert sidebar.matching_classes(classes, "") == list(range(3000))
    assert sidebar.matching_classes(classes, "2999") == [2999]
    assert sidebar.matching_classes(classes, "CLASS 123") == [123, *range(1230, 1240)]


# ---- the byte budget itself ---------------------------------------------------------------------
def test_byte_budget_cache_evicts_by_bytes_refuses_oversize_and_computes_once():
    cache = budget.ByteBudgetCache(100, "thing")
    for key in "abcd":
        cache.get(key, lambda: np.zeros(40, np.uint8), budget.nbytes)
    assert len(cache) == 2 and cache.total == 80 and "a" not in cache and cache.evicted == 2
    with pytest.raises(budget.InputError, match="would hold .* more than"):
        cache.get("big", lambda: pytest.fail("must be refused before computing"), budget.nbytes, expected_bytes=101)
    with pytest.raises(budget.InputError):
        cache.get("big", lambda: np.zeros(101, np.uint8), budget.nbytes)          # found out afterwards
    assert "big" not in cache and cache.total == 80

    calls, gate = [], threading.Event()

    def slow():
        calls.append(1)
        gate.wait(5)
        return np.zeros(10, np.uint8)

    threads = [threading.Thread(target=cache.get, args=("shared", slow, budget.nbytes)) for _ in range(4)]
    for thread in threads:
        thread.start()
    other = cache.get("other", lambda: np.zeros(5, np.uint8), budget.nbytes)   # not blocked by "shared"
    assert other.shape == (5,)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert calls == [1]                                       # one computation for four callers


def test_result_budget_refusal_names_a_size_that_fits():
    cache = budget.ByteBudgetCache(budget.RESULT_BUDGET, "forward result")
    largest = budget.max_megapixels(150, cache.budget)
    side = int((largest * 1e6) ** 0.5)
    assert budget.result_bytes_estimate(150, side, side) <= cache.budget
    bigger = int((largest * 1.05e6) ** 0.5) + 1
    assert budget.result_bytes_estimate(150, bigger, bigger) > cache.budget
    if "DANET_APP_RESULT_CACHE_MB" not in os.environ:     # the figures docs/hardening.md states
        assert budget.result_bytes_estimate(150, 1000, 1000) <= cache.budget      # ADE20K at 1 MP: 1.8 GB
        assert 0.05 < budget.max_megapixels(3000, cache.budget) < 0.06            # 3,000 classes: ~0.06 MP


# ---- memory over many uploads -------------------------------------------------------------------
def rss_mb() -> float:
    gc.collect()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return psutil.Process().memory_info().rss / 2**20


@pytest.mark.slow
def test_memory_after_30_distinct_uploads_stays_bounded(files, tmp_path, monkeypatch):
    """30 different 200-class models on 30 different images: each result holds ~30 MB of logits.
    Count-bounded caches (8 results, 3 models) held ~240 MB of results alone; the byte budgets
    (lowered here to 64 MB of results, 48 MB of models) hold at most that."""
    monkeypatch.setattr(budget, "RESULT_BUDGET", 64 * 2**20)
    monkeypatch.setattr(budget, "MODEL_BUDGET", 48 * 2**20)
    st.cache_resource.clear()
    st.cache_data.clear()
    model = make_tiny_model(200, head_channels=8)
    at = session()
    before = FORWARDS.total
    for index in range(30):
        if index == 5:
            start = rss_mb()
        checkpoint = save_tiny(model, tmp_path / f"m{index}.safetensors", dtype=torch.float16, upload=index)
        upload(at, "checkpoint_upload", f"m{index}.safetensors", checkpoint.read_bytes())
        upload(at, "image_upload", f"i{index}.png", png(noise(*CROP, seed=100 + index)))
        checkpoint.unlink()
        assert not at.exception and errors(at) == [], (index, errors(at))
    end = rss_mb()
    caches = sidebar.app_caches()
    assert FORWARDS.total - before >= 30
    for kind in ("result", "model"):
        assert caches[kind].total <= caches[kind].budget, kind
    assert caches["result"].evicted >= 25 and caches["model"].evicted >= 20
    growth = end - start
    print(f"\nRSS {start:.0f} MB after 5 uploads, {end:.0f} MB after 30: {growth:+.0f} MB; results cache "
          f"{caches['result'].total / 2**20:.0f} MB in {len(caches['result'])} entries, models "
          f"{caches['model'].total / 2**20:.0f} MB in {len(caches['model'])}")
    assert growth < RSS_CEILING_MB, f"RSS grew by {growth:.0f} MB over 25 distinct uploads"
    st.cache_resource.clear()


# ---- a real server stays responsive -------------------------------------------------------------
def health_seconds(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=10) as response:
        assert response.read().strip() == b"ok"
    return time.perf_counter() - started


class HealthProbe:
    """Asks the health endpoint every 0.2 s in a thread; keeps every answer's latency."""

    def __init__(self, url: str):
        self.url, self.latencies, self.times, self.failures = url, [], [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            try:
                self.latencies.append(health_seconds(self.url))
                self.times.append(time.perf_counter())
            except Exception as error:  # noqa: BLE001 - recorded, asserted on by the test
                self.failures.append(repr(error))
            self.stop.wait(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(15)


@pytest.fixture
def server(tmp_path):
    with streamlit_server(tmp_path / "streamlit.log") as (url, process):
        yield url, process


def upload_in_browser(page, radio: str, label: str, name: str, data: bytes) -> None:
    """Choose ``radio`` in the sidebar, then give the uploader labelled ``label`` the file."""
    sidebar_ = page.locator('[data-testid="stSidebar"]')
    sidebar_.get_by_text(radio, exact=True).click()
    uploader = sidebar_.locator('[data-testid="stFileUploader"]', has_text=label).locator('input[type="file"]')
    uploader.wait_for(state="attached", timeout=120_000)
    uploader.set_input_files(files=[{"name": name, "mimeType": "application/octet-stream", "buffer": data}])


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Debian chromium at {CHROMIUM}")
def test_health_answers_within_a_second_while_hostile_uploads_are_processed(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, process = server
    hostile = {"bomb.pth": zip_with_pickle(hash_bomb_pickle()),       # seconds of CPU in the child
               "slow.jpg": progressive_jpeg(250, size=2816)}      # 8 MP x 250 scans: just inside the rules
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1200}).new_page()
            page.goto(url)
            page.locator('[data-testid="stSidebar"]').get_by_text("Upload a checkpoint", exact=True).wait_for(
                timeout=240_000)
            with HealthProbe(url) as probe:
                started = time.perf_counter()
                upload_in_browser(page, "Upload a checkpoint", "Checkpoint", "bomb.pth", hostile["bomb.pth"])
                page.locator('[data-testid="stAlertContentError"]', has_text="Could not load bomb.pth"
                             ).first.wait_for(timeout=180_000)
                bomb_seconds = time.perf_counter() - started
                started = time.perf_counter()
                page.locator('[data-testid="stSidebar"]').get_by_text("Default (CamVid, MobileNetV2)").click()
                upload_in_browser(page, "Upload an image", "Image (", "slow.jpg", hostile["slow.jpg"])
                page.locator('[data-testid="stCaptionContainer"]', has_text="slow.jpg").first.wait_for(
                    timeout=240_000)                          # decoded, and the forward ran on it
                jpeg_seconds = time.perf_counter() - started
        except Exception:
            page.screenshot(path=str(ROOT / "test-artifacts" / "hostile-app-failure.png"))
            raise
        finally:
            browser.close()
    assert process.poll() is None, "the server died"
    assert probe.failures == [], probe.failures[:3]
    latencies = np.array(probe.latencies)
    print(f"\nhash bomb refused after {bomb_seconds:.1f} s, slow JPEG handled in {jpeg_seconds:.1f} s; "
          f"{len(latencies)} health checks meanwhile: median {np.median(latencies) * 1000:.0f} ms, "
          f"95th percentile {np.percentile(latencies, 95) * 1000:.0f} ms, max {latencies.max() * 1000:.0f} ms")
    slow = [(round(t - probe.times[0], 1), round(lat, 2)) for t, lat in zip(probe.times, latencies) if lat > 0.3]
    print(f"phases: bomb 0-{bomb_seconds:.1f} s, jpeg then for {jpeg_seconds:.1f} s; answers over 0.3 s: {slow}")
    assert len(latencies) >= 10 and np.percentile(latencies, 99) < 1.0
    # every answer within 1 s on a machine with cores to spare; on an oversubscribed one (load
    # average above the core count) a single answer waited for a CPU up to ~1.2 s (docs/hardening.md)
    assert latencies.max() < (1.0 if os.getloadavg()[0] < os.cpu_count() else 2.0)


if __name__ == "__main__":           # the table for docs/hardening.md
    sys.exit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"]))
