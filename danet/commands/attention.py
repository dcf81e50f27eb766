"""``danet attention`` (PAM maps, CAM matrix and channel maps as files) and ``danet figure``
(the paper-style figure), both for query points on one image.

Points are ``X,Y`` in the pixels of the file as given; if the image had to be downscaled on
loading they are scaled with it (the manifest records both).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

MANIFEST = "manifest.json"


def _fail(message: str):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _inspect(image_path: Path, point_texts: list[str], checkpoint, device, dilation, dataset):
    """Parse and check everything, load the model and run one inspection.

    Returns (loaded model, its description, loaded image, points in the image as used, points as
    given, result).
    """
    from ..batch import BatchInputError, check_points, describe_model, load_model, one_line, parse_point
    from ..data.images import ImageLoadError, load_image
    from ..inspection import inspect_image

    try:
        given = [parse_point(text) for text in point_texts]
        if not image_path.is_file():
            raise BatchInputError(f"{image_path} is not a file")
        picture = load_image(image_path)
        check_points(given, picture.original_size)
        scale_x = picture.size[0] / picture.original_size[0]
        scale_y = picture.size[1] / picture.original_size[1]
        used = [(min(x * scale_x, picture.size[0] - 1), min(y * scale_y, picture.size[1] - 1)) for x, y in given]
        loaded = load_model(checkpoint, device, dilation, dataset, warn=_warn)
        model_info = describe_model(loaded)          # hash now: the file may be replaced later
        result = inspect_image(loaded.model, picture.array, loaded.meta.mean, loaded.meta.std)
    except ImageLoadError as error:
        message = one_line(error)
        _fail(message if image_path.name in message else f"{image_path.name}: {message}")
    except (BatchInputError, OSError) as error:
        _fail(one_line(error))
    return loaded, model_info, picture, used, given, result


def attention(
    image: Path = typer.Argument(..., help="image file"),
    point: List[str] = typer.Option(..., "--point", help="query pixel X,Y (repeat for more points)"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    channel: List[int] = typer.Option([], "--channel", help="CAM channel to export before/after (repeatable)"),
    checkpoint: Optional[Path] = typer.Option(None, help="checkpoint file; default: the embedded model"),
    dilation: Optional[str] = typer.Option(
        None, help="layer4 dilation (2-4-4, multi-grid, os16, ...) for checkpoints that do not record it"),
    dataset: Optional[str] = typer.Option(None, help="label set (e.g. camvid), for checkpoints without one"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    opacity: float = typer.Option(0.5, min=0.0, max=1.0, help="heatmap opacity in the overlays"),
    top_k: int = typer.Option(5, min=1, help="channels listed as CAM's strongest sources per --channel"),
):
    """PAM attention maps of query points, the CAM matrix and channel maps, with a JSON manifest."""
    from tqdm import tqdm

    from ..batch import (BatchInputError, file_sha256, one_line, prepare_output_dir, save_json, save_npy,
                         save_png, save_text)
    from ..figures import cam_matrix_figure, save as save_fig
    from ..viz import heatmap, heatmap_overlay, mark_points

    _, model_info, picture, points, given, result = _inspect(image, point, checkpoint, device, dilation,
                                                             dataset)
    channels_total = result.cam_attention.shape[0]
    bad = [c for c in channel if not 0 <= c < channels_total]
    if bad:
        _fail(f"channel {bad[0]} does not exist; the CAM has channels 0..{channels_total - 1}")

    try:
        prepare_output_dir(out)
    except BatchInputError as error:
        _fail(one_line(error))
    (out / MANIFEST).unlink(missing_ok=True)       # the old manifest must not vouch for new files
    array = picture.array
    rows = result.rows(points)                      # (P, h, w), each sums to 1
    upsampled = result.upsample_maps(rows)
    files = []

    def keep(name):
        files.append(name)
        return out / name

    steps = len(points) + 2 + len(channel)
    with tqdm(total=steps, desc="attention", unit="file-set") as bar:
        save_png(keep("image_points.png"), mark_points(array, points))
        save_npy(keep("pam_maps.npy"), rows.astype(np.float32))
        bar.update(1)
        point_entries = []
        for index, ((x, y), (gx, gy), grid_map, full_map) in enumerate(zip(points, given, rows, upsampled)):
            row, col = result.pixel_to_cell(x, y)
            stem = f"pam_point{index + 1}"
            save_npy(keep(f"{stem}.npy"), grid_map.astype(np.float32))
            overlay = heatmap_overlay(array, full_map, opacity, vmin=0.0)
            save_png(keep(f"{stem}.png"), mark_points(overlay, [(x, y)], first_index=index))
            point_entries.append({
                "index": index + 1, "x": gx, "y": gy, "x_used": x, "y_used": y, "cell": [row, col],
                "cell_box": [round(v, 3) for v in result.cell_to_pixel_box(row, col)],
                "self_weight": float(grid_map[row, col]), "max_weight": float(grid_map.max()),
                "files": [f"{stem}.npy", f"{stem}.png"]})
            bar.update(1)

        matrix = result.cam_attention
        save_npy(keep("cam_matrix.npy"), matrix.astype(np.float32))
        with_rows = "\n".join(",".join(f"{v:.8g}" for v in line) for line in matrix) + "\n"
        save_text(keep("cam_matrix.csv"), with_rows)
        save_fig(cam_matrix_figure(matrix), keep("cam_matrix.png"), dpi=150)
        bar.update(1)

        channel_entries = []
        for c in channel:
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

    save_json(out / MANIFEST, {
        "model": model_info,
        "image": {"path": str(image), "sha256": file_sha256(image), "size": list(picture.size),
                  "original_size": list(picture.original_size), "notices": picture.notices},
        "grid_size": list(result.grid_size), "alpha": result.alpha, "beta": result.beta,
        "device": result.device, "forward_seconds": round(result.seconds, 4),
        "points": point_entries,
        "pam_maps": {"file": "pam_maps.npy", "shape": list(rows.shape),
                     "meaning": "softmax row of each query cell over the h x w grid (sums to 1)"},
        "cam": {"channels": channels_total, "files": ["cam_matrix.npy", "cam_matrix.csv", "cam_matrix.png"],
                "meaning": "row i: weights with which channel i gathers every channel j (rows sum to 1)"},
        "channels": channel_entries,
        "files": files,
    })
    typer.echo(f"{len(points)} point(s), {len(channel)} channel(s) -> {out}")


def figure(
    image: Path = typer.Argument(..., help="image file"),
    point: List[str] = typer.Option(..., "--point", help="query pixel X,Y (repeat for more points)"),
    out: Path = typer.Option(..., "--out", help="figure file: .png, .pdf or .svg"),
    checkpoint: Optional[Path] = typer.Option(None, help="checkpoint file; default: the embedded model"),
    dilation: Optional[str] = typer.Option(
        None, help="layer4 dilation (2-4-4, multi-grid, os16, ...) for checkpoints that do not record it"),
    dataset: Optional[str] = typer.Option(None, help="label set (e.g. camvid), for checkpoints without one"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    dpi: int = typer.Option(300, min=50, max=1200, help="resolution of raster output"),
    title: Optional[str] = typer.Option(None, help="figure title"),
    all_classes: bool = typer.Option(False, help="legend lists every class, not only predicted ones"),
    columns: int = typer.Option(4, min=2, max=8, help="panels per row"),
):
    """The paper-style figure: image with points, one attention map per point, fused/PAM/CAM, legend."""
    from ..figures import FIGURE_FORMATS, attention_figure, save as save_fig

    suffix = out.suffix.lstrip(".").lower()
    if suffix not in FIGURE_FORMATS:
        _fail(f"unsupported figure format {suffix or '(none)'!r}; use .png, .pdf or .svg")
    loaded, _, picture, points, _, result = _inspect(image, point, checkpoint, device, dilation, dataset)
    maps = result.rows_upsampled(points)
    predictions = {which: result.prediction(which) for which in ("fused", "pam", "cam")}
    fig = attention_figure(picture.array, points, maps, predictions, loaded.meta.classes, loaded.meta.palette,
                           all_classes=all_classes, title=title, columns=columns)
    save_fig(fig, out, dpi=dpi)
    typer.echo(f"figure -> {out}")


def _warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def register(app: typer.Typer) -> None:
    app.command()(attention)
    app.command()(figure)
