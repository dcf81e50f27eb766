"""One entry point for "give me a model": the embedded default or any checkpoint file."""
from __future__ import annotations

from pathlib import Path

from .checkpoints.metadata import LoadedModel
from .weights import load_default_model, load_safetensors_model


def load_any(checkpoint: str | Path | None = None, device: str = "auto", **options) -> LoadedModel:
    """``None`` -> the shipped default; a path -> ``danet.checkpoints.load_model`` (any layout).

    ``options`` (e.g. ``dilation``, ``dataset``) are passed to the checkpoint loader for what
    cannot be inferred from the file.
    """
    if checkpoint is None:
        return load_default_model(device=device)
    try:
        from .checkpoints import load_model
    except ImportError:  # layouts not available: our own format only
        return load_safetensors_model(checkpoint, device=device)
    return load_model(checkpoint, device=device, **options)
