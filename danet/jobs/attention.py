"""Attention for query points on one image, written to files: PAM maps, the CAM matrix and channel
maps with a JSON manifest (``export_attention``, behind ``danet attention``), or the paper-style
figure (``export_figure``, behind ``danet figure``).

Points are ``(x, y)`` in the pixels of the file as given; if the image had to be downscaled on
loading they are scaled with it (the manifest records both). ``read_query`` does every check that
needs no model, so a caller can refuse bad input before paying for loading one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from danet.jobs.inputs import check_points, describe_model, parse_point
from danet.safety.outputs import OutputError, clean_stale_partials, output_lock, prepare_output_dir, save_json, save_npy, save_png, save_text
from danet.safety.paths import file_sha256, regular_file
from danet.checkpoints.meta import LoadedModel
from danet.data.images import ImageLoadError, LoadedImage, load_image
from danet.errors import InputError
from danet.render.figures import FIGURE_FORMATS, attention_figure, cam_matrix_figure, save as save_figure
from danet.inspection import InspectionResult, inspect_image
from danet.render.overlays import heatmap, heatmap_overlay, mark_points

MANIFEST = "manifest.json"
MAX_QUERY_POINTS = 64
"""Points one command takes: each is a map (and files, or a figure panel) of its own."""


@dataclass
class Query:
    """An image and its query points, checked: ``given`` in the file's pixels, ``used`` in the
    pixels of ``picture`` (the decoded image, downscaled when the file was too large)."""

    path: Path
    picture: LoadedImage
    given: list[tuple[float, float]]
    used: list[tuple[float, float]]


def read_query(image: str | Path, points: list[str | tuple[float, float]], *, need_points: bool = True) -> Query:
    """Decode ``image`` and check ``points`` (``"X,Y"`` strings or pairs) against it; with
    ``need_points=False`` an empty list is allowed."""
    if len(points) > MAX_QUERY_POINTS:
        raise InputError(f"{len(points):,} points given; at most {MAX_QUERY_POINTS} (each is a map of its own)")
    given = [parse_point(p) if isinstance(p, str) else (float(p[0]), float(p[1])) for p in points]
    path = regular_file(image, "an image file", ImageLoadError)
    try:
        picture = load_image(path)
    except ImageLoadError as error:
        message = str(error)
        raise ImageLoadError(message if path.name in message else f"{path.name}: {message}") from None
    if given or need_points:
        check_points(given, picture.original_size)
    scale_x = picture.size[0] / picture.original_size[0]
    scale_y = picture.size[1] / picture.original_size[1]
    used = [(min(x * scale_x, picture.size[0] - 1), min(y * scale_y, picture.size[1] - 1)) for x, y in given]
    return Query(path, picture, given, used)


def check_figure_path(path: str | Path) -> str:
    """The figure format ``path``'s suffix asks for; anything but png/pdf/svg is an ``InputError``,
    and so is a path that is an existing folder (checked before any work)."""
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix not in FIGURE_FORMATS:
        raise InputError(f"unsupported figure format {suffix or '(none)'!r}; use .png, .pdf or .svg")
    if Path(path).is_dir():
        raise InputError(f"--out {path} is a folder; name the figure file to write (e.g. {Path(path) / 'figure.png'})")
    return suffix


def _inspect(loaded: LoadedModel, query: Query) -> InspectionResult:
    return inspect_image(loaded.model, query.picture.array, loaded.meta.mean, loaded.meta.std)


def export_attention(loaded: LoadedModel, query: Query, out: str | Path, *, channels: list[int] = (),
                     opacity: float = 0.5, top_k: int = 5, progress: bool = False) -> dict:
    """Write the PAM maps of ``query``'s points, the CAM matrix and the before/after maps of
    ``channels`` into the folder ``out``; returns the manifest (also written, last, as
    ``manifest.json``)."""
    model_info = describe_model(loaded)          # hash now: the file may be replaced later
    result = _inspect(loaded, query)
    channels = list(channels)
    if result.cam_attention is None and channels:
        raise InputError(f"--channel needs channel attention, which the {result.head} head does not have")
    channels_total = 0 if result.cam_attention is None else result.cam_attention.shape[0]
    bad = [c for c in channels if not 0 <= c < channels_total]
    if bad:
        raise InputError(f"channel {bad[0]} does not exist; the CAM has channels 0..{channels_total - 1}")
    out = prepare_output_dir(out)
    with output_lock(out):
        return _write_attention(loaded, query, result, out, model_info, channels, channels_total, opacity, top_k,
                                progress)


def _write_attention(loaded, query, result, out, model_info, channels, channels_total, opacity, top_k,
                     progress) -> dict:
    from danet import __version__

    try:
        (out / MANIFEST).unlink(missing_ok=True)   # the old manifest must not vouch for new files
    except OSError as error:
        raise OutputError(f"cannot replace {out / MANIFEST}: {error.strerror or error}") from None
    array, points, picture = query.picture.array, query.used, query.picture
    files = []

    def keep(name):
        files.append(name)
        return out / name

    with tqdm(total=len(points) * len(result.maps) + 2 + len(channels), desc="attention", unit="file-set",
              disable=not progress) as bar:
        save_png(keep("image_points.png"), mark_points(array, points))
        bar.update(1)
        point_entries, map_entries = [], {}
        for map_name, the_map in result.maps.items():      # DANet: one map, "pam"
            rows = the_map.rows(points)                     # (P, h, w)
            upsampled = result.upsample_maps(rows)
            save_npy(keep(f"{map_name}_maps.npy"), rows.astype(np.float32))
            map_entries[map_name] = {"file": f"{map_name}_maps.npy", "shape": list(rows.shape), "kind": the_map.kind,
                                     "meaning": f"the row of each query cell over the h x w grid: {the_map.describe()}"}
            for index, ((x, y), (gx, gy), grid_map, full_map) in enumerate(zip(points, query.given, rows, upsampled)):
                row, col = result.pixel_to_cell(x, y)
                stem = f"{map_name}_point{index + 1}"
                save_npy(keep(f"{stem}.npy"), grid_map.astype(np.float32))
                overlay = heatmap_overlay(array, full_map, opacity, vmin=0.0)
                save_png(keep(f"{stem}.png"), mark_points(overlay, [(x, y)], first_index=index))
                if map_name == next(iter(result.maps)):
                    point_entries.append({
                        "index": index + 1, "x": gx, "y": gy, "x_used": x, "y_used": y, "cell": [row, col],
                        "cell_box": [round(v, 3) for v in result.cell_to_pixel_box(row, col)],
                        "self_weight": float(grid_map[row, col]), "max_weight": float(grid_map.max()),
                        "files": []})
                point_entries[index]["files"] += [f"{stem}.npy", f"{stem}.png"]
                bar.update(1)

        if result.cam_attention is not None:
            matrix = result.cam_attention
            save_npy(keep("cam_matrix.npy"), matrix.astype(np.float32))
            with_rows = "\n".join(",".join(f"{v:.8g}" for v in line) for line in matrix) + "\n"
            save_text(keep("cam_matrix.csv"), with_rows)
            save_figure(cam_matrix_figure(matrix), keep("cam_matrix.png"), dpi=150)
        bar.update(1)

        channel_entries = []
        for c in channels:
            before, after = result.cam_input[c], result.cam_output[c]
            low, high = float(min(before.min(), after.min())), float(max(before.max(), after.max()))
            both = result.upsample_maps(np.stack([before, after]))
            for name, grid_map, full_map in (("before", before, both[0]), ("after", after, both[1])):
                save_npy(keep(f"channel{c}_{name}.npy"), grid_map.astype(np.float32))
                save_png(keep(f"channel{c}_{name}.png"), heatmap(full_map, "viridis", low, high))
            channel_entries.append({"channel": c, "range": [low, high],
                                    "top_sources": [[j, w] for j, w in result.channel_mix(c, top_k)],
                                    "files": [f"channel{c}_{n}.{e}" for n in ("before", "after")
                                              for e in ("npy", "png")]})
            bar.update(1)

    manifest = {
        "model": model_info,
        "image": {"path": str(query.path), "sha256": file_sha256(query.path), "size": list(picture.size),
                  "original_size": list(picture.original_size), "notices": picture.notices},
        "head": result.head, "grid_size": list(result.grid_size), "gains": dict(result.gains),
        **({"alpha": result.alpha, "beta": result.beta} if result.head == "da" else {}),
        "device": result.device, "forward_seconds": round(result.seconds, 4),
        "points": point_entries,
        "maps": map_entries,
        **({"pam_maps": {**map_entries["pam"], "meaning": "softmax row of each query cell over the h x w grid (sums to 1)"}}
           if "pam" in map_entries else {}),
        **({"cam": {"channels": channels_total, "files": ["cam_matrix.npy", "cam_matrix.csv", "cam_matrix.png"],
                    "meaning": "row i: weights with which channel i gathers every channel j (rows sum to 1)"}}
           if result.cam_attention is not None else {}),
        "channels": channel_entries,
        "files": files,
        "settings": {"model_sha256": model_info["sha256"], "config": loaded.meta.config.to_dict(),
                     "dataset": loaded.meta.dataset.name, "opacity": float(opacity), "top_k": int(top_k),
                     "channels": list(channels), "version": __version__},
    }
    save_json(out / MANIFEST, manifest)
    return manifest


def export_figure(loaded: LoadedModel, query: Query, out: str | Path, *, dpi: int = 300, title: str | None = None,
                  all_classes: bool = False, columns: int = 4) -> Path:
    """The paper-style figure (image with points, one attention map per point, fused/PAM/CAM
    predictions, legend) as ``out``: .png, .pdf or .svg."""
    check_figure_path(out)
    result = _inspect(loaded, query)
    maps = result.rows_upsampled(query.used)
    predictions = {which: result.prediction(which) for which in result.outputs}
    figure = attention_figure(query.picture.array, query.used, maps, predictions, loaded.meta.classes,
                              loaded.meta.palette, all_classes=all_classes, title=title, columns=columns)
    clean_stale_partials(Path(out))
    save_figure(figure, out, dpi=dpi)
    return Path(out)
