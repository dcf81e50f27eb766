"""The interactive attention view: a Streamlit Components v2 element that follows the cursor.

Python sends, once per (session, model, image), what any attention row, column or region needs: the
image (JPEG data URL), the map's own payload (``AttentionMap.payload``: its kind, mean row and
arrays; DANet's PAM: query and key projections, float16 for large grids, and each row's
log-sum-exp), the predicted class of every grid cell, the class names and the colour lookup
tables. The browser (``static/attention_view.js``) decodes the map with the kernel of its kind
and then computes and paints the row under the cursor with no round trip; only a click ("pin") comes back to Python. Later reruns (a pin, a display setting)
send only the payload's id and the small settings: the browser keeps decoded payloads in a
module-level cache and asks again ("need") when it lacks one. The maths it follows is
``danet_app.display_modes``.
"""
from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from danet.render import overlays as viz
from danet.maps.base import FLOAT32_LIMIT
from danet.maps.grid import grid_labels
from danet.errors import InputError
from danet.inspection import InspectionResult

from danet_app import display_modes
from danet_app.budget import ByteBudgetCache
from danet_app.literal import plain
from danet_app.timeline import mark

STATIC = Path(__file__).resolve().parent / "static"
COMPONENT_NAME = "danet_attention_view"
JPEG_QUALITY = 90
# Q and K go as float32 while they are small, float16 above: the rule is the maps' own (danet.maps.base).


def image_data_url(image: np.ndarray, quality: int = JPEG_QUALITY) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def classes_data_url(prediction: np.ndarray) -> str:
    """The predicted class of every pixel as a lossless PNG (R = id mod 256, G = id // 256): the
    view reads it back to give a pinned point's statistics at once (tens of kB, not W H bytes)."""
    ids = np.asarray(prediction, dtype=np.int64)
    rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def build_payload(result: InspectionResult, image: np.ndarray, classes: tuple[str, ...], key: str,
                  map_name: str | None = None) -> dict:
    """Everything the browser needs for one (model, image), JSON-ready; ``key`` names it (the
    component decodes a payload once per key, however often the page reruns)."""
    the_map = result.map(map_name)
    prediction = result.prediction()
    cells = grid_labels(prediction, result.grid_size, len(classes)).ravel()
    wide = len(classes) > 255
    height, width = result.image_size
    return {
        "id": key, "W": int(width), "H": int(height),
        "gh": int(result.grid_size[0]), "gw": int(result.grid_size[1]),
        "align_corners": bool(result.align_corners),
        "image": image_data_url(image), "pixel_classes": classes_data_url(prediction),
        "map": the_map.payload(),              # its kind's arrays: the browser's kernel of that kind reads them
        "cell_classes": display_modes.b64(cells, np.uint16 if wide else np.uint8), "cell_classes_wide": wide,
        "classes": [plain(name, 80) for name in classes],        # outside text: the view escapes it too
        "lut_diverging": display_modes.b64(display_modes.colour_lut(display_modes.DIVERGING_CMAP), np.uint8),
    }


def settings(mode: str, view: str, cmap: str, upsampling: str, opacity: float, fraction: float,
             pinned: list[tuple[int, int]]) -> dict:
    """The light part of the component's data: it changes with the controls, not with the image."""
    return {"mode": mode, "view": view, "unit": display_modes.unit(mode, view), "upsampling": upsampling,
            "opacity": float(opacity),
            "fraction": float(fraction), "pinned": [list(map(int, p)) for p in pinned],
            "lut": display_modes.b64(display_modes.colour_lut(cmap), np.uint8),
            "colours": ["#%02x%02x%02x" % viz.point_colour(i) for i in range(8)]}


def payload_bytes(payload: dict) -> int:
    """Bytes of the component's JSON for this payload: what one image costs the browser."""
    return len(json.dumps(payload).encode())


MB = 2**20
MAX_PAYLOAD_BYTES = int(float(os.environ.get("DANET_APP_MAX_VIEW_MB", 48)) * MB)
"""The most one image's view may send to a browser. The default model's is 0.57 MB; a
2048x1024 frame at d = 64 (N = 32,768 cells, float16 Q and K) about 12 MB. A 2 MB model with
PAM query/key channels d = 16,384 on a 480x360 image would be 236 MB (and ~2.4 GB on the server
while it is built): refused before anything is built."""
PAYLOAD_CACHE_BYTES = int(float(os.environ.get("DANET_APP_VIEW_CACHE_MB", 256)) * MB)
"""Built payloads kept for all sessions (by bytes: one entry may be 0.5 MB or 48 MB)."""


def _b64_bytes(raw: int) -> int:
    return 4 * -(-raw // 3)


def payload_bytes_estimate(cells: int, channels: int, num_classes: int = 1) -> int:
    """Bytes of a payload's arrays, known before it is built: Q and K (float32 while small,
    float16 above), each row's log-sum-exp and the mean row, the cell classes, all base64. The
    image and the pixel classes (compressed) come on top."""
    per_value = 4 if cells * channels <= FLOAT32_LIMIT else 2
    return (2 * _b64_bytes(cells * channels * per_value) + 2 * _b64_bytes(cells * 4)
            + _b64_bytes(cells * (2 if num_classes > 255 else 1)))


def refuse_large_payload(cells: int, channels: int, num_classes: int, pixels_per_cell: float,
                         limit: int | None = None) -> None:
    """``InputError`` in one line when the view for this model and image would exceed ``limit``
    (default ``MAX_PAYLOAD_BYTES``)."""
    limit = MAX_PAYLOAD_BYTES if limit is None else limit
    estimate = payload_bytes_estimate(cells, channels, num_classes)
    if estimate <= limit:
        return
    fits = limit / max(estimate / cells, 1)                  # cells whose arrays fit (float16)
    megapixels = fits * pixels_per_cell / 1e6
    advice = (f"lower \"Downscale above (megapixels)\" to {megapixels:.2g} or less" if megapixels >= 0.01
              else "this model's PAM is too wide for the interactive view at any image size")
    raise InputError(f"the attention view for this image would send {estimate / MB:,.0f} MB to the browser "
                     f"(PAM query/key channels d = {channels:,} on {cells:,} cells), more than the "
                     f"{limit / MB:,.0f} MB it may send; {advice}")


def cached_payload(result_key: str, result: InspectionResult, image: np.ndarray, classes: tuple[str, ...],
                   map_name: str | None = None) -> dict:
    """``build_payload`` once per result, shared read-only by all sessions (and filled by the
    server's warm-up for the default view): the row sweep is O(N^2 d). Kept by bytes
    (``PAYLOAD_CACHE_BYTES``); a payload over ``MAX_PAYLOAD_BYTES`` is refused with
    ``InputError`` before it is built."""
    # PAM's d per q and k; any other kind's numbers per cell, counted the same way
    cells, channels = result.num_positions, max(1, result.map(map_name).values_per_cell() // 2)
    if map_name is not None and map_name != next(iter(result.maps)):
        result_key = f"{result_key}:{map_name}"      # the default map keeps the plain key (the warm-up fills it)
    height, width = result.image_size
    refuse_large_payload(cells, channels, len(classes), height * width / max(cells, 1))

    def build() -> dict:
        payload = build_payload(result, image, classes, result_key, map_name)
        payload["bytes"] = payload_bytes(payload)
        if payload["bytes"] > MAX_PAYLOAD_BYTES:           # the image itself made it too large
            raise InputError(f"the attention view for this image would send {payload['bytes'] / MB:,.0f} MB to "
                             f"the browser, more than the {MAX_PAYLOAD_BYTES / MB:,.0f} MB it may send")
        return payload

    payload = payload_cache().get(("view", result_key), build, lambda payload: payload["bytes"])
    mark("payload ready")
    return payload


_cache_holder = None


def payload_cache() -> ByteBudgetCache:
    """The process's payload cache, behind ``st.cache_resource`` (so clearing Streamlit's cache
    clears it); made on first use."""
    global _cache_holder
    if _cache_holder is None:
        import streamlit as st

        _cache_holder = st.cache_resource(show_spinner=False)(_new_payload_cache)
    return _cache_holder()


def _new_payload_cache() -> ByteBudgetCache:
    return ByteBudgetCache(PAYLOAD_CACHE_BYTES, "attention view payload")


_renderer = None


def renderer():
    """The registered component (once per process; Streamlit re-registers it on a new runtime)."""
    global _renderer
    if _renderer is None:
        import streamlit as st

        _renderer = st.components.v2.component(
            COMPONENT_NAME,
            html=(STATIC / "attention_view.html").read_text(),
            css=(STATIC / "attention_view.css").read_text(),
            js=(STATIC / "attention_view.js").read_text(),
        )
    return _renderer


def view_data(payload: dict, view_settings: dict, *, send_payload: bool) -> dict:
    """The component's data for one run: the heavy payload only when ``send_payload`` (the first
    run of a session for this payload id, or when the browser asked for it again), else its id."""
    heavy = {k: v for k, v in payload.items() if k != "bytes"} if send_payload else None
    return {"id": payload["id"], "payload": heavy, "settings": view_settings}


def attention_view(payload: dict, view_settings: dict, *, key: str, send_payload: bool, on_pin, on_need):
    """Mount the view; ``on_pin`` runs (as a callback, before the rerun) when a point is pinned,
    ``on_need`` when the browser lacks the payload of the id it was given (after a reload)."""
    mounted = renderer()(data=view_data(payload, view_settings, send_payload=send_payload), key=key,
                         on_pin_change=on_pin, on_need_change=on_need, width="stretch", height="content")
    mark("view sent" + (" with its payload" if send_payload else ""))
    return mounted
