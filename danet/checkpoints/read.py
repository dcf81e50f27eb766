"""Reading a checkpoint's bytes safely: safetensors or ``torch.load(weights_only=True)`` only.

The format is decided from the first bytes, never from the name alone; safetensors is tried
first, since about one valid header length in 32 starts with the byte a pickle starts with.
The only non-tensor objects allowed in a pickle besides torch's defaults are numpy
scalars/arrays (training scripts store e.g. ``best_pred`` as ``numpy.float64``), whose
rebuilding runs no code. Nothing here interprets what the tensors mean.
"""
from __future__ import annotations

import contextlib
import io
import json
import pickle
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes

from ..errors import CheckpointError


@dataclass
class RawCheckpoint:
    """What a file holds before any interpretation."""

    obj: object                   # the unpickled object, or a dict of tensors for safetensors
    header: dict[str, str] | None  # safetensors ``__metadata__``
    container: str                # "safetensors" | "torch zip" | "torch legacy pickle"
    name: str


def _numpy_globals() -> list:
    """numpy scalar/array/dtype rebuilders: plain data, allowed next to torch's own types."""
    core = getattr(np, "_core", None) or np.core
    multiarray = core.multiarray
    allowed = [multiarray.scalar, np.dtype, multiarray._reconstruct, np.ndarray,
               (multiarray.scalar, "numpy.core.multiarray.scalar"),
               (multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += list({type(np.dtype(c)) for c in "?bhilqBHILQefdFD"})
    return allowed


def _safe_globals():
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(_numpy_globals())
    return contextlib.nullcontext()


def _sniff(head: bytes, size: int) -> str:
    """Which container the first 16 bytes announce. Safetensors first: its 8-byte header
    length can begin with 0x80, a pickle's first byte."""
    if len(head) >= 10:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 8 + header_len <= size and head[8:10] in (b'{"', b"{}", b"{ ", b"{\n"):
            return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "torch zip"
    if head[:1] == b"\x80":
        return "torch legacy pickle"
    return "unknown"


def _not_a_checkpoint(name: str, head: bytes, safetensors_name: bool) -> CheckpointError:
    if safetensors_name:
        return CheckpointError(f"{name} is not a valid safetensors file: its header (the first 8 bytes give the "
                               "header length, then JSON) is missing or corrupt")
    try:
        text = head.decode("utf-8")
        kind = f"it looks like a text file (starts with {text[:40]!r})"
    except UnicodeDecodeError:
        kind = f"its first bytes ({head[:8].hex(' ')}) match no checkpoint format"
    return CheckpointError(f"{name} is not a checkpoint: {kind}. Expected a PyTorch file (.pth/.pt/.pth.tar) "
                           "or .safetensors")


def _refused(name: str, error: Exception) -> CheckpointError:
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    what = f" (it asks for {found.group(1)})" if found else ""
    return CheckpointError(f"refused to load {name}: it is not a plain tensor checkpoint. Unpickling it would import "
                           f"and run code{what}, so it was stopped by torch.load(weights_only=True). Only files of "
                           "tensors, numbers, strings, lists and dicts are accepted; if you trust the file, re-save "
                           "its state_dict in a trusted environment or convert it to .safetensors")


def _torch_load(handle, name: str):
    try:
        with _safe_globals():
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            raise _refused(name, error) from None
        raise CheckpointError(f"{name} is truncated or corrupted and cannot be read as a PyTorch checkpoint "
                              f"({str(error).splitlines()[0][:200]})") from None
    except Exception as error:  # noqa: BLE001 - on damaged bytes the unpickler raises IndexError, TypeError...
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{name} is truncated or corrupted and cannot be read as a PyTorch checkpoint "
                              f"({first[:200]})") from None


def _read_safetensors(data: bytes | None, path: Path | None, name: str) -> RawCheckpoint:
    try:
        if path is not None:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        else:
            tensors = load_safetensors_bytes(data)
            (length,) = struct.unpack("<Q", data[:8])
            header = json.loads(data[8:8 + length]).get("__metadata__") or {}
    except (SafetensorError, ValueError, OSError) as error:
        raise CheckpointError(f"{name} is not a valid safetensors file: {error}") from None
    return RawCheckpoint(tensors, header, "safetensors", name)


def read_checkpoint(source: str | Path | bytes, name: str | None = None) -> RawCheckpoint:
    """Open a path or in-memory bytes (e.g. an upload) as safetensors or a PyTorch pickle."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, path = bytes(source), None
        name = name or "the uploaded file"
        head, size = data[:16], len(data)
    else:
        path = Path(source)
        name = name or path.name
        if not path.exists():
            raise CheckpointError(f"no such file: {path}")
        if not path.is_file():
            raise CheckpointError(f"{path} is not a file")
        data, size = None, path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(16)
    if size == 0:
        raise CheckpointError(f"{name} is empty")
    kind = _sniff(head, size)
    safetensors_name = name.lower().endswith(".safetensors")
    if kind == "safetensors":
        return _read_safetensors(data, path, name)
    if kind == "unknown" or safetensors_name:
        raise _not_a_checkpoint(name, head, safetensors_name)
    obj = _torch_load(io.BytesIO(data) if data is not None else str(path), name)
    return RawCheckpoint(obj, None, kind, name)
