"""Safe image decoding for untrusted uploads: one error type, notices instead of surprises."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 2048 * 2048


class ImageLoadError(ValueError):
    """The bytes are not an image we can use; the message is meant for the user."""


@dataclass
class LoadedImage:
    """An RGB uint8 array plus what was done to it on the way (for the UI to say)."""

    array: np.ndarray
    original_size: tuple[int, int]            # (width, height) before any downscale
    notices: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.array.shape[1], self.array.shape[0]


def load_image(source: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode ``source`` (bytes or a path) to RGB, honour EXIF rotation, downscale above ``max_pixels``."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    if not data:
        raise ImageLoadError("the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)
            image = ImageOps.exif_transpose(image)
            original = image.size
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(f"could not read the image: {error}") from None
    notices = []
    width, height = rgb.size
    if width * height > max_pixels:
        scale = (max_pixels / (width * height)) ** 0.5
        new = (max(int(width * scale), 1), max(int(height * scale), 1))
        rgb = rgb.resize(new, Image.BILINEAR)
        notices.append(f"downscaled from {width}x{height} to {new[0]}x{new[1]} to stay within "
                       f"{max_pixels / 1e6:.1f} megapixels")
    return LoadedImage(np.asarray(rgb, dtype=np.uint8).copy(), original, notices)
