"""Download bundles of one inspection: a PNG of the figures, an ``.npz`` of the maps, a JSON record.

Pure functions returning bytes/str so the app (or a script) can hand them to a download button.
"""
from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from danet.checkpoints.meta import LoadedModel
from danet.inspection import InspectionResult


def encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def colour_bar(cmap: str, vmin: float, vmax: float, width: int, label: str = "", two_sided: bool = False
               ) -> np.ndarray:
    """An RGB colour bar ``width`` wide with its end values (and a unit label) under it.

    ``two_sided``: the bar's centre is 0 and each half spans one sign's range (the query-specific
    mode), so a "0" tick marks the centre.
    """
    from danet_app.display_modes import colour_lut

    font = ImageFont.load_default(size=12)
    strip = np.repeat(colour_lut(cmap)[np.linspace(0, 255, width).astype(int)][None], 10, axis=0)
    canvas = Image.new("RGB", (width, 42 if two_sided and label else 28), (255, 255, 255))
    canvas.paste(Image.fromarray(strip), (0, 0))
    draw = ImageDraw.Draw(canvas)
    low, high = f"{vmin:.3g}", f"{vmax:.3g}"
    draw.text((0, 12), low, fill=(0, 0, 0), font=font)
    draw.text((width - draw.textlength(high, font=font), 12), high, fill=(0, 0, 0), font=font)
    if two_sided:
        draw.text(((width - draw.textlength("0", font=font)) / 2, 12), "0", fill=(0, 0, 0), font=font)
    if label:
        draw.text(((width - draw.textlength(label, font=font)) / 2, 26 if two_sided else 12), label,
                  fill=(60, 60, 60), font=font)
    return np.asarray(canvas)


def heat_overlay(image: np.ndarray, values: np.ndarray, vmin: float, vmax: float, mode: str, cmap: str,
                 opacity: float) -> np.ndarray:
    """An (H, W) map over the RGB image as the attention view paints it, for the PNG: the mode's
    colour index (two-sided for query-specific) and colour table, colours fading in over
    ``FADE_BINS`` bins from the neutral one (so cells with next to no attention leave the image
    untinted, as on screen; the PNG used to tint every cell), NaN cells unpainted, then the
    canvas's "source over" blend at ``opacity``."""
    from danet_app.display_modes import (DIVERGING_CMAP, TWO_SIDED, colour_index, colour_lut, fade_alpha,
                                         neutral_bin)

    two_sided = mode in TWO_SIDED
    index = colour_index(values, vmin, vmax, two_sided=two_sided)
    lut = colour_lut(DIVERGING_CMAP if two_sided else cmap).astype(np.float32)
    alpha = (fade_alpha(index, neutral_bin(mode)) * float(opacity))[..., None]
    blended = np.asarray(image, dtype=np.float32) * (1 - alpha) + lut[np.maximum(index, 0)] * alpha
    return np.round(blended).clip(0, 255).astype(np.uint8)


def compose_panels(panels: list[tuple[str, np.ndarray]], columns: int = 4, panel_width: int = 360,
                   background=(255, 255, 255), colour_bars: list | None = None, bar_label: str = "") -> np.ndarray:
    """Lay titled RGB panels out on a grid (each scaled to ``panel_width``), like the page shows them.

    ``colour_bars[i]`` = (cmap, vmin, vmax[, two_sided]) puts panel i's own colour bar under it
    (None: no bar).
    """
    if not panels:
        raise ValueError("nothing to compose")
    font = ImageFont.load_default(size=15)
    title_h = 24
    bars = list(colour_bars or []) + [None] * len(panels)
    scaled = []
    for (title, array), bar in zip(panels, bars):
        image = Image.fromarray(np.asarray(array, dtype=np.uint8))
        height = max(1, round(image.height * panel_width / image.width))
        image = image.resize((panel_width, height), Image.BILINEAR)
        if bar is not None:
            strip = Image.fromarray(colour_bar(bar[0], bar[1], bar[2], panel_width, bar_label, *bar[3:4]))
            stacked = Image.new("RGB", (panel_width, height + strip.height + 2), background)
            stacked.paste(image, (0, 0))
            stacked.paste(strip, (0, height + 2))
            image = stacked
        scaled.append((title, image))
    columns = max(1, min(columns, len(scaled)))
    rows = -(-len(scaled) // columns)
    row_heights = [max(img.height for _, img in scaled[r * columns:(r + 1) * columns]) + title_h
                   for r in range(rows)]
    gap = 8
    canvas = Image.new("RGB", (columns * (panel_width + gap) + gap, sum(row_heights) + gap * (rows + 1)),
                       background)
    draw = ImageDraw.Draw(canvas)
    y = gap
    for r in range(rows):
        for c, (title, image) in enumerate(scaled[r * columns:(r + 1) * columns]):
            x = gap + c * (panel_width + gap)
            draw.text((x, y + 3), title, fill=(0, 0, 0), font=font)
            canvas.paste(image, (x, y + title_h))
        y += row_heights[r] + gap
    return np.asarray(canvas)


def figure_with_key(figure: np.ndarray, title: str, legend: np.ndarray | None = None,
                    background=(255, 255, 255)) -> np.ndarray:
    """``figure`` with a title line on top (the model's name) and the class legend on its right."""
    font = ImageFont.load_default(size=16)
    body = Image.fromarray(np.asarray(figure, dtype=np.uint8))
    key = Image.fromarray(np.asarray(legend, dtype=np.uint8)) if legend is not None else None
    width = body.width + (key.width + 16 if key is not None else 0)
    height = 30 + max(body.height, key.height + 8 if key is not None else 0)
    canvas = Image.new("RGB", (width, height), background)
    ImageDraw.Draw(canvas).text((8, 7), title, fill=(0, 0, 0), font=font)
    canvas.paste(body, (0, 30))
    if key is not None:
        canvas.paste(key, (body.width + 8, 38))
    return np.asarray(canvas)


def npz_bundle(result: InspectionResult, points: list[tuple[int, int]], rows: np.ndarray | None,
               classes: tuple[str, ...], labels: np.ndarray | None = None) -> bytes:
    """Compressed ``.npz`` of the predictions, the clicked points' PAM maps and the CAM matrix.

    Arrays: ``fused/pam/cam_prediction`` (H, W), ``points`` (P, 2) as (x, y), ``cells`` (P, 2) as
    (row, col), ``pam_attention`` (P, h, w) softmax rows, ``cam_attention`` (C, C),
    ``cam_input/cam_output`` (C, h, w), ``alpha``, ``beta``, ``classes``, optional ``labels``.
    """
    dtype = np.uint8 if len(classes) <= 255 else np.int32
    arrays = {f"{which}_prediction": result.prediction(which).astype(dtype)
              for which in result.outputs}
    arrays["points"] = np.asarray(points, dtype=np.int32).reshape(-1, 2)
    arrays["cells"] = np.asarray([result.pixel_to_cell(x, y) for x, y in points], dtype=np.int32).reshape(-1, 2)
    gh, gw = result.grid_size
    arrays["pam_attention"] = (np.zeros((0, gh, gw), np.float32) if rows is None
                               else np.asarray(rows, dtype=np.float32))
    if result.cam_attention is not None:          # DANet's CAM
        arrays["cam_attention"] = np.asarray(result.cam_attention, np.float32)
        arrays["cam_input"] = np.asarray(result.cam_input, np.float32)
        arrays["cam_output"] = np.asarray(result.cam_output, np.float32)
    for term, gain in result.gains.items():       # DANet: alpha (pam), beta (cam)
        arrays[{"pam": "alpha", "cam": "beta"}.get(term, f"{term}_gain")] = np.float32(gain)
    arrays["classes"] = np.asarray(classes)
    if labels is not None:
        arrays["labels"] = np.asarray(labels).astype(np.int32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def size_record(height: int, width: int) -> dict[str, int]:
    """A size as the JSON record writes every size: named, so nobody guesses [W, H] or [H, W]."""
    return {"height": int(height), "width": int(width)}


def model_summary(loaded: LoadedModel, weights_sha256: str, model_id: str) -> dict:
    """The JSON-friendly description of a model: identity (content hash), layout, config, labels."""
    meta = loaded.meta
    return {"id": model_id, "sha256": weights_sha256, "source": loaded.source, "layout": meta.layout,
            "config": meta.config.to_dict(), "dataset": meta.dataset.name, "classes": list(meta.classes),
            "ignore_index": meta.dataset.ignore_index, "mean": list(meta.mean), "std": list(meta.std),
            "warnings": list(loaded.warnings)}


def image_summary(name: str, sha256: str, size: tuple[int, int], original_size: tuple[int, int]) -> dict:
    """``size`` is what the network saw, ``original_size`` the file's; both (height, width)."""
    return {"name": name, "sha256": sha256, "size": size_record(*size),
            "original_size": size_record(*original_size)}


def json_record(model: dict, image: dict, result: InspectionResult, points: list[dict],
                settings: dict | None = None, metrics: dict | None = None) -> str:
    """A reproducible record of what was inspected: model, image hash, device, clicked points."""
    record = {
        "tool": "danet-lens",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "image": image,
        "inference": {"device": result.device, "forward_seconds": round(result.seconds, 4),
                      "image_size": size_record(*result.image_size),
                      "grid_size": size_record(*result.grid_size),
                      "head": result.head, "gains": dict(result.gains),
                      **({"alpha": result.alpha, "beta": result.beta} if result.head == "da" else {})},
        "points": points,
        "settings": settings or {},
    }
    if metrics:
        record["metrics"] = metrics
    return json.dumps(record, indent=2, default=_json_default)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def metrics_for_json(scored: dict[str, dict], classes: tuple[str, ...]) -> dict:
    """``state.score_outputs`` output -> plain numbers (NaN -> None) per output."""
    def number(value):
        value = float(value)
        return None if np.isnan(value) else round(value, 5)

    return {which: {"miou": number(s["miou"]), "pixel_accuracy": number(s["pixel_accuracy"]),
                    "iou": {name: number(v) for name, v in zip(classes, s["iou"])}}
            for which, s in scored.items()}
