"""Prepare the default view in the background once per server process, so a visitor does not wait.

It imports torch and the model code, loads the default model, runs it on the first sample at the
sidebar's default size limit and builds the attention view's payload: the sidebar's and the
view's caches (``st.cache_resource``, keyed by content hashes) then hold exactly what the first
visitor's run asks for (the resource cache lets one caller compute a value while others wait).

Only the entry points start it, explicitly: ``streamlit run serve.py`` when the server starts
(``st.App``'s lifespan), ``streamlit run app.py`` at the first visit. Importing ``danet_app``
starts nothing. Set ``DANET_APP_WARMUP=0`` to turn it off; ``disable()`` turns it off for one
process (the tests, which drive ``app.py`` in-process through AppTest). ``seconds`` keeps how
long each step took (printed to the server log), for the cold-start breakdown.
"""
from __future__ import annotations

import os
import sys
import threading
import time

from danet_app.timeline import mark

_started = False
_disabled = False
_lock = threading.Lock()
seconds: dict[str, float] = {}


def passive_threads() -> bool:
    """Let PyTorch's idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``), unless
    the environment already chose; True if set. Must run before torch is imported (OpenMP reads
    it when its library loads), so the entry points call it first. A server shares its cores with
    the browser, its own threads and whatever else runs: spinning threads then wait for each
    other at every parallel step, and the default model's forward took 2.3-7.3 s instead of
    0.4-1.0 s at a load average of 4-5 on 2 cores (docs/benchmarks.md, cold start)."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def disable() -> None:
    """Never start the warm-up in this process (for a process that runs the app's script itself)."""
    global _disabled
    _disabled = True


def start() -> bool:
    """Start the warm-up thread unless it ran in this process already; True if this call started it."""
    global _started
    if _disabled or os.environ.get("DANET_APP_WARMUP", "1") == "0":
        return False
    with _lock:
        if _started:
            return False
        _started = True
    threading.Thread(target=_warm_default_view, name="danet-warmup", daemon=True).start()
    return True


def _step(name: str, started: float) -> float:
    now = time.perf_counter()
    seconds[name] = now - started
    mark(f"warm-up: {name}")
    return now


def _warm_default_view() -> None:
    try:
        t = time.perf_counter()
        from danet.weights import default_weights_path

        from danet_app import sidebar
        from danet_app.attention_view import cached_payload
        from danet_app.state import file_sha256, model_id, result_key

        t = _step("import torch, danet, streamlit", t)
        import timm  # noqa: F401  (the model needs it; it pulls in torchvision and torch._dynamo)

        t = _step("import timm", t)
        path = default_weights_path()
        if not path.is_file():
            return
        digest = file_sha256(path)
        loaded = sidebar.load_default_model(digest, sidebar.DEVICE)
        t = _step("load the default model", t)
        samples = sidebar.sample_files()
        if not samples:
            return
        image_digest = file_sha256(samples[0])           # what the sidebar hashes for a sample
        image = sidebar.decode_sample(samples[0], image_digest, int(sidebar.DEFAULT_MEGAPIXELS * 1e6))
        height, width = image.array.shape[:2]
        key = result_key(model_id(digest), f"{image_digest}@{width}x{height}", sidebar.DEVICE)
        result = sidebar.run_forward(key, loaded, image.array)
        t = _step("forward on the first sample", t)
        cached_payload(key, result, image.array, loaded.meta.classes)
        t = _step("attention view payload (row sweep)", t)
        start_decoding_sandbox()
        _step("decoding sandbox started", t)
        print("danet-lens warm-up: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()), flush=True)
    except Exception as error:  # noqa: BLE001 - a failed warm-up only means the first visitor waits
        print(f"danet-lens warm-up failed: {type(error).__name__}: {error}", flush=True)


def start_decoding_sandbox() -> None:
    """Decode a tiny image through the uploads' path (``load_image_isolated``): this starts the
    sandbox's fork server, which imports the decoder once, so the first upload does not wait for
    it. Since ``import danet`` no longer loads torch, that start is about 0.4 s and the process
    holds about 35 MB (it was 3.7-12 s and 525 MB with torch, measured at a load average of 4);
    it now exists from the warm-up on, not from the first upload on."""
    import io

    from PIL import Image

    from danet.data.isolated import load_image_isolated

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buffer, format="PNG")
    load_image_isolated(buffer.getvalue(), name="the warm-up's test image")

