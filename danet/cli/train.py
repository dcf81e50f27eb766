"""``danet train``: DANet on a CamVid-layout folder (``danet.jobs.train.train``), resumable; data-parallel
when launched by ``torchrun`` (``docs/distributed.md``)."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from danet.runtime import distributed
from danet.errors import InputError
from danet.jobs.train import TrainConfig, train as run_training
from danet.cli.errors import reports_errors
from danet.cli.options import Device
from danet.cli.ranges import ranged


MAX_CROP_SIDE = 4096
"""Training frames are at most 4 MP (``camvid.DATASET_MAX_PIXELS``): a larger crop only pads."""


def parse_crop(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--crop {text!r} is not H,W in whole pixels") from None
    if not (32 <= height <= MAX_CROP_SIDE and 32 <= width <= MAX_CROP_SIDE):
        raise InputError(f"--crop {text!r}: each side must be 32 to {MAX_CROP_SIDE} pixels")
    return height, width


def parse_scale(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--scale {text!r} is not LOW,HIGH") from None
    if not 0.1 <= low <= high <= 4:
        raise InputError(f"--scale {text!r}: need 0.1 <= LOW <= HIGH <= 4")
    return low, high


def command_line() -> str:
    """``danet train ...`` as typed (for the model card), or "" when not run from a shell."""
    if "train" not in sys.argv[1:]:
        return ""
    return " ".join(["danet", *map(shlex.quote, sys.argv[sys.argv.index("train", 1):])])


@reports_errors
def train(
    data: Path = typer.Option(..., help="CamVid-layout folder (train/, trainannot/, val/, valannot/)"),
    out: Path = typer.Option(Path("runs/camvid"), help="run folder: last.pt (resume), log.jsonl, best.safetensors"),
    backbone: str = typer.Option("mobilenetv2_100", help="timm backbone name or resnet18/34/50/101/152"),
    head_channels: int = ranged("train", "--head-channels", 128, "DA head width"),
    output_stride: int = ranged("train", "--output-stride", 8, "the backbone's output stride"),
    imagenet: bool = typer.Option(True, help="initialise the backbone from the offline ImageNet weights"),
    epochs: int = ranged("train", "--epochs", 30, "passes over the training set"),
    batch_size: int = ranged("train", "--batch-size", 8, "per process: under torchrun the effective batch is N "
                             "times this"),
    lr: float = ranged("train", "--lr", 1e-3, "head learning rate (the backbone's is half); not scaled under "
                       "torchrun"),
    crop: str = typer.Option("288,384", help=f"training crop H,W (each 32 to {MAX_CROP_SIDE})"),
    scale: str = typer.Option("0.75,1.5", help="random rescale range LOW,HIGH before cropping (0.1 to 4)"),
    dropout: float = ranged("train", "--dropout", 0.1, "dropout before each classifier"),
    freeze_bn: bool = typer.Option(False, help="BatchNorm keeps its running statistics (small per-process batches)"),
    sync_bn: bool = typer.Option(False, help="SyncBatchNorm across torchrun processes (CUDA only)"),
    class_weights: str = typer.Option("sqrt-median", help="none | median | sqrt-median"),
    init: Optional[Path] = typer.Option(None, help="start from this checkpoint's weights (any layout, same "
                                        "backbone and widths): fine-tuning; replaces --imagenet"),
    init_parts: str = typer.Option("all", help="all | backbone: with --init, copy every weight, or the "
                                   "backbone only (a new head, alpha = beta = 0, any width)"),
    freeze_backbone: bool = typer.Option(False, help="train the head only; the backbone keeps its weights "
                                         "and BatchNorm statistics"),
    key_channels: Optional[int] = ranged("train", "--key-channels", None, "PAM query/key width d; default: "
                                         "head channels / 8"),
    attention_lr_scale: float = ranged("train", "--attention-lr-scale", 1.0, "alpha and beta learn at lr times "
                                       "this, without weight decay"),
    ohem_thresh: Optional[float] = ranged("train", "--ohem-thresh", None, "online hard example mining: train on "
                                          "pixels whose true-class probability is below this (0.7 is usual)"),
    ohem_min_kept: int = ranged("train", "--ohem-min-kept", 100_000, "with --ohem-thresh, at least this many "
                                "hardest pixels per batch (per process under torchrun)"),
    aux_weight: float = ranged("train", "--aux-weight", 0.5, "weight of the PAM- and CAM-branch losses"),
    seed: int = ranged("train", "--seed", 0, "seed of the initialisation, crops and order"),
    device: Device = "auto",
    threads: Optional[int] = ranged("train", "--threads", None, "CPU threads"),
    max_steps: Optional[int] = ranged("train", "--max-steps", None, "stop after this many steps"),
    export: Optional[Path] = typer.Option(None, help="also write the best model here (.safetensors)"),
):
    """Train DANet on CamVid (CUDA uses mixed precision); resumes from OUT/last.pt when it exists."""
    config = TrainConfig(data=str(data), out=str(out), backbone=backbone, head_channels=head_channels,
                         output_stride=output_stride, imagenet=imagenet, epochs=epochs, batch_size=batch_size,
                         lr=lr, crop=parse_crop(crop), scale=parse_scale(scale), class_weights=class_weights,
                         seed=seed, device=device, threads=threads, max_steps=max_steps,
                         export=str(export) if export else None, dropout=dropout, freeze_bn=freeze_bn,
                         sync_bn=sync_bn, init=str(init) if init else None,
                         attention_lr_scale=attention_lr_scale, init_parts=init_parts,
                         freeze_backbone=freeze_backbone, key_channels=key_channels,
                         ohem_thresh=ohem_thresh, ohem_min_kept=ohem_min_kept, aux_weight=aux_weight,
                         command=command_line())
    with distributed.process_group(device) as ctx:
        best = run_training(config, log=typer.echo)
        if ctx.is_main:
            typer.echo(json.dumps({"best_val_miou": best.get("miou"), "epoch": best.get("epoch")}))
