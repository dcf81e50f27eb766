"""Hardening of the Streamlit app (AppTest): bursts of clicks, files on disk, upload limits.

* 120 simulated clicks (each through ``danet_app.state.apply_click``, what the view's pin trigger
  calls, then a rerun) run the network once in all, keep at most ``MAX_POINTS`` rows per
  session, keep no old run of the page alive, and leave the process RSS (after ``malloc_trim``)
  flat after a warm-up.
* Uploading checkpoints (safetensors and a torch pickle), an image and a label map, clicking and
  visiting every page writes nothing outside the system temp dir, nothing in the working
  directory or the repository, and no copy of an uploaded checkpoint anywhere (``danet.load``
  reads uploads from memory).
  Writes are seen through a Python audit hook (``sys.addaudithook``: every ``open`` for writing,
  rename, mkdir, remove), cross-checked by a snapshot of the repository and the working directory.
* ``.streamlit/config.toml`` bounds uploads, and Streamlit reads the bound from it.
"""
from __future__ import annotations

import ctypes
import gc
import io
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import psutil
import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from conftest import save_tiny
from danet.models import create_model
from danet_app.state import FORWARDS, MAX_POINTS, apply_click
from helpers_app import errors, png, point_cards

pytestmark = pytest.mark.app

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
INSPECTOR, CHANNELS, MODEL = "app_pages/inspector.py", "app_pages/channels.py", "app_pages/model.py"
SCRIPTS = {APP, str(ROOT / INSPECTOR)}     # the entrypoint and the page that holds the clicks
TIMEOUT = 180
CROP = (96, 128)                        # (H, W) of the uploaded image
SHOWN_WIDTH = 610                       # the click image's displayed width in a wide layout


# ---- inputs -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uploads(tiny_camvid_model, tmp_path_factory) -> dict[str, bytes]:
    """Upload payloads: our .safetensors, the same weights as a torch.save .pth, an image, labels."""
    path = save_tiny(tiny_camvid_model, tmp_path_factory.mktemp("uploads") / "hardening_tiny.safetensors",
                     dtype=torch.float16)
    buffer = io.BytesIO()
    torch.save({"state_dict": {k: v.half() if v.is_floating_point() else v
                               for k, v in tiny_camvid_model.state_dict().items()}}, buffer)
    rng = np.random.default_rng(3)
    return {"hardening_tiny.safetensors": path.read_bytes(), "hardening_tiny.pth": buffer.getvalue(),
            "hardening_crop.png": png(rng.integers(0, 256, (*CROP, 3), dtype=np.uint8)),
            "hardening_labels.png": png(rng.integers(0, 11, CROP).astype(np.uint8))}


def click(at: AppTest, x: float, y: float) -> tuple[int, int] | None:
    """One click as the browser reports it (displayed pixels), through the app's click rule."""
    height, width = CROP
    shown_height = SHOWN_WIDTH * height / width
    value = {"x": x * SHOWN_WIDTH / width, "y": y * shown_height / height, "width": SHOWN_WIDTH,
             "height": round(shown_height), "unix_time": 0}
    return apply_click(at.session_state, value, at.session_state.get("click_image_size"))


def rss_mb(trim: bool = True) -> float:
    """RSS after a full collection and (glibc) after handing freed heap back to the OS.

    Untrimmed, the RSS over these clicks climbs and drops in a ~100 MB sawtooth with no object
    kept alive (more so after earlier tests fragmented the heap); what survives ``malloc_trim``
    is what is really held, so a leak shows and allocator slack does not.
    """
    gc.collect()
    gc.collect()
    if trim:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):      # not glibc: measure as is
            pass
    return psutil.Process().memory_info().rss / 2**20


# ---- clicks -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_burst_of_clicks_runs_the_network_once_and_keeps_memory_flat(uploads):
    st.cache_resource.clear()
    gc.collect()
    # runs of the app that earlier tests in this process still hold are not this test's concern
    earlier_namespaces = {id(o) for o in gc.get_objects() if type(o) is dict and o.get("__file__") in SCRIPTS}
    before = FORWARDS.total
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    # both sources on "upload" before the first run: the only forward is then (tiny model, crop),
    # not also the default model on a sample first
    at.session_state["model_source"] = "Upload a checkpoint"
    at.session_state["image_source"] = "Upload an image"
    at.run()
    at.sidebar.file_uploader(key="checkpoint_upload").set_value(
        ("hardening_tiny.safetensors", uploads["hardening_tiny.safetensors"], "application/octet-stream")).run()
    at.sidebar.file_uploader(key="image_upload").set_value(
        ("hardening_crop.png", uploads["hardening_crop.png"], "image/png")).run()
    assert not at.exception and errors(at) == []
    assert "(just now)" in at.caption[0].value and FORWARDS.total - before == 1

    rng = np.random.default_rng(0)
    clicks = [(int(x), int(y)) for x, y in zip(rng.permutation(CROP[1])[:120], rng.integers(0, CROP[0], 120))]
    added = []
    for index, (x, y) in enumerate(clicks):
        if index == 20:                                   # warm-up done: caches, imports, allocator
            start_raw, start_rss = rss_mb(trim=False), rss_mb()
        added.append(click(at, x + 0.5, y + 0.5))
        at.run()
        assert not at.exception, index
    end_raw, end_rss = rss_mb(trim=False), rss_mb()

    assert added == clicks                                  # displayed pixels map back to image pixels
    assert at.session_state["points"] == clicks[-MAX_POINTS:]
    assert len(point_cards(at)) == MAX_POINTS
    assert f"({clicks[-1][0]}, {clicks[-1][1]})" in point_cards(at)[-1]
    rows = at.session_state["row_cache"]
    assert sorted(k for k in rows if k != "key") == sorted(clicks[-MAX_POINTS:])   # no pile-up of old rows
    assert FORWARDS.total - before == 1, "clicks must never rerun the network"
    assert "(cached)" in at.caption[0].value
    assert f"forward passes: **{FORWARDS.total}**" in " ".join(m.value for m in at.sidebar.markdown)
    # a callback defined in the page script and kept by Streamlit for every per-point "Remove" button
    # held that run's whole namespace (image, overlays, heatmaps) alive: about 0.8 MB per click here
    gc.collect()
    namespaces = [o for o in gc.get_objects()
                  if type(o) is dict and o.get("__file__") in SCRIPTS and id(o) not in earlier_namespaces]
    for script in SCRIPTS:
        held = sum(o["__file__"] == script for o in namespaces)
        assert held <= 2, f"{held} runs of {Path(script).name} are still held in memory"
    growth = end_rss - start_rss
    print(f"\nRSS after 20 warm-up clicks {start_rss:.1f} MB, after 100 more {end_rss:.1f} MB: "
          f"growth {growth:+.1f} MB (untrimmed {start_raw:.1f} -> {end_raw:.1f} MB)")
    assert growth < 50, f"RSS grew by {growth:.1f} MB over 100 clicks"


# ---- files on disk ----------------------------------------------------------------------------
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
# event -> ((index of a path argument, index of its dir_fd argument or None), ...)
PATH_EVENTS = {"os.rename": ((0, 2), (1, 3)), "os.replace": ((0, 2), (1, 3)), "os.remove": ((0, 1),),
               "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.truncate": ((0, None),),
               "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),), "shutil.copyfile": ((1, None),),
               "shutil.copytree": ((1, None),), "shutil.move": ((0, None), (1, None)), "os.chmod": ((0, 2),),
               "os.utime": ((0, 3),)}
_recorder: list[tuple[str, str]] | None = None


def _audit(event: str, args: tuple) -> None:
    """Process-wide audit hook (it cannot be removed): a no-op unless a test is recording."""
    if _recorder is None:
        return
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & WRITE_FLAGS)
        targets = [(path, None)] if writing else []
    elif event in PATH_EVENTS:
        targets = [(args[i], args[fd] if fd is not None and fd < len(args) else None)
                   for i, fd in PATH_EVENTS[event] if i < len(args)]
    else:
        return
    for target, dir_fd in targets:
        if not isinstance(target, (str, bytes, os.PathLike)):
            continue
        target = os.fsdecode(target)
        if isinstance(dir_fd, int) and dir_fd >= 0:          # e.g. shutil.rmtree removes by dir_fd
            target = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), target)
        target = os.path.abspath(target)
        if event == "os.mkdir" and os.path.isdir(target):
            continue                                         # makedirs(exist_ok=True) on an existing folder
        _recorder.append((event, target))


_hook_installed = False


def start_recording() -> None:
    """Install the audit hook once per process (hooks cannot be removed) and start recording."""
    global _hook_installed, _recorder
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True
    _recorder = []

SNAPSHOT_SKIPS = (".git", "runs", "test-artifacts", ".hypothesis", ".pytest_cache", "__pycache__")
TRAINING_OUTPUT = ROOT / "assets" / "weights"           # rewritten by a training run, not by the app


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file under ``folder`` (VCS/caches skipped)."""
    files = {}
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = [d for d in subdirs if d not in SNAPSHOT_SKIPS and Path(directory, d) != TRAINING_OUTPUT]
        for name in names:
            path = Path(directory, name)
            try:
                stat = path.stat()
            except OSError:
                continue
            files[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return files


def changed(before: dict, after: dict) -> set[str]:
    return {p for p in after if before.get(p) != after[p]} | (before.keys() - after.keys())


def under(path: str, folder: str | Path) -> bool:
    return os.path.commonpath([path, os.path.realpath(folder)]) == os.path.realpath(folder)


def run_every_flow(uploads: dict[str, bytes]) -> None:
    """Upload two checkpoints (by the sidebar's real uploader), an image and a label map; click;
    move controls; visit every page; upload a bad checkpoint."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.sidebar.radio(key="image_source").set_value("Upload an image").run()
    at.sidebar.file_uploader(key="image_upload").set_value(
        ("hardening_crop.png", uploads["hardening_crop.png"], "image/png")).run()
    at.sidebar.file_uploader(key="label_upload").set_value(
        ("hardening_labels.png", uploads["hardening_labels.png"], "image/png")).run()
    at.sidebar.radio(key="model_source").set_value("Upload a checkpoint").run()
    for name in ("hardening_tiny.safetensors", "hardening_tiny.pth"):
        at.sidebar.file_uploader(key="checkpoint_upload").set_value(
            (name, uploads[name], "application/octet-stream")).run()
        assert not at.exception and errors(at) == [], (name, errors(at))
        assert len(at.metric) == 3                                       # scored against the label map
        for x, y in [(10, 10), (100, 60), (64, 90)]:
            click(at, x, y)
            at.run()
        assert len(point_cards(at)) == 3
        at.slider(key="attention_opacity").set_value(0.3).run()
        at.radio(key="attention_mode").set_value("nearest").run()
        at.switch_page(CHANNELS).run()
        at.toggle(key="cam_cluster").set_value(True).run()
        at.switch_page(MODEL).run()
        assert not at.exception and errors(at) == []
        at.switch_page(INSPECTOR).run()
        at.session_state["points"] = []
    at.sidebar.file_uploader(key="checkpoint_upload").set_value(
        ("broken.pth", uploads["hardening_tiny.pth"][:5000], "application/octet-stream")).run()
    assert not at.exception and any("Could not load `broken.pth`" in e for e in errors(at))


@pytest.mark.slow
def test_the_app_writes_nothing_outside_the_temp_dir(uploads, tmp_path, monkeypatch):
    global _recorder
    st.cache_resource.clear()                      # so the uploads really go through the loader
    temp = tempfile.gettempdir()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)                     # a relative path written by the app lands here
    # one-off import side effects of libraries are not the app's doing: matplotlib (the heatmap
    # colour maps) makes sure its config folder exists, once per machine, when first imported
    import matplotlib

    matplotlib.get_configdir()
    repo_before = snapshot(ROOT)
    temp_before = set(os.listdir(temp))
    start_recording()
    try:
        run_every_flow(uploads)
    finally:
        writes, _recorder = _recorder, None
    repo_after = snapshot(ROOT)

    written = {path for _, path in writes}
    print(f"\n{len(writes)} write events by this process while the app ran, on {len(written)} paths: "
          f"{sorted({str(Path(p).parent) for p in written})}")
    outside = sorted(p for p in written if not under(p, temp) and not p.startswith(("/dev/", "/proc/")))
    assert outside == [], f"the app wrote outside {temp}: {outside}"
    assert list(workdir.iterdir()) == [], "the app wrote into its working directory"

    # the snapshot catches what the hook cannot see (writes from C/Rust code): no file in the
    # repository may carry an upload's bytes or name, and none may be one this process wrote
    repo_changes = changed(repo_before, repo_after)
    assert not repo_changes & {str(Path(p).relative_to(ROOT)) for p in written if under(p, ROOT)}
    payload_heads = {data[:256] for data in uploads.values()}
    for relative in repo_changes:
        path = ROOT / relative
        assert not any(name in relative for name in uploads), f"upload copied into the repo: {relative}"
        if path.is_file():
            with path.open("rb") as handle:
                assert handle.read(256) not in payload_heads, f"{relative} holds an uploaded file"

    # uploads are read from memory: no file is written under an upload's name, none in a temp copy dir
    copies = sorted(p for p in written if any(name in p for name in uploads) or "danet-upload-" in p)
    assert copies == [], copies
    leftovers = [p for p in written if under(p, temp) and os.path.exists(p)
                 and not under(p, tmp_path)]         # tmp_path is pytest's, removed by pytest
    assert leftovers == [], f"temp files left behind: {leftovers}"
    assert not any(name.startswith("danet-upload-") for name in set(os.listdir(temp)) - temp_before)


# ---- upload bound -----------------------------------------------------------------------------
def test_streamlit_config_bounds_uploads():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    limit = config["server"]["maxUploadSize"]
    assert type(limit) is int
    with torch.device("meta"):                     # the largest network we load, as fp32 weights
        biggest = create_model(backbone="resnet101", num_classes=150)
    biggest_mb = sum(p.numel() for p in biggest.state_dict().values()) * 4 / 2**20
    assert biggest_mb < limit <= 1024, f"maxUploadSize {limit} MB; a DANet-ResNet101 is {biggest_mb:.0f} MB"
    # and Streamlit, started from the repository as `streamlit run app.py` is, reads that bound
    shown = subprocess.run([sys.executable, "-c", "from streamlit import config; "
                            "print(config.get_option('server.maxUploadSize'))"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert shown.stdout.strip().splitlines()[-1] == str(limit)
