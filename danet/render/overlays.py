"""Pure image functions shared by the app and the CLI: masks, overlays, heatmaps, markers.

Everything takes and returns numpy uint8 RGB arrays (H, W, 3); nothing here knows Streamlit.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, colour-blind friendly marker colours (Okabe-Ito), one per clicked point.
POINT_COLOURS = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
                 (213, 94, 0), (204, 121, 167), (255, 255, 255)]


def point_colour(index: int) -> tuple[int, int, int]:
    return POINT_COLOURS[index % len(POINT_COLOURS)]


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class-id map -> RGB using ``palette`` (K, 3); ids outside 0..K-1 become black."""
    palette = np.asarray(palette, dtype=np.uint8)
    mask = np.asarray(mask)
    out = np.zeros(mask.shape + (3,), dtype=np.uint8)
    valid = (mask >= 0) & (mask < len(palette))
    out[valid] = palette[mask[valid]]
    return out


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha`` * overlay + (1 - alpha) * image, as uint8."""
    alpha = float(np.clip(alpha, 0.0, 1.0))
    mixed = image.astype(np.float32) * (1 - alpha) + overlay.astype(np.float32) * alpha
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def heatmap(values: np.ndarray, cmap: str = "jet", vmin: float | None = None,
            vmax: float | None = None) -> np.ndarray:
    """Float map -> RGB with a matplotlib colormap, scaled to [vmin, vmax] (default: its range)."""
    from matplotlib import colormaps

    values = np.asarray(values, dtype=np.float64)
    lo = float(values.min()) if vmin is None else vmin
    hi = float(values.max()) if vmax is None else vmax
    scaled = np.clip((values - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(values)
    # Index the colormap's own lookup table as matplotlib does (same colours), without building
    # an (H, W, 4) float array: ~20x faster on a 480x360 map, which the app redraws per click.
    colours = colormaps[cmap]
    lut = (colours(np.arange(colours.N))[:, :3] * 255 + 0.5).astype(np.uint8)
    missing = np.isnan(scaled)
    index = np.minimum((np.where(missing, 0, scaled) * colours.N).astype(np.intp), colours.N - 1)
    rgb = lut[index]
    rgb[missing] = 0                       # matplotlib's "bad" colour: transparent black
    return rgb


def heatmap_overlay(image: np.ndarray, values: np.ndarray, alpha: float = 0.5, cmap: str = "jet",
                    vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    return blend(image, heatmap(values, cmap, vmin, vmax), alpha)


def mask_overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return blend(image, colorize(mask, palette), alpha)


def mark_points(image: np.ndarray, points, radius: int | None = None, labels: bool = True,
                first_index: int = 0) -> np.ndarray:
    """Draw a ringed dot (and its 1-based number) at each (x, y) point, in its point colour.

    ``first_index`` numbers and colours the points as if they started at that index (to mark
    point k alone with its own colour).
    """
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    radius = radius or max(4, round(min(image.shape[:2]) / 60))
    for index, (x, y) in enumerate(points, start=first_index):
        colour = point_colour(index)
        box = (x - radius, y - radius, x + radius, y + radius)
        draw.ellipse(box, fill=colour, outline=(0, 0, 0), width=max(1, radius // 3))
        if labels:
            draw.text((x + radius + 2, y - radius - 2), str(index + 1), fill=colour, stroke_width=2,
                      stroke_fill=(0, 0, 0), font=ImageFont.load_default(size=max(10, radius * 3)))
    return np.asarray(canvas)


def disagreement(fused: np.ndarray, pam: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """0 where all three agree, 1 where only PAM differs from fused, 2 only CAM, 3 both."""
    return ((pam != fused).astype(np.uint8) + 2 * (cam != fused).astype(np.uint8))


DISAGREEMENT_LABELS = ("all agree", "PAM differs", "CAM differs", "both differ")
DISAGREEMENT_PALETTE = np.array([[40, 40, 40], [230, 159, 0], [86, 180, 233], [213, 94, 0]], np.uint8)


def legend(classes, palette, present=None, swatch: int = 18, columns: int = 1) -> np.ndarray:
    """A legend image: one colour swatch and name per class (only ``present`` ids if given)."""
    ids = list(range(len(classes))) if present is None else [int(i) for i in present]
    font = ImageFont.load_default(size=14)
    rows = -(-len(ids) // columns) or 1
    col_width = swatch + 12 + max((int(font.getlength(classes[i])) for i in ids), default=40)
    canvas = Image.new("RGB", (columns * (col_width + 10) + 6, rows * (swatch + 6) + 6), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for n, i in enumerate(ids):
        x0, y0 = 6 + (n // rows) * (col_width + 10), 6 + (n % rows) * (swatch + 6)
        draw.rectangle((x0, y0, x0 + swatch, y0 + swatch), fill=tuple(int(v) for v in palette[i]),
                       outline=(0, 0, 0))
        draw.text((x0 + swatch + 8, y0 + 1), classes[i], fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
