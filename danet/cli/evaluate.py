"""``danet evaluate``: scores of any loadable checkpoint on a CamVid-layout folder
(``danet.jobs.evaluate.evaluate_loaded``), with the model options every other command takes; under
``torchrun`` the images are shared across the processes and rank 0 prints the merged scores."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from danet.runtime import distributed
from danet.jobs.inputs import describe_model
from danet.safety.outputs import save_json
from danet.errors import InputError
from danet.jobs.evaluate import evaluate_loaded, scores_record
from danet.cli.errors import reports_errors
from danet.cli.options import AlignCorners, Checkpoint, Dataset, Device, Dilation, load_chosen


MAX_SCALES = 8


def parse_scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise InputError(f"--scales {text!r} is not a comma-separated list of numbers") from None
    if len(scales) > MAX_SCALES:
        raise InputError(f"--scales lists {len(scales)} scales; at most {MAX_SCALES} (each is a forward per image)")
    if not all(0.1 <= s <= 4 for s in scales):
        raise InputError(f"--scales {text!r}: each scale must lie between 0.1 and 4")
    return scales


@reports_errors
def evaluate(
    data: Path = typer.Option(..., help="folder in the CamVid layout (<split>/, <split>annot/)"),
    split: str = typer.Option("val", help="val | test | train (any <split> folder present)"),
    checkpoint: Checkpoint = None,
    dilation: Dilation = None,
    dataset: Dataset = None,
    align_corners: AlignCorners = None,
    device: Device = "auto",
    flip: bool = typer.Option(False, help="average with the horizontally flipped input"),
    scales: str = typer.Option("1.0", help="comma-separated inference scales, e.g. 0.75,1.0,1.25 (each 0.1 "
                                           "to 4, at most 8)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the scores (and the model) as JSON"),
):
    """mIoU over the dataset's classes, per-class IoU, pixel accuracy and confusion matrix."""
    scale_values = parse_scales(scales)
    with distributed.process_group(device) as ctx:
        loaded = load_chosen(checkpoint, device=str(ctx.device), dilation=dilation, dataset=dataset,
                             align_corners=align_corners)
        result = evaluate_loaded(loaded, data, split, flip=flip, scales=scale_values,
                                 progress=lambda items: tqdm(items, desc=f"evaluate {split}", disable=not ctx.is_main))
    if not ctx.is_main:
        return
    classes = loaded.meta.classes
    console = Console()
    table = Table(title=f"{split}: {result['images']} images")
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    for name, iou in zip(classes, result["iou"]):
        table.add_row(name, "-" if np.isnan(iou) else f"{iou * 100:.2f}")
    console.print(table)
    console.print(f"mIoU {result['miou'] * 100:.2f}  pixel accuracy {result['pixel_accuracy'] * 100:.2f}  "
                  f"mean class accuracy {result['mean_accuracy'] * 100:.2f}")
    console.print("confusion matrix (rows: ground truth, columns: prediction):")
    console.print(np.array2string(result["confusion"], max_line_width=200))
    if json_out:
        save_json(json_out, {**scores_record(result, classes), "model": describe_model(loaded),
                             "flip": flip, "scales": list(scale_values)})
