"""``convert``: any supported checkpoint -> our ``.safetensors`` with full metadata."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.palettes import DatasetInfo
from ..errors import CheckpointError
from .load import load_model
from .meta import LoadedModel
from .save import save_model


def convert(source: str | Path | bytes, destination: str | Path, *, dilation: str | None = None,
            dataset: str | DatasetInfo | None = None, align_corners: bool | None = None,
            dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load ``source`` (any layout) on ``device`` and write it as our ``.safetensors`` with full metadata."""
    destination = Path(destination)
    if destination.suffix != ".safetensors":
        raise CheckpointError(f"the output must end in .safetensors, got {destination.name}")
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                 "fp16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype.lower()) or _bad_dtype(dtype)
    loaded = load_model(source, dilation=dilation, dataset=dataset, align_corners=align_corners, device=device)
    loaded.meta.extra = {k: v for k, v in loaded.meta.extra.items() if k != "container"}
    partial = destination.with_name(destination.name + ".part")
    save_model(loaded.model, loaded.meta, partial, dtype=dtype)
    partial.replace(destination)
    return loaded


def _bad_dtype(value: str):
    raise CheckpointError(f"unknown dtype {value!r}; use float32, float16 or bfloat16")
