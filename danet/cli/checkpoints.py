"""``danet convert`` (any DANet checkpoint -> our .safetensors) and ``danet info`` (what a file
holds; for the embedded default also its model card)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer

from danet.checkpoints import convert as convert_checkpoint, describe
from danet.errors import InputError
from danet.weights import ModelCard, default_card
from danet.cli.errors import reports_errors, warn
from danet.cli.options import AlignCorners, Checkpoint, Dataset, Device, Dilation, load_chosen


@reports_errors
def convert(
    source: Path = typer.Argument(..., metavar="SOURCE", help="checkpoint in any supported layout (.pth, .pth.tar, .pt, .safetensors)"),
    destination: Path = typer.Argument(..., metavar="DESTINATION", help="output file, .safetensors"),
    dilation: Dilation = None,
    dataset: Dataset = None,
    align_corners: AlignCorners = None,
    device: Device = "cpu",
    dtype: str = typer.Option("float32", help="float32, float16 or bfloat16 for the written weights"),
):
    """Convert a DANet checkpoint to danet-lens .safetensors (weights + metadata)."""
    loaded = convert_checkpoint(source, destination, dilation=dilation, dataset=dataset, align_corners=align_corners,
                                dtype=dtype, device=device)
    summary = describe(loaded)
    typer.echo(f"wrote {destination}: {summary['layout']} layout, {summary['backbone']} "
               f"({summary['stem'] or 'timm'}), dilation {summary['dilation']}, "
               f"{summary['num_classes']} classes ({summary['dataset']})")
    for warning in loaded.warnings:
        warn(warning)


@reports_errors
def info(
    path: Optional[Path] = typer.Argument(None, metavar="CHECKPOINT", show_default=False,
                                         help="same as --checkpoint"),
    checkpoint: Checkpoint = None,
    dilation: Dilation = None,
    dataset: Dataset = None,
    align_corners: AlignCorners = None,
    device: Device = "cpu",
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """Show what a checkpoint holds: layout, backbone, stem, dilations, classes, parameters, metadata;
    for the embedded default also its model card (val mIoU, licence, classes)."""
    if path is not None and checkpoint is not None and path != checkpoint:
        raise InputError("name the checkpoint once: as the argument or with --checkpoint")
    checkpoint = checkpoint or path
    loaded = load_chosen(checkpoint, device=device, dilation=dilation, dataset=dataset, align_corners=align_corners)
    summary = describe(loaded)
    card = default_card() if checkpoint is None else None
    if as_json:
        typer.echo(json.dumps({**summary, "card": dataclasses.asdict(card) if card else None}))
        return
    classes = summary["classes"]
    shown = ", ".join(classes[:12]) + (f", ... (+{len(classes) - 12})" if len(classes) > 12 else "")
    rows = [
        ("source", summary["source"]),
        ("layout", f"{summary['layout']}" + (f" - {summary['layout_title']}" if summary["layout_title"] else "")),
        ("container", summary["container"]),
        ("backbone", summary["backbone"]),
        ("stem", summary["stem"] or "-"),
        ("output stride", summary["output_stride"]),
        ("layer4 dilations", summary["layer4_dilations"] or "-"),
        ("align_corners", summary["align_corners"]),
        ("head channels", f"{summary['head_channels']} (PAM query/key {summary['key_channels']})"),
        ("alpha / beta", f"{summary['alpha']:.4g} / {summary['beta']:.4g}"),
        ("classes", f"{summary['num_classes']} ({summary['dataset']}): {shown}"),
        ("parameters", f"{summary['parameters']:,}"),
        ("mean / std", f"{summary['mean']} / {summary['std']}"),
    ]
    # The default's metadata is shown as its card; a file's as the raw strings it carries.
    rows += card_rows(card) if card else [(f"meta {key}", value) for key, value in summary["extra"].items()]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


def card_rows(card: ModelCard) -> list[tuple[str, str]]:
    """The model card's facts as ``info`` rows (the README shows the same card as a table)."""
    metrics = card.metrics
    rows = [
        ("model card", card.name + (f" (builder {card.builder})" if card.builder else "")),
        ("val mIoU", f"{metrics.get('val_miou')} % (pixel accuracy {metrics.get('val_pixel_accuracy')} %)"),
        ("per-class val IoU", ", ".join(f"{k} {v}" for k, v in card.per_class_iou.items())),
        ("void label", card.ignore_index),
        ("training data", card.training_data),
        ("trained with", card.training_command),
        ("evaluated with", card.evaluated_with),
        ("note", card.note),
        ("licence", card.licence),
    ]
    return [(key, value) for key, value in rows if value not in (None, "")]
