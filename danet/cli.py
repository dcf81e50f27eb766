"""The ``danet`` command line. Each subcommand is a thin layer over the package."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="DANet attention inspector: train, evaluate, predict, export attention.")


@app.callback()
def _group():
    """DANet attention inspector: train, evaluate, predict, export attention."""


def fail(message: str, code: int = 1):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def train(
    data: Path = typer.Option(..., help="CamVid-layout folder (train/, trainannot/, val/, valannot/)"),
    out: Path = typer.Option(Path("runs/camvid"), help="run folder: last.pt (resume), log.jsonl, best.safetensors"),
    backbone: str = typer.Option("mobilenetv2_100", help="timm backbone name or resnet18/34/50/101"),
    head_channels: int = typer.Option(128, help="DA head width"),
    output_stride: int = typer.Option(8),
    imagenet: bool = typer.Option(True, help="initialise the backbone from the offline ImageNet weights"),
    epochs: int = typer.Option(30),
    batch_size: int = typer.Option(8),
    lr: float = typer.Option(1e-3),
    crop: str = typer.Option("288,384", help="training crop H,W"),
    class_weights: str = typer.Option("sqrt-median", help="none | median | sqrt-median"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto | cpu | cuda (CUDA uses mixed precision)"),
    threads: Optional[int] = typer.Option(None, help="CPU threads"),
    max_steps: Optional[int] = typer.Option(None, help="stop after this many steps"),
    export: Optional[Path] = typer.Option(None, help="also write the best model here (.safetensors)"),
):
    """Train DANet on CamVid; resumes from OUT/last.pt when it exists."""
    from .train import TrainConfig, train as run_training

    try:
        crop_hw = tuple(int(v) for v in crop.split(","))
        cfg = TrainConfig(data=str(data), out=str(out), backbone=backbone, head_channels=head_channels,
                          output_stride=output_stride, imagenet=imagenet, epochs=epochs, batch_size=batch_size,
                          lr=lr, crop=crop_hw, class_weights=class_weights, seed=seed, device=device,
                          threads=threads, max_steps=max_steps, export=str(export) if export else None)
        best = run_training(cfg, log=typer.echo)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    typer.echo(json.dumps({"best_val_miou": best.get("miou"), "epoch": best.get("epoch")}))


def _register_subcommands():
    """Each module in ``danet.commands`` adds its subcommands with ``register(app)``."""
    import importlib
    import pkgutil

    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(app)


_register_subcommands()


def main():  # console-script entry point
    app()


if __name__ == "__main__":
    main()
