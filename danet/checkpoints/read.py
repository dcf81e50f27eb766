"""Reading a checkpoint's bytes safely: safetensors or ``torch.load(weights_only=True)`` only.

The format is decided from the first bytes, never from the name alone; safetensors is tried
first, since about one valid header length in 32 starts with the byte a pickle starts with.

Every pickle (torch zip or legacy) is unpickled in a short-lived child process with memory,
CPU and wall-clock limits (``isolated.py`` on ``danet.safety.sandbox``): ``weights_only`` stops code from running, but not a
pickle that crashes the unpickler, hashes quadratically or allocates what it likes. The child
hands back only checked tensors and bounded plain metadata. Safetensors files are read here,
in-process, but only after their header has passed ``check_safetensors_header``: a bounded
size, a bounded JSON depth, weight dtypes, shapes and offsets that fit the file (the format
cannot run code, and the checks bound what reading it costs).

The only non-tensor objects allowed in a pickle besides torch's defaults are numpy
scalars/arrays (training scripts store e.g. ``best_pred`` as ``numpy.float64``), whose
rebuilding runs no code. Nothing here interprets what the tensors mean.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes

from danet.errors import CheckpointError
from danet.safety.paths import FileRefused, open_regular as open_regular_file
from danet.safety.records import scan_json

# ---- bounds on what a checkpoint may declare (all far above any real DANet) ------------------
MAX_FILE_BYTES = 4 << 30          # 4 GiB: ResNet-152 DANet with SGD state is ~0.7 GB
MAX_HEADER_BYTES = 4 << 20        # safetensors JSON header; ResNet-152's is ~120 KB, 10k class names ~2 MB
MAX_TENSORS = 10_000              # ResNet-152 DANet has ~1,000 entries
MAX_DIM = 16_384                  # widest real dim: 2,048 channels, ADE20K-full's 3,688 classes
MAX_TENSOR_ELEMENTS = 1 << 26     # 64 M per tensor; the largest real one (conv5a on ResNet) is 9.4 M
MAX_TOTAL_ELEMENTS = 1 << 28      # 268 M (1 GiB in fp32); ResNet-152 DANet holds ~82 M
MAX_JSON_DEPTH = 32               # any metadata JSON; ours nests 3 deep (palette: list of lists)

FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
COUNTER_DTYPES = {"I64": torch.int64, "I32": torch.int32}     # BatchNorm's num_batches_tracked only
DTYPE_NAMES = {dtype: name for name, dtype in {**FLOAT_DTYPES, **COUNTER_DTYPES}.items()}
DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4}
COUNTER_SUFFIX = "num_batches_tracked"


@dataclass
class RawCheckpoint:
    """What a file holds before any interpretation."""

    obj: object                   # the unpickled object, or a dict of tensors for safetensors
    header: dict[str, str] | None  # safetensors ``__metadata__``
    container: str                # "safetensors" | "torch zip" | "torch legacy pickle"
    name: str


# ---- bounded JSON ------------------------------------------------------------------------------
def json_depth(text: str | bytes) -> int:
    """Deepest ``[``/``{`` nesting of a JSON text, brackets inside strings ignored; O(n), no recursion.

    ``json.loads`` recurses once per level (100,000 levels: RecursionError); this runs first.
    The scan is ``danet.safety.records.scan_json``, the one every untrusted JSON text goes through.
    """
    return scan_json(text).depth


def bounded_json(text: str | bytes, what: str, max_bytes: int = MAX_HEADER_BYTES, max_depth: int = MAX_JSON_DEPTH):
    """``json.loads`` with its size and nesting checked first; a ``ValueError`` naming ``what`` otherwise."""
    if len(text) > max_bytes:
        raise ValueError(f"{what} is {len(text):,} bytes, more than the {max_bytes:,} allowed")
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"{what} nests {depth} levels deep, more than the {max_depth} allowed")
    try:
        return json.loads(text)
    except (ValueError, RecursionError, OverflowError, MemoryError) as error:
        raise ValueError(f"{what} is not valid JSON ({str(error).splitlines()[0][:120]})") from None


# ---- what a tensor may be ----------------------------------------------------------------------
def tensor_problem(key: str, dtype: str | None, shape) -> str | None:
    """Why a declared tensor (dtype as a safetensors name, shape) is not a weight we accept, or None."""
    counter = key.endswith(COUNTER_SUFFIX)
    if dtype not in FLOAT_DTYPES and not (counter and dtype in COUNTER_DTYPES):
        allowed = "an integer" if counter else "a floating-point (F16/BF16/F32/F64)"
        return f"{key} has dtype {dtype}; it must be {allowed} tensor"
    if not isinstance(shape, (list, tuple)) or len(shape) > 8 or not all(type(d) is int for d in shape):
        return f"{key} has shape {str(shape)[:60]}, not a list of at most 8 whole numbers"
    if any(d < 1 for d in shape):
        return f"{key} has shape {list(shape)} with an empty dimension"
    if any(d > MAX_DIM for d in shape):
        return f"{key} has shape {list(shape)}, a dimension above {MAX_DIM:,} (no DANet layer is that wide)"
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        return f"{key} has {math.prod(shape):,} elements, more than the {MAX_TENSOR_ELEMENTS:,} allowed per tensor"
    return None


def torch_tensor_problem(key: str, tensor) -> str | None:
    """``tensor_problem`` for an unpickled tensor: also no sparse, nested, quantized, meta or subclass tensors."""
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        return f"{key} is a {type(tensor).__name__}, not a plain tensor"
    if tensor.layout != torch.strided:
        return f"{key} is a {str(tensor.layout).replace('torch.', '')} tensor; only dense tensors are weights"
    if tensor.is_nested or tensor.is_quantized or tensor.device.type != "cpu":
        kind = "nested" if tensor.is_nested else "quantized" if tensor.is_quantized else f"{tensor.device.type}-device"
        return f"{key} is a {kind} tensor; only dense CPU tensors are weights"
    return tensor_problem(key, DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype).replace("torch.", "")),
                          tuple(tensor.shape))


def check_tensor_set(problems, count: int, total: int, name: str) -> None:
    """Refuse a file on its first bad tensor, or when it holds too many tensors or elements."""
    problems = [p for p in problems if p]
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{name} holds a tensor that is not a usable weight: {problems[0]}{more}")
    if count > MAX_TENSORS:
        raise CheckpointError(f"{name} holds {count:,} tensors, more than the {MAX_TENSORS:,} a DANet can use")
    if total > MAX_TOTAL_ELEMENTS:
        raise CheckpointError(f"{name} holds {total:,} weight values, more than the {MAX_TOTAL_ELEMENTS:,} allowed "
                              "(ResNet-152 DANet has about 82 million)")


# ---- safetensors -------------------------------------------------------------------------------
def check_safetensors_header(header_bytes: bytes, size: int, name: str) -> dict:
    """The parsed header of a safetensors file of ``size`` bytes, or ``CheckpointError``.

    Checks, before any tensor is read: header size and depth, metadata as str -> str, each
    entry's dtype and shape (``tensor_problem``) and offsets that match the shape and lie
    inside the file without overlapping.
    """
    try:
        header = bounded_json(header_bytes, "its header", MAX_HEADER_BYTES, max_depth=3)
    except ValueError as error:
        raise CheckpointError(f"{name} is not a valid safetensors file: {error}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{name} is not a valid safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise CheckpointError(f"{name} is not a valid safetensors file: __metadata__ is not a map of strings")
    data_size = size - 8 - len(header_bytes)
    problems, spans, total = [], [], 0
    for key, entry in header.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("data_offsets"), list):
            raise CheckpointError(f"{name} is not a valid safetensors file: entry {key[:80]!r} is malformed")
        problem = tensor_problem(key, entry.get("dtype"), entry.get("shape"))
        if problem:
            problems.append(problem)
            continue
        offsets, shape = entry["data_offsets"], entry["shape"]
        expected = math.prod(shape) * DTYPE_BYTES[entry["dtype"]]
        if len(offsets) != 2 or not all(type(o) is int for o in offsets) \
                or not 0 <= offsets[0] <= offsets[1] <= data_size or offsets[1] - offsets[0] != expected:
            raise CheckpointError(f"{name} is not a valid safetensors file: {key[:80]} has offsets {offsets} "
                                  f"that do not hold {list(shape)} {entry['dtype']} values inside the file")
        spans.append(offsets)
        total += math.prod(shape)
    check_tensor_set(problems, len(header), total, name)
    spans.sort()
    if any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
        raise CheckpointError(f"{name} is not a valid safetensors file: two tensors share bytes")
    return metadata


def read_safetensors(data: bytes | None, path: Path | None, name: str, size: int) -> RawCheckpoint:
    """Our container, read in-process once its header has passed ``check_safetensors_header``."""
    if data is not None:
        head = data[:8]
    else:
        with path.open("rb") as handle:
            head = handle.read(8)
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_BYTES:
        raise CheckpointError(f"{name} is not a valid safetensors file: its header declares {length:,} bytes, more "
                              f"than the {MAX_HEADER_BYTES:,} allowed")
    if data is not None:
        header_bytes = data[8:8 + length]
    else:
        with path.open("rb") as handle:
            handle.seek(8)
            header_bytes = handle.read(length)
    header = check_safetensors_header(header_bytes, size, name)
    try:
        if path is not None:
            with safe_open(str(path), framework="pt") as handle:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        else:
            tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError, OSError) as error:
        raise CheckpointError(f"{name} is not a valid safetensors file: {error}") from None
    return RawCheckpoint(tensors, header, "safetensors", name)


# ---- pickles (run inside the sandbox's child process) ------------------------------------------
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


def _refused(name: str, error: Exception) -> CheckpointError:
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    what = f" (it asks for {found.group(1)})" if found else ""
    return CheckpointError(f"refused to load {name}: it is not a plain tensor checkpoint. Unpickling it would import "
                           f"and run code{what}, so it was stopped by torch.load(weights_only=True). Only files of "
                           "tensors, numbers, strings, lists and dicts are accepted; if you trust the file, re-save "
                           "its state_dict in a trusted environment or convert it to .safetensors")


def _out_of_memory(error: Exception) -> bool:
    text = str(error)
    return isinstance(error, MemoryError) or "can't allocate memory" in text or "bad_alloc" in text


def torch_load(handle, name: str):
    """``torch.load(weights_only=True)``; damage is a ``CheckpointError``, exhaustion a ``MemoryError``."""
    try:
        with _safe_globals():
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            raise _refused(name, error) from None
        raise CheckpointError(f"{name} is truncated or corrupted and cannot be read as a PyTorch checkpoint "
                              f"({str(error).splitlines()[0][:200]})") from None
    except Exception as error:  # noqa: BLE001 - on damaged bytes the unpickler raises IndexError, TypeError...
        if _out_of_memory(error):
            raise MemoryError(str(error)[:200]) from None
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{name} is truncated or corrupted and cannot be read as a PyTorch checkpoint "
                              f"({first[:200]})") from None


# ---- dispatch ----------------------------------------------------------------------------------
def sniff(head: bytes, size: int) -> str:
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


_sniff = sniff     # the name earlier tests use


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


def open_regular(path: Path, name: str) -> tuple[int, bytes]:
    """(size, first 16 bytes) of a regular file; FIFOs, devices and oversized files are refused unread."""
    try:
        with open_regular_file(path, MAX_FILE_BYTES) as (fd, size):
            return size, os.pread(fd, 16, 0)
    except FileRefused as refused:
        raise CheckpointError({
            "missing": f"no such file: {path}",
            "folder": f"{path} is not a file",
            "special": f"{path} is not a regular file (a pipe, socket or device); save the checkpoint to a file first",
            "too large": f"{name} is {refused.size / 2**30:.1f} GiB, more than the "
                         f"{MAX_FILE_BYTES / 2**30:.0f} GiB a DANet checkpoint can need",
            "unreadable": f"{path} could not be opened: {refused.detail}",
        }[refused.reason]) from None


def read_in_process(source: Path | bytes, name: str, size: int, head: bytes) -> RawCheckpoint:
    """Parse in this process: safetensors (checked header) or a pickle. The sandbox's child calls this."""
    data, path = (source, None) if isinstance(source, bytes) else (None, source)
    kind = sniff(head, size)
    if kind == "safetensors":
        return read_safetensors(data, path, name, size)
    obj = torch_load(io.BytesIO(data) if data is not None else str(path), name)
    return RawCheckpoint(obj, None, kind, name)


def read_checkpoint(source: str | Path | bytes, name: str | None = None, *, isolate: bool | None = None
                    ) -> RawCheckpoint:
    """Open a path or in-memory bytes (e.g. an upload) as safetensors or a PyTorch pickle.

    Pickles are always parsed in the sandbox's child process; safetensors too when ``isolate``
    (default: ``isolated.ISOLATE_SAFETENSORS``).
    """
    from danet.checkpoints import isolated
    from danet.safety import sandbox

    if isinstance(source, (bytes, bytearray, memoryview)):
        data, path = bytes(source), None
        name = name or "the uploaded file"
        head, size = data[:16], len(data)
        if size > MAX_FILE_BYTES:
            raise CheckpointError(f"{name} is {size / 2**30:.1f} GiB, more than the {MAX_FILE_BYTES / 2**30:.0f} GiB "
                                  "a DANet checkpoint can need")
    else:
        path = Path(source)
        name = name or path.name
        data = None
        size, head = open_regular(path, name)
    if size == 0:
        raise CheckpointError(f"{name} is empty")
    kind = sniff(head, size)
    safetensors_name = name.lower().endswith(".safetensors")
    if kind == "unknown" or (kind != "safetensors" and safetensors_name):
        raise _not_a_checkpoint(name, head, safetensors_name)
    isolate = isolated.ISOLATE_SAFETENSORS if isolate is None else isolate
    if kind == "safetensors" and not isolate:
        return read_safetensors(data, path, name, size)
    if not sandbox.SUPPORTED:
        return read_in_process(data if data is not None else path, name, size, head)
    return isolated.read_isolated(data if data is not None else path, name, size)
