"""Property tests: whatever bytes arrive, the loaders return a usable result or their own error.

"Usable" is checked, not assumed: an image is (H, W, 3) uint8 with H, W >= MIN_SIDE within the
pixel budget; a label map holds only ids in 0..K-1 or the ignore id. Example counts are kept
small so the file runs in seconds on two cores.
"""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from danet.data.images import MIN_SIDE, ImageLoadError, load_image
from danet.data.labels import LabelMapError, load_label_map

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(300)]

BUDGET = 64 * 64 * 4
K, IGNORE = 11, 11
# FUZZ_EXAMPLES=2000 for a longer hunt (1500 per test ran clean when this file was written).
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 80)), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    exif = rgb.getexif()
    exif[0x0112] = 6
    frames = [Image.new("P", (24, 24), i) for i in range(3)]
    return {
        "png": encode(rgb, "PNG"),
        "jpeg": encode(rgb, "JPEG", quality=85, exif=exif.tobytes()),
        "png16": encode(Image.fromarray(rng.integers(0, 65536, (30, 30), dtype=np.uint16)), "PNG"),
        "gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp": encode(rgb, "WEBP", quality=80),
        "label": encode(Image.fromarray(rng.integers(0, K, (36, 48)).astype(np.uint8)), "PNG"),
    }


SEEDS = _seeds()


@st.composite
def mutated(draw, names=tuple(SEEDS)) -> bytes:
    """A real file with a few bytes flipped, a slice cut out, bytes inserted or the tail cut."""
    data = bytearray(SEEDS[draw(st.sampled_from(names))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[position:position + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[position:]
    return bytes(data)


def check_image_contract(data: bytes) -> None:
    try:
        loaded = load_image(data, max_pixels=BUDGET)
    except ImageLoadError as error:
        assert str(error), "an error must carry a message for the user"
        return
    height, width = loaded.array.shape[:2]
    assert loaded.array.dtype == np.uint8 and loaded.array.shape[2] == 3
    assert min(height, width) >= MIN_SIDE
    assert height * width <= BUDGET * 1.01 or min(height, width) == MIN_SIDE
    assert all(isinstance(n, str) and n for n in loaded.notices)


def check_label_contract(data: bytes) -> None:
    try:
        labels, notices = load_label_map(data, None, K, IGNORE)
    except LabelMapError as error:
        assert str(error)
        return
    assert labels.dtype == np.int64 and labels.ndim == 2
    assert (((labels >= 0) & (labels < K)) | (labels == IGNORE)).all()
    assert all(isinstance(n, str) and n for n in notices)


@FUZZ
@given(st.binary(max_size=2048))
def test_any_bytes_load_or_raise_image_load_error(data):
    check_image_contract(data)


@FUZZ
@given(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP",
                        b"BM", b"II*\x00"]), st.binary(max_size=512))
def test_image_magic_followed_by_junk(magic, tail):
    check_image_contract(magic + tail)


@FUZZ
@given(mutated(("png", "jpeg", "png16", "gif", "webp")))
def test_mutated_real_images(data):
    check_image_contract(data)


@FUZZ
@given(st.binary(max_size=1024))
def test_any_bytes_as_a_label_map(data):
    check_label_contract(data)


@FUZZ
@given(mutated(("label", "png", "gif")))
def test_mutated_label_maps(data):
    check_label_contract(data)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.integers(1, 200), st.sampled_from(["RGB", "L", "RGBA", "P", "I;16", "LA", "1"]),
       st.sampled_from(["PNG", "TIFF", "WEBP", "BMP", "GIF", "JPEG"]))
def test_valid_images_of_any_small_size_and_mode_are_usable(width, height, mode, fmt):
    image = Image.new(mode, (width, height))
    try:
        data = encode(image, fmt)
    except (OSError, ValueError, KeyError):
        return                                      # PIL cannot write this mode in this format
    if max(width, height) / min(width, height) > 64:
        try:
            load_image(data, max_pixels=BUDGET)
        except ImageLoadError as error:
            assert "strip" in str(error)
            return
        raise AssertionError("an over-wide image must be refused")
    loaded = load_image(data, max_pixels=BUDGET)
    assert min(loaded.size) >= MIN_SIDE and loaded.array.dtype == np.uint8
