"""``convert``: any supported checkpoint -> our ``.safetensors`` with full metadata."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError

from danet.safety.outputs import atomic_path, clean_stale_partials, write_error
from danet.data.palettes import DatasetInfo
from danet.errors import CheckpointError, InputError
from danet.checkpoints.load import load_model
from danet.checkpoints.meta import LoadedModel
from danet.checkpoints.save import save_model


def convert(source: str | Path | bytes, destination: str | Path, *, dilation: str | None = None,
            dataset: str | DatasetInfo | None = None, align_corners: bool | None = None,
            dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load ``source`` (any layout) on ``device`` and write it as our ``.safetensors`` with full metadata."""
    destination = Path(destination)
    if destination.suffix != ".safetensors":
        raise CheckpointError(f"the output must end in .safetensors, got {destination.name}")
    if destination.is_dir():
        raise InputError(f"{destination} is a folder; name the .safetensors file to write")
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                 "fp16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype.lower()) or _bad_dtype(dtype)
    loaded = load_model(source, dilation=dilation, dataset=dataset, align_corners=align_corners, device=device)
    loaded.meta.extra = {k: v for k, v in loaded.meta.extra.items() if k != "container"}
    clean_stale_partials(destination)
    with atomic_path(destination) as partial:     # hidden temporary, fsynced, renamed; removed on failure
        try:
            save_model(loaded.model, loaded.meta, partial, dtype=dtype)
        except SafetensorError as error:          # the library's wrapper around an I/O failure
            raise write_error(destination, _as_os_error(error)) from None
    return loaded


def _as_os_error(error: Exception) -> Exception:
    """safetensors reports I/O failures as text ("... code: 28, kind: StorageFull ..."): recover the errno."""
    match = re.search(r"(?:code: |os error )(\d+)", str(error))
    return OSError(int(match.group(1)), os.strerror(int(match.group(1)))) if match else error


def _bad_dtype(value: str):
    raise CheckpointError(f"unknown dtype {value!r}; use float32, float16 or bfloat16")
