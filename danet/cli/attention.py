"""``danet attention`` (PAM maps, CAM matrix and channel maps as files) and ``danet figure`` (the
paper-style figure), both for query points on one image; the work is in ``danet.attention_export``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..attention_export import check_figure_path, export_attention, export_figure, read_query
from .errors import reports_errors
from .options import AlignCorners, Checkpoint, Dataset, Device, Dilation, load_chosen

Image = Annotated[Path, typer.Argument(metavar="IMAGE", help="image file", show_default=False)]
Points = Annotated[List[str], typer.Option("--point", metavar="X,Y", help="query pixel X,Y in the file's pixels (repeat for more points)")]


@reports_errors
def attention(
    image: Image,
    point: Points,
    out: Path = typer.Option(..., "--out", help="output folder"),
    channel: List[int] = typer.Option([], "--channel", help="CAM channel to export before/after (repeatable)"),
    checkpoint: Checkpoint = None,
    dilation: Dilation = None,
    dataset: Dataset = None,
    align_corners: AlignCorners = None,
    device: Device = "auto",
    opacity: float = typer.Option(0.5, min=0.0, max=1.0, help="heatmap opacity in the overlays"),
    top_k: int = typer.Option(5, min=1, help="channels listed as CAM's strongest sources per --channel"),
):
    """PAM attention maps of query points, the CAM matrix and channel maps, with a JSON manifest."""
    query = read_query(image, point)
    loaded = load_chosen(checkpoint, device=device, dilation=dilation, dataset=dataset, align_corners=align_corners)
    export_attention(loaded, query, out, channels=channel, opacity=opacity, top_k=top_k, progress=True)
    typer.echo(f"{len(query.used)} point(s), {len(channel)} channel(s) -> {out}")


@reports_errors
def figure(
    image: Image,
    point: Points,
    out: Path = typer.Option(..., "--out", help="figure file: .png, .pdf or .svg"),
    checkpoint: Checkpoint = None,
    dilation: Dilation = None,
    dataset: Dataset = None,
    align_corners: AlignCorners = None,
    device: Device = "auto",
    dpi: int = typer.Option(300, min=50, max=1200, help="resolution of raster output"),
    title: Optional[str] = typer.Option(None, help="figure title"),
    all_classes: bool = typer.Option(False, help="legend lists every class, not only predicted ones"),
    columns: int = typer.Option(4, min=2, max=8, help="panels per row"),
):
    """The paper-style figure: image with points, one attention map per point, fused/PAM/CAM, legend."""
    check_figure_path(out)
    query = read_query(image, point)
    loaded = load_chosen(checkpoint, device=device, dilation=dilation, dataset=dataset, align_corners=align_corners)
    export_figure(loaded, query, out, dpi=dpi, title=title, all_classes=all_classes, columns=columns)
    typer.echo(f"figure -> {out}")
