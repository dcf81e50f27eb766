"""``danet predict``: colour masks and overlays for many images (``danet.jobs.predict.predict_images``);
under ``torchrun`` the images are shared across the processes and rank 0 writes the manifest."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from danet.runtime import distributed
from danet.jobs.inputs import collect_images
from danet.jobs.predict import predict_images
from danet.cli.errors import fail, reports_errors
from danet.cli.options import ONE_RUN, AlignCorners, Checkpoint, Dataset, Device, Dilation, load_chosen
from danet.cli.ranges import ranged


@reports_errors
def predict(
    inputs: List[Path] = typer.Argument(..., metavar="IMAGES_OR_DIRS", help="image files and/or folders"),
    out: Path = typer.Option(..., "--out", help="output folder (one sub-folder per image)" + ONE_RUN),
    checkpoint: Checkpoint = None,
    dilation: Dilation = None,
    dataset: Dataset = None,
    align_corners: AlignCorners = None,
    device: Device = "auto",
    batch_size: Optional[int] = ranged("predict", "--batch-size", None,
                                       "images of one size per forward pass; default 8 on a GPU, on the CPU "
                                       "as many as hold 65,536 pixels (1 frame, up to 64 thumbnails)"),
    save_logits: bool = typer.Option(False, help="also write logits.npz (logits and probabilities)"),
    logits_dtype: str = typer.Option("float16", help="float16 (23 MB per 480x360 CamVid frame) or float32"),
    opacity: float = ranged("predict", "--opacity", 0.5, "mask opacity in the overlays"),
    recursive: bool = typer.Option(False, help="also look in sub-folders"),
    force: bool = typer.Option(False, help="redo images that already have all their outputs"),
):
    """Colour masks and overlays of the fused, PAM and CAM predictions; resumable."""
    images = collect_images(inputs, recursive)           # bad paths fail before the model loads
    with distributed.process_group(device) as ctx:
        loaded = load_chosen(checkpoint, device=str(ctx.device), dilation=dilation, dataset=dataset,
                             align_corners=align_corners)
        report = predict_images(loaded, images, out, batch_size=batch_size, save_logits=save_logits,
                                logits_dtype=logits_dtype, opacity=opacity, force=force, progress=True)
    if ctx.is_main:
        typer.echo(report.summary())
    if report.failed:
        fail(report.failure())
