"""The weights that ship with danet-lens, and how to load them (no network, ever)."""
from __future__ import annotations

from pathlib import Path

from .checkpoints.metadata import LoadedModel
from .checkpoints.safetensors_io import model_from_state, read_safetensors
from .checkpoints.metadata import ModelMeta
from .inspect import select_device

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_WEIGHTS = ASSETS / "weights" / "danet_mobilenetv2_camvid.safetensors"


def load_safetensors_model(path: str | Path, device: str = "cpu") -> LoadedModel:
    """Load one of our own ``.safetensors`` files (weights + ``ModelMeta``) in eval mode."""
    tensors, metadata = read_safetensors(path)
    meta = ModelMeta.from_strings(metadata)
    model = model_from_state(meta, tensors).to(select_device(device))
    return LoadedModel(model=model, meta=meta, source=str(path))


def load_default_model(device: str = "cpu") -> LoadedModel:
    """The embedded default: DANet (MobileNetV2, output stride 8) trained on CamVid."""
    if not DEFAULT_WEIGHTS.exists():
        raise FileNotFoundError(f"the default weights are missing: {DEFAULT_WEIGHTS}")
    return load_safetensors_model(DEFAULT_WEIGHTS, device)
