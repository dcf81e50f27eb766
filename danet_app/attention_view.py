"""The interactive attention view: a Streamlit Components v2 element that follows the cursor.

Python sends, once per (session, model, image), what any attention row, column or region needs: the
image (JPEG data URL), the PAM query and key projections (base64; float16 for large grids), each row's
log-sum-exp and the mean row (float32, computed here in chunks: O(N^2 d) time, O(N) memory),
the predicted class of every grid cell, the class names and the colour lookup tables. The
browser (``static/attention_view.js``) then computes and paints the row under the cursor with
no round trip; only a click ("pin") comes back to Python. Later reruns (a pin, a display setting)
send only the payload's id and the small settings: the browser keeps decoded payloads in a
module-level cache and asks again ("need") when it lacks one. The maths it follows is
``danet_app.display_modes``.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from danet.render import overlays as viz
from danet.analysis.attention_stats import grid_labels
from danet.inspection import InspectionResult

from danet_app import display_modes
from danet_app.literal import plain

STATIC = Path(__file__).resolve().parent / "static"
COMPONENT_NAME = "danet_attention_view"
JPEG_QUALITY = 90
# Q and K go as float32 while they are small (the default model: N d = 43,200 values each, 0.35 MB
# both) and as float16 above (a 2048x1024 frame at d = 64: 8 MB instead of 16 MB). float16 moves a
# softmax weight by up to ~1e-3 on the default model; float32 matches InspectionResult.rows to 1e-7.
FLOAT32_LIMIT = 1 << 18


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
                  chunk: int = display_modes.CHUNK) -> dict:
    """Everything the browser needs for one (model, image), JSON-ready; ``key`` names it (the
    component decodes a payload once per key, however often the page reruns)."""
    query = result.pam_query.float().numpy()
    keys = result.pam_key.float().numpy()
    lse, mean_row = display_modes.row_statistics(query, keys, chunk)
    prediction = result.prediction("fused")
    cells = grid_labels(prediction, result.grid_size, len(classes)).ravel()
    wide = len(classes) > 255
    dtype = np.float32 if query.size <= FLOAT32_LIMIT else np.float16
    height, width = result.image_size
    return {
        "id": key, "W": int(width), "H": int(height),
        "gh": int(result.grid_size[0]), "gw": int(result.grid_size[1]), "d": int(query.shape[1]),
        "align_corners": bool(result.align_corners),
        "image": image_data_url(image), "pixel_classes": classes_data_url(prediction),
        "qk_dtype": np.dtype(dtype).name,
        "q": display_modes.b64(query, dtype), "k": display_modes.b64(keys, dtype),
        "lse": display_modes.b64(lse, np.float32), "mean_row": display_modes.b64(mean_row, np.float32),
        "cell_classes": display_modes.b64(cells, np.uint16 if wide else np.uint8), "cell_classes_wide": wide,
        "classes": [plain(name, 80) for name in classes],        # outside text: the view escapes it too
        "lut_diverging": display_modes.b64(display_modes.colour_lut(display_modes.DIVERGING_CMAP), np.uint8),
    }


def settings(mode: str, view: str, cmap: str, upsampling: str, opacity: float, fraction: float,
             pinned: list[tuple[int, int]]) -> dict:
    """The light part of the component's data: it changes with the controls, not with the image."""
    return {"mode": mode, "view": view, "upsampling": upsampling, "opacity": float(opacity),
            "fraction": float(fraction), "pinned": [list(map(int, p)) for p in pinned],
            "lut": display_modes.b64(display_modes.colour_lut(cmap), np.uint8),
            "colours": ["#%02x%02x%02x" % viz.point_colour(i) for i in range(8)]}


def payload_bytes(payload: dict) -> int:
    """Bytes of the component's JSON for this payload: what one image costs the browser."""
    return len(json.dumps(payload).encode())


def cached_payload(result_key: str, result: InspectionResult, image: np.ndarray, classes: tuple[str, ...]) -> dict:
    """``build_payload`` once per result, shared read-only by all sessions (and filled by the
    server's warm-up for the default view): the row sweep is O(N^2 d)."""
    return _cached_payload(result_key, result, image, classes)


def _payload_with_size(result_key: str, _result, _image, _classes) -> dict:
    payload = build_payload(_result, _image, _classes, result_key)
    payload["bytes"] = payload_bytes(payload)
    return payload


_cache = None


def _cached_payload(result_key, result, image, classes):
    global _cache
    if _cache is None:
        import streamlit as st

        _cache = st.cache_resource(max_entries=4, show_spinner=False)(_payload_with_size)
    return _cache(result_key, result, image, classes)


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
    return renderer()(data=view_data(payload, view_settings, send_payload=send_payload), key=key,
                      on_pin_change=on_pin, on_need_change=on_need, width="stretch", height="content")
