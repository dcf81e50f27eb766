"""The options every model-loading command shares, each defined once with one help text, and the
one place where they become a ``danet.load`` call.

A command declares ``checkpoint: Checkpoint = None``, ``device: Device = "auto"`` and so on;
``load_chosen`` loads what they name and reports any refusal as one error line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from danet.runtime import distributed
from danet.checkpoints.layouts import DILATION_ALIASES, DILATIONS
from danet.checkpoints.meta import LoadedModel
from danet.data.palettes import DATASETS
from danet.runtime.device import select_device
from danet.errors import DanetError, InputError
from danet.loader import load
from danet.cli.errors import fail, warn

FROM_FILE = "default: what the file records, else its layout's"
ONE_RUN = ("; one run per folder at a time: a second run on the same --out stops at once with \"in use by "
           "another danet run\" (intended: the two would overwrite each other); run two jobs at once with two "
           "folders")

Checkpoint = Annotated[Optional[Path], typer.Option(
    "--checkpoint", metavar="PATH", show_default=False,
    help="checkpoint in any supported layout (.safetensors, .pth, .pth.tar, .pt); default: the embedded CamVid model")]
Dilation = Annotated[Optional[str], typer.Option(
    "--dilation", metavar="PATTERN", show_default=False,
    help=f"ResNet layer4 dilations ({', '.join(DILATIONS)}, or {', '.join(sorted(DILATION_ALIASES))}); "
         f"for timm backbones only the output stride counts; {FROM_FILE}")]
Dataset = Annotated[Optional[str], typer.Option(
    "--dataset", metavar="NAME", show_default=False,
    help=f"label set ({', '.join(DATASETS)}); default: what the file records, else guessed from the class count")]
AlignCorners = Annotated[Optional[bool], typer.Option(
    "--align-corners/--no-align-corners", show_default=False,
    help=f"bilinear upsampling mode; {FROM_FILE}")]
Device = Annotated[str, typer.Option(
    "--device", metavar="DEVICE", help="auto (CUDA when available) | cpu | cuda[:N]")]


def load_chosen(checkpoint: Path | None, *, device: str = "auto", dilation: str | None = None,
                dataset: str | None = None, align_corners: bool | None = None) -> LoadedModel:
    """``danet.load`` with the shared options; its warnings go to stderr (from rank 0 only under
    ``torchrun``), a refusal ends the command."""
    with_device = select_device(device)          # a bad --device is its own error, not a load failure
    if checkpoint is not None and not checkpoint.exists():
        raise InputError(f"checkpoint {checkpoint} does not exist")
    try:
        loaded = load(checkpoint, device=with_device, dilation=dilation, dataset=dataset,
                      align_corners=align_corners)
    except DanetError as error:
        fail(f"could not load {f'checkpoint {checkpoint}' if checkpoint is not None else 'the embedded model'}: "
             f"{error}")
    for message in loaded.warnings:             # under torchrun: once, not once per process
        distributed.main_only(warn)(message)
    return loaded
