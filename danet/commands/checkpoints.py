"""``danet convert`` and ``danet info``: any DANet checkpoint -> our .safetensors, and what a file holds."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

DILATION_HELP = ("layer4 dilations: 2-4-4, multi-grid (4-8-16), os16 (1-2-2), 2-4-8, none (1-1-1, stride 32); "
                 "default: the layout's own")
DATASET_HELP = "label set: cityscapes, ade20k, voc, pascal_context, pascal_context59, camvid; default: guessed"


def _fail(message: str):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def convert(
    source: Path = typer.Argument(..., help="checkpoint in any supported layout (.pth, .pth.tar, .pt, .safetensors)"),
    destination: Path = typer.Argument(..., help="output file, .safetensors"),
    dilation: Optional[str] = typer.Option(None, help=DILATION_HELP),
    dataset: Optional[str] = typer.Option(None, help=DATASET_HELP),
    align_corners: Optional[bool] = typer.Option(None, "--align-corners/--no-align-corners",
                                                 help="bilinear upsampling mode; default: the layout's own"),
    dtype: str = typer.Option("float32", help="float32 or float16 for the written weights"),
):
    """Convert a DANet checkpoint to danet-lens .safetensors (weights + metadata)."""
    from ..checkpoints import convert as run_convert, describe

    try:
        loaded = run_convert(source, destination, dilation=dilation, dataset=dataset,
                             align_corners=align_corners, dtype=dtype)
    except ValueError as error:          # CheckpointError is a ValueError
        _fail(str(error))
    summary = describe(loaded)
    typer.echo(f"wrote {destination}: {summary['layout']} layout, {summary['backbone']} "
               f"({summary['stem'] or 'timm'}), dilation {summary['dilation']}, "
               f"{summary['num_classes']} classes ({summary['dataset']})")
    for warning in loaded.warnings:
        typer.echo(f"warning: {warning}", err=True)


def info(
    checkpoint: Optional[Path] = typer.Argument(None, help="checkpoint file; default: the embedded model"),
    dilation: Optional[str] = typer.Option(None, help=DILATION_HELP),
    dataset: Optional[str] = typer.Option(None, help=DATASET_HELP),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """Show what a checkpoint holds: layout, backbone, stem, dilations, classes, parameters, metadata."""
    from ..checkpoints import describe
    from ..loading import load_any

    try:
        options = {k: v for k, v in (("dilation", dilation), ("dataset", dataset)) if v is not None}
        if checkpoint is None and options:
            _fail("--dilation and --dataset apply to a checkpoint file, not the embedded model")
        loaded = load_any(checkpoint, device="cpu", **options)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    summary = describe(loaded)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    classes = summary["classes"]
    shown = ", ".join(classes[:12]) + (f", ... (+{len(classes) - 12})" if len(classes) > 12 else "")
    rows = [
        ("source", summary["source"] or "embedded default"),
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
    rows += [(f"meta {key}", value) for key, value in summary["extra"].items()]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")
    for warning in summary["warnings"]:
        typer.echo(f"warning: {warning}")


def register(app: typer.Typer) -> None:
    app.command()(convert)
    app.command()(info)
