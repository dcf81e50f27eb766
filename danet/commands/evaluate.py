"""``danet evaluate``: scores of any loadable checkpoint on a CamVid-layout folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer


def evaluate(
    data: Path = typer.Option(..., help="folder in the CamVid layout (<split>/, <split>annot/)"),
    split: str = typer.Option("val", help="val | test | train (any <split> folder present)"),
    checkpoint: Optional[Path] = typer.Option(None, help="checkpoint file; default: the embedded model"),
    flip: bool = typer.Option(False, help="average with the horizontally flipped input"),
    scales: str = typer.Option("1.0", help="comma-separated inference scales, e.g. 0.75,1.0,1.25"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the scores as JSON"),
):
    """mIoU over the dataset's classes, per-class IoU, pixel accuracy and confusion matrix."""
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from ..evaluate import evaluate_model
    from ..loading import load_any

    try:
        loaded = load_any(checkpoint, device=device)
        meta = loaded.meta
        ignore = meta.dataset.ignore_index if meta.dataset.ignore_index is not None else 255
        result = evaluate_model(loaded.model, data, split, num_classes=meta.config.num_classes,
                                ignore_index=ignore, flip=flip,
                                scales=tuple(float(s) for s in scales.split(",")), mean=meta.mean,
                                std=meta.std, progress=lambda items: tqdm(items, desc=f"evaluate {split}"))
    except (FileNotFoundError, ValueError, KeyError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1)
    console = Console()
    table = Table(title=f"{split}: {result['images']} images")
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    for name, iou in zip(meta.classes, result["iou"]):
        table.add_row(name, "-" if np.isnan(iou) else f"{iou * 100:.2f}")
    console.print(table)
    console.print(f"mIoU {result['miou'] * 100:.2f}  pixel accuracy {result['pixel_accuracy'] * 100:.2f}  "
                  f"mean class accuracy {result['mean_accuracy'] * 100:.2f}")
    console.print("confusion matrix (rows: ground truth, columns: prediction):")
    console.print(np.array2string(result["confusion"], max_line_width=200))
    if json_out:
        json_out.write_text(json.dumps({
            "split": split, "images": result["images"], "miou": result["miou"],
            "pixel_accuracy": result["pixel_accuracy"], "mean_accuracy": result["mean_accuracy"],
            "iou": dict(zip(meta.classes, [None if np.isnan(v) else float(v) for v in result["iou"]])),
            "confusion": result["confusion"].tolist()}, indent=2))


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
