"""Driving the Streamlit app through ``streamlit.testing.v1.AppTest``: upload bytes, the small
sample crop, the uploaded tiny model, and what the page shows (errors, point cards). Shared by
test_app.py, test_app_measures.py, test_hardening_app.py and test_hostile_app.py.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "assets" / "samples").glob("*.png"))


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def small_image() -> np.ndarray:
    """A 96 x 128 crop of a CamVid sample (a 12 x 16 feature grid): small enough for a fast forward."""
    return np.asarray(Image.open(SAMPLES[0]).convert("RGB"))[100:196, 100:228].copy()


def rendered(markdown: str) -> str:
    """The text a markdown source shows, for sources the app escaped with ``danet_app.literal``:
    backslash escapes resolved, word joiners and leading-space references dropped."""
    return re.sub(r"\\(.)", r"\1", markdown.replace("\u2060", "").replace("&#32;", " "))


def errors(at: AppTest) -> list[str]:
    return [rendered(e.value) for e in at.error]       # the whole page, sidebar included


def texts(elements) -> list[str]:
    """What a list of AppTest markdown-like elements (info, caption, warning, ...) shows."""
    return [rendered(e.value) for e in elements]


def point_cards(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if "same-class mass" in m.value and "entropy" in m.value]


def with_tiny_model(at: AppTest, checkpoint: bytes, image: np.ndarray | None = None) -> AppTest:
    """Switch the app to the uploaded tiny model and (optionally) an uploaded image."""
    at.sidebar.radio(key="model_source").set_value("Upload a checkpoint").run()
    at.sidebar.file_uploader(key="checkpoint_upload").set_value(
        ("tiny.safetensors", checkpoint, "application/octet-stream")).run()
    if image is not None:
        at.sidebar.radio(key="image_source").set_value("Upload an image").run()
        at.sidebar.file_uploader(key="image_upload").set_value(("crop.png", png(image), "image/png")).run()
    return at
