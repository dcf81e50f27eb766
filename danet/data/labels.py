"""Ground-truth label maps from untrusted files: one class id per pixel, or a clear message.

A label map is a single-channel image whose pixel values are class ids (CamVid, Cityscapes
``labelIds``, VOC palette PNGs all store it this way). What this module decides:

* greyscale (``L``), palette (``P``: the index *is* the id), 16-bit and ``1`` images are read
  as ids directly;
* an RGB image whose three channels are equal is a greyscale map saved as RGB: its ids are
  used, with a notice;
* any other RGB/RGBA image is a colour-coded rendering. If ``palette`` is given and every
  colour in the file is one of its colours, colours map back to ids (with a notice);
  otherwise ``LabelMapError`` names colours that match no class;
* a map of a different size than the image is resized (nearest neighbour, with a notice)
  when it has the same aspect ratio -- the image was downscaled on loading -- and refused
  otherwise;
* ids outside ``0 .. num_classes - 1`` become ``ignore_index``, with a notice that counts them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from danet.errors import LabelMapError
from danet.data.images import MAX_DECODE_PIXELS, decode_first_frame, read_source




def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _ids_from_colours(rgb: np.ndarray, palette: np.ndarray | None, name: str,
                      ignore_index: int | None) -> tuple[np.ndarray, list[str]]:
    """Colour-coded (H, W, 3) map -> ids through ``palette``; every colour must be known.

    Black pixels that match no class are the usual "void" colour (CamVid, Cityscapes): they
    become ``ignore_index`` when there is one.
    """
    if palette is None:
        raise LabelMapError(
            f"{name} is a colour (RGB) image: a label map needs one class id per pixel "
            f"(a greyscale or palette PNG); no class palette was given to decode colours")
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    palette_codes = (palette[:, 0].astype(np.int64) << 16) | (palette[:, 1].astype(np.int64) << 8) | palette[:, 2]
    order = np.argsort(palette_codes)
    sorted_codes = palette_codes[order]
    position = np.clip(np.searchsorted(sorted_codes, codes), 0, len(sorted_codes) - 1)
    known = sorted_codes[position] == codes
    ids = order[position].astype(np.int64)
    notices = [f"{name} is colour-coded: colours mapped to class ids via the palette"]
    void = ~known & (codes == 0)
    if ignore_index is not None and void.any():
        ids[void] = ignore_index
        known |= void
        notices.append(f"{_plural(int(void.sum()), 'black pixel')} match no class: treated as ignore ({ignore_index})")
    if not known.all():
        unknown = np.unique(codes[~known])
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise LabelMapError(
            f"{name} is a colour (RGB) image and {_plural(int((~known).sum()), 'pixel')} have colours "
            f"that are not in the class palette: {shown}{more}. Save the label map with one class "
            f"id per pixel (a greyscale or palette PNG)")
    return ids, notices


def _to_ids(image: Image.Image, palette: np.ndarray | None, name: str,
            ignore_index: int | None) -> tuple[np.ndarray, list[str]]:
    mode = image.mode
    if mode in ("L", "P", "I", "1") or mode.startswith("I;16"):
        return np.asarray(image).astype(np.int64), []
    if mode in ("RGB", "RGBA", "RGBX"):
        array = np.asarray(image)
        notices = []
        if mode == "RGBA" and array[..., 3].min() < 255:
            notices.append(f"{name} has transparency; its alpha channel was ignored")
        rgb = array[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0].astype(np.int64), notices + [
                f"{name} is stored as RGB with equal channels: read as greyscale ids"]
        ids, colour_notices = _ids_from_colours(rgb, palette, name, ignore_index)
        return ids, notices + colour_notices
    if mode == "LA":
        return np.asarray(image)[..., 0].astype(np.int64), [f"{name} has transparency; its alpha channel was ignored"]
    raise LabelMapError(f"{name} has pixel format {mode!r}; a label map needs one integer class id per pixel")


def _match_size(ids: np.ndarray, expected_size: tuple[int, int], name: str) -> tuple[np.ndarray, list[str]]:
    """Resize (nearest) when only the scale differs; refuse a different shape."""
    height, width = ids.shape
    want_w, want_h = expected_size
    if (width, height) == (want_w, want_h):
        return ids, []
    # Same aspect ratio up to the 1-pixel rounding of a resize in either direction.
    same_shape = abs(width * want_h - height * want_w) <= (max(width, want_w) + max(height, want_h)) / 2
    if not same_shape:
        raise LabelMapError(
            f"{name} is {width}x{height} pixels but the image is {want_w}x{want_h}: a label map must "
            f"cover the same picture (same size, or the same shape at another scale)")
    resized = Image.fromarray(ids.astype(np.int32)).resize((want_w, want_h), Image.NEAREST)
    return np.asarray(resized).astype(np.int64), [
        f"{name} resized from {width}x{height} to {want_w}x{want_h} (nearest neighbour) to match the image"]


def load_label_map(source: bytes | str | Path, expected_size: tuple[int, int] | None, num_classes: int,
                   ignore_index: int | None = 255, *, palette: np.ndarray | None = None,
                   max_decode_pixels: int = MAX_DECODE_PIXELS) -> tuple[np.ndarray, list[str]]:
    """Read a label map -> ((H, W) int64 class ids, notices); raises ``LabelMapError``.

    ``expected_size`` is the image's (width, height), as ``LoadedImage.size`` gives it (None:
    keep the map's size). Ids outside ``0 .. num_classes - 1`` become ``ignore_index`` (which
    may itself lie outside that range, e.g. CamVid's 11 or 255); with ``ignore_index=None``
    they are an error. ``palette`` ((K, 3) uint8) lets colour-coded RGB maps be decoded.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    name, data = read_source(source, error=LabelMapError)
    label_name = "the label map" if name == "the upload" else name
    image, _, notices = decode_first_frame(data, label_name, max_decode_pixels, error=LabelMapError)
    notices = [notice.replace("using the first", "using the first as the label map") for notice in notices]
    with image:
        if image.format == "JPEG":
            notices.append(f"{label_name} is a JPEG: lossy compression changes ids along class edges; "
                           f"PNG keeps them exact")
        ids, format_notices = _to_ids(image, palette, label_name, ignore_index)
    notices += format_notices
    if expected_size is not None:
        ids, size_notices = _match_size(ids, tuple(expected_size), label_name)
        notices += size_notices
    outside = (ids < 0) | (ids >= num_classes)
    if ignore_index is not None:
        outside &= ids != ignore_index
    if outside.any():
        found = np.unique(ids[outside])
        shown = ", ".join(str(int(v)) for v in found[:8]) + (", ..." if len(found) > 8 else "")
        count = int(outside.sum())
        if ignore_index is None:
            raise LabelMapError(
                f"{label_name} has {_plural(count, 'pixel')} with ids outside 0..{num_classes - 1} (found {shown}) "
                f"and this dataset has no ignore id to map them to")
        ids = np.where(outside, ignore_index, ids)
        notices.append(f"{_plural(count, 'pixel')} ({100 * count / ids.size:.1f}%) had ids outside "
                       f"0..{num_classes - 1} (found {shown}): treated as ignore ({ignore_index})")
    return ids, notices
