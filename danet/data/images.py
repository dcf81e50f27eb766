"""Safe image decoding for untrusted uploads: one error type, notices instead of surprises.

Every input either becomes an RGB uint8 array the network can use, with a list of notices that
say what was changed on the way (rotation, bit depth, transparency, frames, scale), or raises
``ImageLoadError`` with a message meant for the person who uploaded the file.

Rules (each has a test in ``tests/test_images.py``):

* only common raster formats are opened (``ALLOWED_FORMATS``): no EPS/PDF/ghostscript paths;
* anything that declares more than ``max_decode_pixels`` is refused before it is decoded
  (decompression bombs), and PIL's own bomb warning is an error here, never a silent pass;
* decode time is bounded too: a JPEG whose scans times pixels exceed ``MAX_JPEG_SCAN_PIXELS``
  (a progressive file with thousands of repeated scans) is refused before decoding;
* paths must be regular files no larger than ``MAX_FILE_BYTES`` (a FIFO or a link to
  ``/dev/zero`` is refused without blocking or reading);
* no process-wide lock or warning state is touched: PIL's warnings are captured per thread,
  so one session's slow file never blocks another's;
* 16-bit greyscale is scaled to 8 bits (value / 257), not clipped as ``PIL.convert`` does;
* transparent pixels are composited on white; CMYK, palette and greyscale become RGB;
* animated/multi-page files use their first frame; EXIF orientation is applied;
* images wider than ``max_aspect`` : 1 are refused; the rest are downscaled to ``max_pixels``
  and upscaled so the short side has at least ``min_side`` pixels (the network downsamples
  by up to 32, so a smaller input would leave it no feature grid to attend over).
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from danet.errors import ImageLoadError
from danet.safety.paths import FileRefused, open_regular

DEFAULT_MAX_PIXELS = 2048 * 2048
MAX_DECODE_PIXELS = 64 * 1024 * 1024      # 8192 x 8192: above this a file is treated as a bomb
MIN_SIDE = 32                              # short side after loading (output stride 32 -> 1 cell)
MAX_ASPECT = 64                            # longest side / shortest side
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG includes MPO
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".gif", ".webp", ".bmp", ".tif", ".tiff")
"""File suffixes of ``ALLOWED_FORMATS``: the one list every folder scan (predict, datasets) uses."""
BACKGROUND = (255, 255, 255)               # what transparent pixels are shown on
MAX_FILE_BYTES = 600 << 20                 # an uncompressed 64 MP 16-bit RGBA TIFF is 512 MiB
MAX_JPEG_SCAN_PIXELS = 1 << 31
"""Scans x declared pixels a JPEG may ask to decode. Progressive decoding revisits every block
once per scan (measured: ~2 ns per pixel per scan, so this is ~4 s); encoders write about 10
scans (64 MP x 10 = 0.67 G fits), a crafted file repeats one thousands of times."""

# Magic numbers of files people often upload by mistake, to name them in the error message.
_KNOWN_NON_IMAGES = ((b"%PDF", "a PDF document"), (b"<svg", "an SVG drawing"),
                     (b"<?xml", "an XML/SVG file"), (b"PK\x03\x04", "a ZIP archive"),
                     (b"%!PS", "a PostScript/EPS file"))
_HEIF_BRANDS = (b"heic", b"heix", b"mif1", b"msf1", b"avif")
_IMAGE_MAGIC = ((b"\x89PNG", "PNG"), (b"\xff\xd8", "JPEG"), (b"GIF8", "GIF"),
                (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))



class _ThreadWarnings:
    """Stands in for the ``warnings`` module inside PIL's modules: a thread that is decoding
    (inside ``pil_guard``) gets PIL's warnings as a list; every other caller is passed through.

    ``warnings.catch_warnings`` would swap process-wide state and so needs a lock held across
    the whole decode, which lets one session's slow file block every other session.
    """

    def __init__(self, real):
        self._real = real
        self.local = threading.local()

    def __getattr__(self, name):
        return getattr(self._real, name)

    def warn(self, message, category=None, stacklevel=1, source=None, **kwargs):
        sink = getattr(self.local, "sink", None)
        if sink is None:
            return self._real.warn(message, category, stacklevel + 1, source, **kwargs)
        category = type(message) if isinstance(message, Warning) else (category or UserWarning)
        if issubclass(category, Image.DecompressionBombWarning):
            raise Image.DecompressionBombWarning(str(message))
        sink.append(str(message))
        return None


_CAPTURE = _ThreadWarnings(warnings)
_INSTALL_LOCK = threading.Lock()
_installed = False


def _install_capture() -> None:
    """Point every loaded PIL module's ``warnings`` at ``_CAPTURE`` (once; plugins loaded first)."""
    global _installed
    if _installed:
        return
    with _INSTALL_LOCK:
        if not _installed:
            Image.init()
            for name, module in list(sys.modules.items()):
                if (name == "PIL" or name.startswith("PIL.")) and getattr(module, "warnings", None) is warnings:
                    module.warnings = _CAPTURE
            _installed = True


@dataclass
class LoadedImage:
    """An RGB uint8 array plus what was done to it on the way (for the UI to say)."""

    array: np.ndarray
    original_size: tuple[int, int]            # (width, height) after EXIF rotation, before any resize
    notices: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.array.shape[1], self.array.shape[0]


# ---- reading and decoding (shared with danet.data.labels) ------------------------------------
def _read_path(path: Path, error) -> bytes:
    """A regular file's bytes; FIFOs and devices are refused without blocking, big files unread."""
    try:
        with open_regular(path, MAX_FILE_BYTES) as (fd, _):
            chunks, total = [], 0
            while chunk := os.read(fd, min(1 << 24, MAX_FILE_BYTES + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > MAX_FILE_BYTES:
                    raise error(f"{path.name} grew past {MAX_FILE_BYTES / 2**20:.0f} MB while it was read")
            return b"".join(chunks)
    except FileRefused as refused:
        raise error({
            "missing": f"{path} does not exist",
            "folder": f"{path} is a folder, not an image file",
            "special": f"{path} is not a regular file (a pipe, socket or device); save the image to a file first",
            "too large": f"{path.name} is {refused.size / 2**20:.0f} MB, more than the "
                         f"{MAX_FILE_BYTES / 2**20:.0f} MB danet-lens reads",
            "unreadable": f"{path} could not be read: {refused.detail}",
        }[refused.reason]) from None
    except OSError as exc:
        raise error(f"{path} could not be read: {exc.strerror or exc}") from None


def read_source(source: bytes | bytearray | memoryview | str | Path, error=ImageLoadError) -> tuple[str, bytes]:
    """(name for messages, bytes) of a path or an in-memory upload; empty or missing -> ``error``."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = path.name
        data = _read_path(path, error)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name, data = "the upload", bytes(source)
        if len(data) > MAX_FILE_BYTES:
            raise error(f"{name} is {len(data) / 2**20:.0f} MB, more than the {MAX_FILE_BYTES / 2**20:.0f} MB "
                        "danet-lens reads")
    else:
        raise TypeError(f"expected bytes or a path, got {type(source).__name__}")
    if not data:
        raise error(f"{name} is empty (0 bytes)")
    return name, data


def describe_bytes(data: bytes) -> str:
    """A short human description of what non-image bytes look like."""
    head = data[:16]
    for magic, what in _IMAGE_MAGIC:
        if head.startswith(magic):
            return f"it starts like a {what} file but is damaged or cut short"
    if head.startswith(b"BM") and head[6:10] == b"\x00\x00\x00\x00":
        return "it starts like a BMP file but is damaged or cut short"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "it starts like a WEBP file but is damaged or cut short"
    for magic, what in _KNOWN_NON_IMAGES:
        if head.lstrip().startswith(magic):
            return f"it looks like {what}"
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "it looks like a HEIC/AVIF photo; convert it to JPEG or PNG first"
    text = data[:24]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in text):
        return f"it starts with the text {text.decode('ascii')!r}"
    return f"it starts with the bytes {head[:8].hex(' ')}"


def _bomb_message(name: str, width: int, height: int, limit: int) -> str:
    return (f"{name} declares {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), more "
            f"than the {limit / 1e6:.0f} megapixels danet-lens will decode (a guard against "
            f"decompression bombs); resize it before uploading")


@contextlib.contextmanager
def pil_guard(notices: list[str]):
    """PIL's warnings in this thread captured: bomb warnings raise, others become notices.

    Per thread, without a lock: other threads decode (and warn) at the same time unaffected.
    """
    _install_capture()
    previous = getattr(_CAPTURE.local, "sink", None)
    caught: list[str] = []
    _CAPTURE.local.sink = caught
    try:
        yield
    finally:
        _CAPTURE.local.sink = previous
    for text in caught:
        message = f"the file is slightly damaged; the decoder said: {text.strip()}"
        if message not in notices:
            notices.append(message)


def _check_jpeg_scans(data: bytes, name: str, width: int, height: int, error) -> None:
    """Refuse a JPEG whose scans would take too long to decode (each scan revisits every block).

    Counts SOS markers (``FF DA``): entropy-coded data never contains that pair (``FF`` is
    followed by ``00`` there), so the count is exact but for embedded thumbnails, which add one each.
    """
    scans = data.count(b"\xff\xda")
    if scans * width * height > MAX_JPEG_SCAN_PIXELS:
        raise error(f"{name} is a JPEG with {scans:,} scans over {width}x{height} pixels, which would take too long "
                    f"to decode (danet-lens allows {MAX_JPEG_SCAN_PIXELS / (width * height):,.0f} at this size; "
                    "ordinary progressive JPEGs have about 10); re-save it as a normal JPEG or PNG")


def decode_first_frame(data: bytes, name: str, max_decode_pixels: int = MAX_DECODE_PIXELS,
                       draft_pixels: int | None = None, error=ImageLoadError
                       ) -> tuple[Image.Image, tuple[int, int], list[str]]:
    """Open, guard and fully decode frame 0 of ``data``; every decoder failure becomes ``error``.

    Returns the image, its declared (width, height) as stored (before any draft scaling) and
    notices.
    ``draft_pixels``: let JPEG decode at 1/2, 1/4 or 1/8 scale when the result still has at
    least this many pixels (saves memory and time on huge photos that will be downscaled).
    """
    notices: list[str] = []
    with pil_guard(notices):
        try:
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width * height > max_decode_pixels:
                raise error(_bomb_message(name, width, height, max_decode_pixels))
            if width < 1 or height < 1:
                raise error(f"{name} declares an empty image ({width}x{height} pixels)")
            if image.format in ("JPEG", "MPO"):
                _check_jpeg_scans(data, name, width, height, error)
            frames = getattr(image, "n_frames", 1) if getattr(image, "is_animated", False) else 1
            image.seek(0)
            if draft_pixels and image.format in ("JPEG", "MPO") and width * height > draft_pixels:
                scale = math.sqrt(draft_pixels / (width * height))
                image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))
            image.load()
        except error:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise error(f"{name} is too large to decode safely (a guard against decompression "
                        f"bombs): {exc}") from None
        except UnidentifiedImageError:
            raise error(f"{name} is not an image danet-lens can read ({describe_bytes(data)}); "
                        f"supported formats: {', '.join(ALLOWED_FORMATS)}") from None
        except MemoryError:
            raise error(f"{name} needs more memory to decode than is available") from None
        except Exception as exc:  # PIL raises many types on corrupt data; all mean "bad file"
            reason = str(exc) or type(exc).__name__
            if "truncated" in reason or isinstance(exc, EOFError):
                raise error(f"{name} is truncated (the file ends before the image data does); "
                            f"save or download it again") from None
            raise error(f"{name} is a damaged or unsupported image file ({reason})") from None
    if frames > 1:
        notices.append(f"the file has {frames} frames (animated or multi-page): using the first")
    return image, (width, height), notices


# ---- pixel formats ---------------------------------------------------------------------------
def _scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """Full-range 16-bit -> 8-bit, rounding (65535 -> 255, 257 -> 1): value * 255 / 65535."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def to_rgb_array(image: Image.Image) -> tuple[np.ndarray, list[str]]:
    """Any decoded PIL image -> (H, W, 3) uint8 RGB, with a notice for every lossy step."""
    mode = image.mode
    if mode.startswith("I;16"):
        return _grey_to_rgb(_scale_16_to_8(np.asarray(image))), [
            "16-bit greyscale image scaled to 8 bits"]
    if mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        notices: list[str] = []
        finite = np.isfinite(values)
        if not finite.all():
            # NaN/inf would make min/max NaN and the whole picture black; map them explicitly.
            if not finite.any():
                raise ImageLoadError("the image has no finite pixel values (every pixel is NaN or infinite)")
            bad = int(values.size - finite.sum())
            values = np.where(finite, values, values[finite].min())
            notices.append(f"{bad} pixel{'s' if bad != 1 else ''} ({100 * bad / values.size:.2g}%) were NaN or "
                           "infinite: shown as the lowest value")
        lo, hi = float(values.min()), float(values.max())
        if mode == "I" and lo >= 0 and hi <= 255:
            return _grey_to_rgb(values.astype(np.uint8)), notices
        if mode == "I" and lo >= 0 and hi <= 65535:
            return _grey_to_rgb(_scale_16_to_8(values.astype(np.uint16))), notices + [
                "16-bit greyscale image scaled to 8 bits"]
        if mode == "F" and lo >= 0 and hi <= 1:
            return _grey_to_rgb(np.round(values * 255).astype(np.uint8)), notices + [
                "floating-point image (0-1) scaled to 8 bits"]
        span = hi - lo if hi > lo else 1.0
        return _grey_to_rgb(np.round((values - lo) / span * 255).astype(np.uint8)), notices + [
            f"{'32-bit integer' if mode == 'I' else 'floating-point'} image stretched from "
            f"[{lo:g}, {hi:g}] to 8 bits"]
    notices = []
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba)[:, :, 3]
        if alpha.min() < 255:
            background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
            rgba = Image.alpha_composite(background, rgba)
            notices.append("transparent pixels are shown on a white background")
        return np.asarray(rgba.convert("RGB"), dtype=np.uint8).copy(), notices
    if mode == "CMYK":
        notices.append("CMYK image converted to RGB (colours may differ slightly)")
    try:
        rgb = image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageLoadError(f"the pixel format {mode!r} is not supported ({exc})") from None
    return np.asarray(rgb, dtype=np.uint8).copy(), notices


# ---- geometry --------------------------------------------------------------------------------
def _apply_orientation(image: Image.Image) -> tuple[Image.Image, bool, list[str]]:
    """EXIF-rotated image, whether width and height swapped, notices."""
    try:
        orientation = image.getexif().get(0x0112, 1)
        if orientation not in (2, 3, 4, 5, 6, 7, 8):
            return image, False, []
        return (ImageOps.exif_transpose(image), orientation >= 5,
                [f"rotated/flipped as its EXIF orientation ({orientation}) asks"])
    except Exception:  # malformed EXIF must not make a readable picture unusable
        return image, False, ["the EXIF data is damaged: the image is shown as stored, without rotation"]


def fit_size(width: int, height: int, max_pixels: int, min_side: int) -> tuple[int, int]:
    """The (width, height) to resize to: within ``max_pixels`` but never below ``min_side``."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    if min(width, height) * scale < min_side:
        scale = min_side / min(width, height)
    if scale == 1.0:
        return width, height
    return max(round(width * scale), min_side), max(round(height * scale), min_side)


def load_image(source: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, *,
               min_side: int = MIN_SIDE, max_aspect: float = MAX_ASPECT,
               max_decode_pixels: int = MAX_DECODE_PIXELS) -> LoadedImage:
    """Decode ``source`` (bytes or a path) to an RGB uint8 array the network can take.

    Raises ``ImageLoadError`` (with a message for the user) for anything unusable. See the
    module docstring for every rule; ``notices`` lists what was changed.
    """
    if max_pixels < min_side * min_side:
        raise ValueError(f"max_pixels ({max_pixels}) must allow at least {min_side}x{min_side}")
    name, data = read_source(source)
    image, (width, height), notices = decode_first_frame(data, name, max_decode_pixels,
                                                         draft_pixels=max_pixels)
    with image, pil_guard(notices):
        image, swapped, rotation = _apply_orientation(image)
        array, format_notices = to_rgb_array(image)
    notices += rotation + format_notices
    if swapped:
        width, height = height, width
    long_side, short_side = max(width, height), min(width, height)
    if long_side / short_side > max_aspect:
        raise ImageLoadError(
            f"{name} is {width}x{height} pixels, a {long_side / short_side:.0f}:1 strip; danet-lens "
            f"takes images up to {max_aspect:g}:1 (crop it to the part you want to inspect)")
    new_width, new_height = fit_size(width, height, max_pixels, min_side)
    decoded = (array.shape[1], array.shape[0])      # smaller than (width, height) after a JPEG draft
    if (new_width, new_height) != decoded:
        shrinking = new_width < decoded[0]
        resized = Image.fromarray(array).resize((new_width, new_height),
                                                Image.BILINEAR if shrinking else Image.BICUBIC,
                                                reducing_gap=3.0 if shrinking else None)
        array = np.asarray(resized, dtype=np.uint8).copy()
    if (new_width, new_height) != (width, height):
        if new_width < width:
            notices.append(f"downscaled from {width}x{height} to {new_width}x{new_height} to stay "
                           f"within {max_pixels / 1e6:.2g} megapixels")
        else:
            notices.append(f"upscaled from {width}x{height} to {new_width}x{new_height}: the network "
                           f"needs at least {min_side} pixels on the short side")
    return LoadedImage(array, (width, height), notices)
