"""Our own checkpoint format: ``.safetensors`` with the metadata of ``ModelMeta``."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..models import DANet
from .metadata import LoadedModel, ModelMeta


def save_model(model: DANet, meta: ModelMeta, path: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write weights (optionally cast, e.g. fp16) and metadata; BN counters are dropped."""
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous()
    save_file(tensors, str(path), metadata=meta.to_strings())


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    return tensors, metadata


def model_from_state(meta: ModelMeta, state: dict[str, torch.Tensor]) -> DANet:
    """Build the model ``meta`` describes and load ``state`` strictly (fp16 is upcast)."""
    model = DANet(meta.config)
    own = model.state_dict()
    state = {k: (v.to(own[k].dtype) if k in own and v.is_floating_point() else v) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise KeyError(f"weights do not match the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
    return model.eval()
