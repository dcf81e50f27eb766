"""Writing our own checkpoint format: ``.safetensors`` with the metadata of ``ModelMeta``."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from danet.models import Segmentor
from danet.checkpoints.meta import ModelMeta


def save_model(model: Segmentor, meta: ModelMeta, path: str | Path, dtype: torch.dtype | None = None) -> None:
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
