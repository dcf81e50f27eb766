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
import re
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import streamlit as st
import torch
from conftest import make_tiny_model, save_tiny
from helpers_app import errors, png, point_cards, rendered
from helpers_browser import CHROMIUM, launch_chromium, streamlit_server
from helpers_hostile import (
    BYTEARRAY_PICKLE,
    hash_bomb_pickle,
    progressive_jpeg,
    zip_with_pickle,
)
from helpers_markup import PAYLOADS, audit, normalised, short_payloads
from streamlit.testing.v1 import AppTest

from danet.checkpoints import ModelMeta, isolated, save_model
from danet.data.palettes import DatasetInfo
from danet.errors import DanetError, InputError
from danet_app import attention_view, budget, sidebar
from danet_app.literal import ECHO_LIMIT, file_stem, plain, visible
from danet_app.state import FORWARDS, MAX_POINTS, points_from_record, read_points_param

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
        notices = [rendered(w.value) for w in at.warning if "Record not loaded" in w.value]
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


# ---- the attention view's payload ------------------------------------------------------------------
def test_a_view_payload_too_large_for_a_browser_is_refused_before_it_is_built():
    # the case: d = 16,384 on a 480x360 image (2,700 cells) would send 236 MB (225 MiB)
    assert 235e6 < attention_view.payload_bytes_estimate(2700, 16384, 11) < 237e6
    with pytest.raises(InputError, match=r"would send 225 MB .* d = 16,384 on 2,700 cells.*more than the 48 MB") as error:
        attention_view.refuse_large_payload(2700, 16384, 11, 64.0)
    assert "Downscale above" in str(error.value) and "\n" not in str(error.value)
    attention_view.refuse_large_payload(2700, 16, 11, 64.0)           # the default model: 0.6 MB
    with pytest.raises(InputError, match="too wide for the interactive view at any image size"):
        attention_view.refuse_large_payload(2700, 16384, 11, 64.0, limit=2**20)


def test_the_app_refuses_a_wide_pam_view_in_one_line_and_keeps_the_rest(files, tmp_path, monkeypatch):
    wide = save_tiny(make_tiny_model(11, head_channels=8, key_channels=4096), tmp_path / "wide.safetensors",
                     dtype=torch.float16)
    at = session(("wide.safetensors", wide.read_bytes()), ("crop.png", files["crop.png"]))
    assert not at.exception and errors(at) == []
    # within the limit the payload is kept, counted by its bytes (192 cells x 4,096 x 2 x 2 = 4 MB)
    key = ("view", at.session_state["selection"].result_key)
    cache = attention_view.payload_cache()
    assert cache.budget == attention_view.PAYLOAD_CACHE_BYTES and key in cache
    assert 4 * 2**20 < cache._entries[key][1] < 6 * 2**20
    monkeypatch.setattr(attention_view, "MAX_PAYLOAD_BYTES", 2 * 2**20)
    at.run()
    assert not at.exception
    (shown,) = errors(at)
    assert shown.startswith("The interactive view is not shown: the attention view for this image would send 4 MB")
    assert "d = 4,096 on 192 cells" in shown
    assert len(at.image) >= 4                                     # the predictions tab is still drawn


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


# ---- markup from strangers stays text (issue 26) --------------------------------------------------
def markup_checkpoint(path: Path) -> bytes:
    """A valid model whose every outside string is a payload: class names, the dataset name, the
    layout name and the card fields (``extra``: training data, licence, per-class IoU, ...)."""
    names = tuple(short_payloads(200).values())
    model = make_tiny_model(len(names), head_channels=8)
    dataset = DatasetInfo(PAYLOADS["link"], names, tuple((17 * i % 256, 40, 200) for i in range(len(names))))
    extra = {"training_data": PAYLOADS["html"], "license": PAYLOADS["autolinks"],
             "training_command": PAYLOADS["very long"], "evaluated_with": PAYLOADS["streamlit markup"],
             "training_history": PAYLOADS["control characters"], "val_iou": {n: 50.0 for n in names},
             "val_miou": 10.0}
    save_model(model, ModelMeta(config=model.config, dataset=dataset, layout=PAYLOADS["emphasis"], extra=extra),
               path, dtype=torch.float16)
    return path.read_bytes()


def markup_record(name: str, sha256: str = "0" * 64, points: list | None = None) -> bytes:
    return json.dumps({"tool": "danet-lens", "image": {"sha256": sha256, "name": name},
                       "points": points if points is not None else [{"x": 1, "y": 1}]}).encode()


def split_code_spans(source: str) -> tuple[str, list[str]]:
    """(the source without its code spans, the spans' texts); escaped backticks are no spans."""
    outside, spans, index = [], [], 0
    while index < len(source):
        char = source[index]
        if char == "\\":
            outside.append(source[index:index + 2])
            index += 2
            continue
        if char == "`":
            run = re.match(r"`+", source[index:]).group()
            close = re.search(rf"(?<!`){run}(?!`)", source[index + len(run):])
            if close:
                body = source[index + len(run): index + len(run) + close.start()]
                if body.startswith(" ") and body.endswith(" ") and body.strip(" "):
                    body = body[1:-1]
                spans.append(body)
                outside.append("\0CODE\0")
                index += len(run) + close.end()
                continue
        outside.append(char)
        index += 1
    return "".join(outside), spans


def shown_text(source: str) -> str:
    """What a markdown source the app wrote shows: its code spans' text, the rest unescaped."""
    outside, spans = split_code_spans(source)
    outside = re.sub(r"(?<!\\)\*\*", "", outside)                 # the app's own bold
    pieces = rendered(outside).split("\0CODE\0")
    return "".join(piece + (spans[i] if i < len(spans) else "") for i, piece in enumerate(pieces))


def markdown_sources(at: AppTest) -> list[str]:
    """Every markdown-rendered string on the page (main area and sidebar)."""
    kinds = (at.markdown, at.caption, at.info, at.warning, at.error, at.success, at.title, at.subheader)
    return [e.value for kind in kinds for e in kind] + [m.label for m in at.metric]


def assert_no_raw_markup(at: AppTest, payloads: dict[str, str]) -> None:
    """No payload's markdown reaches the page unescaped (code spans aside: they are literal)."""
    for source in markdown_sources(at):
        outside_code = split_code_spans(source)[0]
        for name, text in payloads.items():
            raw = visible(text)[:60]
            if re.search(r"[!-/:-@\[-`{-~]", raw):
                assert raw not in outside_code, (name, source[:200])
        assert "\u202e" not in source and "\x00" not in source


def assert_shown(at: AppTest, expected: str) -> None:
    """``expected`` (outside text as ``plain`` shows it) is on the page, literally."""
    shown = [shown_text(source) for source in markdown_sources(at)]
    assert any(expected in text for text in shown), (expected[:80], [t[:120] for t in shown])


def notice(at: AppTest) -> str:
    """The one point notice the inspector shows (URL points, a loaded record)."""
    (only,) = [shown_text(w.value) for w in at.warning if w.value.startswith(("Points in", "Loaded", "Record", "The"))]
    return only


@pytest.fixture(scope="module")
def crop_session_parts(files):
    return ("tiny.safetensors", files["tiny.safetensors"]), ("crop.png", files["crop.png"])


@pytest.mark.slow
def test_markup_in_url_points_is_shown_as_text(files):
    image_tag = hashlib.sha256(files["crop.png"]).hexdigest()[:12]
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["model_source"] = "Upload a checkpoint"
    at.session_state["image_source"] = "Upload an image"
    at.query_params["image"] = image_tag
    at.query_params["points"] = PAYLOADS["link"]
    at.run()
    upload(at, "checkpoint_upload", "tiny.safetensors", files["tiny.safetensors"])
    upload(at, "image_upload", "crop.png", files["crop.png"])
    for name, text in PAYLOADS.items():
        at.session_state["url_restored"] = set()
        at.query_params["image"] = image_tag
        at.query_params["points"] = text
        at.run()
        assert not at.exception
        with pytest.raises(DanetError) as error:
            read_points_param(text, CROP)
        assert notice(at) == f"Points in the URL not used: {plain(str(error.value))}", name
        assert_no_raw_markup(at, PAYLOADS)
        assert len(notice(at)) < ECHO_LIMIT + 80                        # the 100,000-character one is cut


@pytest.mark.slow
def test_markup_in_record_fields_and_file_names_is_shown_as_text(files):
    at = session(("tiny.safetensors", files["tiny.safetensors"]), ("crop.png", files["crop.png"]))
    sha = hashlib.sha256(files["crop.png"]).hexdigest()
    for name, text in PAYLOADS.items():
        at.file_uploader(key="record_upload").set_value((f"{name}.json", markup_record(text), "application/json")).run()
        assert not at.exception
        assert notice(at).startswith("Record not loaded: the record is for another image (")
        with pytest.raises(InputError) as message:
            points_from_record(markup_record(text), sha, CROP)
        assert notice(at) == f"Record not loaded: {plain(str(message.value))}", name
        assert_no_raw_markup(at, PAYLOADS)
    # a record's file name, and an image's, are outside text too (Streamlit itself refuses a file
    # name with a NUL byte, before the app sees it: that session alone gets its error page)
    for name, text in short_payloads(200).items():
        text = text.replace("\x00", "")
        at.file_uploader(key="record_upload").set_value((text + ".json", markup_record("x", sha), "application/json")
                                                        ).run()
        assert not at.exception, at.exception[0].stack_trace
        assert notice(at) == f"Loaded 1 points from {plain(text + '.json', 120)}.", name
        assert_no_raw_markup(at, PAYLOADS)
    upload(at, "image_upload", PAYLOADS["html"] + ".png", files["crop.png"])
    assert not at.exception and errors(at) == []
    assert_shown(at, plain(PAYLOADS["html"] + ".png"))
    assert_no_raw_markup(at, PAYLOADS)


def test_markup_in_a_checkpoint_is_shown_as_text(files, tmp_path):
    data = markup_checkpoint(tmp_path / "markup.safetensors")
    at = session((PAYLOADS["image"] + ".safetensors", data), ("crop.png", files["crop.png"]))
    assert not at.exception and errors(at) == [], errors(at)
    at.session_state["points"] = [(10, 10), (100, 60)]
    at.run()
    cards = point_cards(at)
    assert len(cards) == 2
    stats = at.session_state["stats_cache"]
    for card, point in zip(cards, [(10, 10), (100, 60)]):
        assert f"class {plain(stats[point].class_name)}" in shown_text(card)
    assert_shown(at, f"dataset {plain(PAYLOADS['link'])}")
    assert_shown(at, f"layout {plain(PAYLOADS['emphasis'])}")
    assert_no_raw_markup(at, PAYLOADS)
    at.switch_page("app_pages/model.py").run()
    assert not at.exception and errors(at) == []
    assert_shown(at, f"{plain(PAYLOADS['link'])} classes and colours")
    assert_shown(at, f"Trained on: {plain(PAYLOADS['html'], 2000)}")
    assert_shown(at, f"Trained with: {plain(PAYLOADS['very long'], 2000)}")
    assert_shown(at, f"The weights: {plain(PAYLOADS['autolinks'], 2000)}")
    assert_no_raw_markup(at, PAYLOADS)
    facts = at.dataframe[0].value["value"]
    assert facts["source"] == plain(PAYLOADS["image"] + ".safetensors", 200)
    at.switch_page("app_pages/measures.py").run()
    assert not at.exception and errors(at) == []
    assert_no_raw_markup(at, PAYLOADS)
    # a file that cannot be loaded: its name in the error, shown literally
    bad = session((PAYLOADS["html"] + ".pth", b"not a checkpoint"))
    (shown,) = errors(bad)
    assert_no_raw_markup(bad, PAYLOADS)
    assert "\n" not in shown and shown_text(bad.error[0].value).startswith(f"Could not load {plain(PAYLOADS['html'] + '.pth', 120)}: ")


def test_url_points_beyond_the_limit_keep_the_first_and_say_so_and_records_refuse_in_one_line(files):
    """10,000 valid points in a link: the first 8 are kept, with a notice (10^5 never reach the app:
    the server answers 400 to a request line over 64 KB, see test_browser_ui.py). A record is
    read by ``danet.safety.records``, which refuses more than 8 points."""
    sha = hashlib.sha256(files["crop.png"]).hexdigest()
    at = session(("tiny.safetensors", files["tiny.safetensors"]), ("crop.png", files["crop.png"]))
    many = [{"x": i % CROP[1], "y": i // CROP[1] % CROP[0]} for i in range(100_000)]
    at.session_state["url_restored"] = set()
    at.query_params["image"] = sha[:12]
    at.query_params["points"] = ";".join(f"{p['x']},{p['y']}" for p in many[:10_000])
    at.run()
    assert not at.exception
    assert at.session_state["points"] == [(i, 0) for i in range(MAX_POINTS)]
    assert notice(at) == ("The URL holds 10,000 points; the first 8 are used (the inspector keeps at most 8 points "
                          "per image)")
    assert len(at.query_params["points"]) < 100                       # the link now carries those 8
    # hostile records in the page: one line each, no error page
    million = markup_record("x", sha, [{"x": 1, "y": 1}] * 1_000_000)
    for name, record in [("deep", b"[" * 100_000 + b"]" * 100_000), ("million", million),
                         ("infinite", markup_record("x", sha, [{"x": float("inf"), "y": 1}])),
                         ("huge number", markup_record("x", sha, [{"x": 10**400, "y": 1}])),
                         ("wrong type", markup_record("x", sha, [{"x": [1], "y": 1}])),
                         ("outside", markup_record("x", sha, [{"x": -1, "y": 1}]))]:
        at.file_uploader(key="record_upload").set_value((f"{name}.json", record, "application/json")).run()
        assert not at.exception, name
        shown = notice(at)
        assert shown.startswith("Record not loaded: ") and "\n" not in shown and len(shown) < 400, (name, shown)
    assert at.session_state["points"] == [(i, 0) for i in range(MAX_POINTS)]        # the URL's points, kept
    points, kept = read_points_param(";".join(f"{p['x']},{p['y']}" for p in many), CROP)
    assert points == [(i, 0) for i in range(MAX_POINTS)] and kept.startswith("The URL holds 100,000 points")
    assert read_points_param("1,1;2,2", CROP) == ([(1, 1), (2, 2)], None)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Debian chromium at {CHROMIUM}")
def test_no_outside_markup_reaches_the_page_in_a_real_browser(server, tmp_path, files):
    """Every channel in a real server and chromium: the URL, a record's field and file name, a
    checkpoint's file name, class names, dataset, layout and card fields, an image's file name.
    No foreign element, no link or source leaving the server, no request to the attacker's host,
    and each string shown literally."""
    sync_api = pytest.importorskip("playwright.sync_api")
    url, process = server
    sample = min((ROOT / "assets" / "samples").glob("*.png")).read_bytes()
    tag = hashlib.sha256(sample).hexdigest()[:12]
    checkpoint = markup_checkpoint(tmp_path / "markup.safetensors")
    names = list(short_payloads(200).values())
    evil_requests, problems = [], {}
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)

    def check(page, stage: str, expected: list[str]) -> None:
        found = audit(page, url, expected)
        page.screenshot(path=str(artifacts / f"markup_{stage}.png"), full_page=True)
        if found:
            problems[stage] = found

    def point_notice(page, prefix: str) -> None:
        page.locator("[data-testid='stAlertContainer']", has_text=prefix).first.wait_for(timeout=120_000)

    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1200}, accept_downloads=True).new_page()
            page.on("request", lambda r: None if r.url.startswith((url + "/", "data:", "blob:"))
                    else evil_requests.append(r.url))                 # nothing leaves the server
            # 1. the URL: ?points= with a link in it
            page.goto(f"{url}/?image={tag}&points={urllib.parse.quote(PAYLOADS['link'])}")
            point_notice(page, "Points in the URL not used")
            with pytest.raises(DanetError) as error:
                read_points_param(PAYLOADS["link"], (360, 480))
            check(page, "url", [f"Points in the URL not used: {plain(str(error.value))}"])
            # 2. a record: its image name, and its file name
            page.get_by_text("Downloads, and loading a record back").click()
            record_input = page.locator("[data-testid='stFileUploader']", has_text="Load the points").locator(
                "input[type='file']")
            record_input.set_input_files(files=[{"name": PAYLOADS["emphasis"] + ".json", "mimeType": "application/json",
                                                 "buffer": markup_record(PAYLOADS["html"])}])
            point_notice(page, "Record not loaded")
            with pytest.raises(InputError) as message:
                points_from_record(markup_record(PAYLOADS["html"]), hashlib.sha256(sample).hexdigest(), (360, 480))
            check(page, "record", [f"Record not loaded: {plain(str(message.value))}"])
            # 3. a checkpoint that cannot be loaded, named with markup
            upload_in_browser(page, "Upload a checkpoint", "Checkpoint", PAYLOADS["html"] + ".pth", b"not a checkpoint")
            page.locator("[data-testid='stAlertContentError']", has_text="Could not load").first.wait_for(
                timeout=120_000)
            check(page, "bad checkpoint", [f"Could not load {plain(PAYLOADS['html'] + '.pth', 120)}"])
            # 4. a checkpoint whose class names, dataset, layout and card are markup; an image named so
            upload_in_browser(page, "Upload a checkpoint", "Checkpoint", PAYLOADS["image"] + ".safetensors", checkpoint)
            page.locator("[data-testid='stSidebar']").get_by_text("classes · dataset").first.wait_for(timeout=120_000)
            image_name = PAYLOADS["link"] + ".png"
            upload_in_browser(page, "Upload an image", "Image (", image_name, sample)
            page.locator("[data-testid='stCaptionContainer']", has_text="forward").first.wait_for(timeout=120_000)
            view = page.locator("#danet-attention")
            deadline = time.monotonic() + 120
            while view.get_attribute("data-ready") != "1" or view.get_attribute("data-payload-id") is None:
                assert time.monotonic() < deadline, "the attention view never got its data"
                time.sleep(0.1)
            canvas = page.locator("#input-canvas")
            box = canvas.bounding_box()
            page.mouse.click(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.6)
            page.get_by_text(re.compile(r"^1 point pinned")).wait_for(timeout=120_000)
            map_box = page.locator("#map-canvas").bounding_box()
            page.mouse.move(map_box["x"] + map_box["width"] * 0.3, map_box["y"] + map_box["height"] * 0.3)
            page.locator("#readout").filter(has_text="under the cursor").wait_for(timeout=30_000)
            bolds = page.locator("#readout b, #pinned .stats b").all_inner_texts()
            shown_names = {normalised(plain(n, 80)) for n in names}
            named = [b for b in bolds if normalised(b) in shown_names]
            assert len(named) >= 2, bolds                    # the query's and the pin's class, as text
            check(page, "checkpoint", [f"dataset {plain(PAYLOADS['link'])}", f"layout {plain(PAYLOADS['emphasis'])}",
                                       plain(image_name)])
            button = page.locator("[data-testid='stDownloadButton']").get_by_text("Record (JSON)")
            if not button.is_visible():
                page.get_by_text("Downloads, and loading a record back").click()
            with page.expect_download(timeout=120_000) as download:
                button.click()
            assert download.value.suggested_filename == f"{file_stem(image_name)}_danet.json"
            # 5. the model page: dataset, card fields, licence
            page.locator("[data-testid='stSidebar']").get_by_text("Model details").click()
            page.get_by_text("Validation accuracy recorded with the weights").wait_for(timeout=120_000)
            page.get_by_text("The weights:").wait_for(timeout=60_000)
            check(page, "model page", [f"{plain(PAYLOADS['link'])} classes and colours",
                                       f"Trained on: {plain(PAYLOADS['html'], 2000)}",
                                       f"Evaluated with: {plain(PAYLOADS['streamlit markup'], 2000)}",
                                       f"The weights: {plain(PAYLOADS['autolinks'], 2000)}"])
            # 6. the measures page shows class names too (knockout reading, ablation table)
            page.locator("[data-testid='stSidebar']").get_by_text("Does attention matter?").click()
            page.get_by_text("Verdict:").first.wait_for(timeout=120_000)
            check(page, "measures page", [])
        finally:
            browser.close()
    (artifacts / "markup_problems.json").write_text(json.dumps(problems, indent=1))
    assert process.poll() is None, "the server died"
    assert problems == {}, problems
    assert evil_requests == []


if __name__ == "__main__":           # the table for docs/hardening.md
    sys.exit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"]))
