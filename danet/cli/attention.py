"""``danet attention`` (PAM maps, CAM matrix and channel maps as files), ``danet figure`` (the
paper-style figure) and ``danet measures`` (does attention matter here, and is it specific?), all
for one image and its query points; the work is in ``danet.jobs.attention`` and
``danet.jobs.measures``."""
from __future__ import annotations

from pathlib import Path
import json
from typing import Annotated, List, Optional

import typer

from danet.jobs.attention import check_figure_path, export_attention, export_figure, read_query
from danet.safety.outputs import prepare_output_dir
from danet.jobs.measures import measure_query, write_measures
from danet.cli.errors import reports_errors, warn
from danet.cli.options import ONE_RUN, AlignCorners, Checkpoint, Dataset, Device, Dilation, load_chosen
from danet.cli.ranges import ranged

Image = Annotated[Path, typer.Argument(metavar="IMAGE", help="image file", show_default=False)]
Points = Annotated[List[str], typer.Option("--point", metavar="X,Y", help="query pixel X,Y in the file's pixels (repeat for more points)")]


@reports_errors
def attention(
    image: Image,
    point: Points,
    out: Path = typer.Option(..., "--out", help="output folder" + ONE_RUN),
    channel: List[int] = ranged("attention", "--channel", [], "CAM channel to export before/after (repeatable)"),
    checkpoint: Checkpoint = None,
    dilation: Dilation = None,
    dataset: Dataset = None,
    align_corners: AlignCorners = None,
    device: Device = "auto",
    opacity: float = ranged("attention", "--opacity", 0.5, "heatmap opacity in the overlays"),
    top_k: int = ranged("attention", "--top-k", 5, "channels listed as CAM's strongest sources per --channel"),
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
    dpi: int = ranged("figure", "--dpi", 300, "resolution of raster output"),
    title: Optional[str] = typer.Option(None, help="figure title"),
    all_classes: bool = typer.Option(False, help="legend lists every class, not only predicted ones"),
    columns: int = ranged("figure", "--columns", 4, "panels per row"),
):
    """The paper-style figure: image with points, one attention map per point, fused/PAM/CAM, legend."""
    check_figure_path(out)
    query = read_query(image, point)
    loaded = load_chosen(checkpoint, device=device, dilation=dilation, dataset=dataset, align_corners=align_corners)
    export_figure(loaded, query, out, dpi=dpi, title=title, all_classes=all_classes, columns=columns)
    typer.echo(f"figure -> {out}")


@reports_errors
def measures(
    image: Image,
    point: Points = [],
    out: Optional[Path] = typer.Option(None, "--out", help="also write measures.json and the PNGs into this folder"
                                       + ONE_RUN),
    labels: Optional[Path] = typer.Option(None, "--labels", metavar="LABELMAP", show_default=False,
                                          help="label map of the image (ids or the dataset's colours): "
                                               "adds the fused mIoU change of each ablation"),
    as_json: bool = typer.Option(False, "--json", help="print the record (measures.json) instead of sentences"),
    max_k: int = ranged("measures", "--max-k", 64, "knockout: remove up to this many cells of each point's row"),
    draws: int = ranged("measures", "--draws", 5, "knockout: random removals averaged per k"),
    seed: int = ranged("measures", "--seed", 0, "seed of the query sample (large grids) and the random removals"),
    checkpoint: Checkpoint = None,
    dilation: Dilation = None,
    dataset: Dataset = None,
    align_corners: AlignCorners = None,
    device: Device = "auto",
):
    """Does attention matter here, and is it specific? Specificity, contribution, CAM saturation,
    ablation and, per --point, the knockout verdict of its attention map."""
    query = read_query(image, point, need_points=False)
    if out is not None:
        prepare_output_dir(out)                   # refuse a file in its place before the model loads
    loaded = load_chosen(checkpoint, device=device, dilation=dilation, dataset=dataset, align_corners=align_corners)
    report = measure_query(loaded, query, labels=labels, max_k=max_k, draws=draws, seed=seed)
    if report.labels is not None:
        for notice in report.labels.notices:
            warn(notice)
    record = write_measures(report, out) if out is not None else report.record()
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        return
    for line in report.sentences() + report.point_lines():
        typer.echo(line)
    if out is not None:
        typer.echo(f"-> {out}")
