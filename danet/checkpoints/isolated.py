"""Reading an untrusted checkpoint in the limited child (``danet.safety.sandbox``), checked on both sides.

``torch.load(weights_only=True)`` runs no code, but a pickle can still crash the unpickler, make
it hash quadratically for minutes or allocate whatever it names (``bytearray(2_000_000_000)``,
a zip entry that inflates to gigabytes). So the child validates what it read
(``read.torch_tensor_problem``: dense float weights, integer BN counters only, no empty or absurd
dims, bounded counts; metadata depth- and size-bounded by ``plain``) and hands back only those
tensors, as a safetensors file in a private temp folder, plus a small JSON of checked metadata.
Whatever the child does, the caller gets one ``CheckpointError`` and nothing of the pickle ever
exists in the calling process.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from danet.checkpoints.mapping import unwrap
from danet.checkpoints.meta import OWN_META_KEY
from danet.checkpoints.read import (DTYPE_NAMES, MAX_JSON_DEPTH, RawCheckpoint, bounded_json, check_tensor_set,
                                    open_regular, read_in_process, read_safetensors, torch_tensor_problem)
from danet.errors import CheckpointError
from danet.safety.sandbox import EXIT_REFUSED, Limits, SandboxError, child_message, run_limited

# ---- limits (module constants so tests, and deployments, can lower them) ------------------------


ISOLATE_SAFETENSORS = False
"""Safetensors stay in-process: the format cannot run code, ``check_safetensors_header`` bounds
everything reading it costs, and the child would add its start-up and a copy of every weight
(measured in docs/hardening.md). Set True to isolate them too."""


MEMORY_FLOOR_MB = 512
"""Memory any file may use beyond the interpreter: unpickling bookkeeping, metadata, one
tensor's copy while it is written back. A 32-byte pickle asking for 2 GB stops here."""


MEMORY_PER_FILE_MB = 3
"""Plus this many MB per MB of file: torch stores tensors uncompressed, so a genuine checkpoint
needs about its own size once loaded, plus one tensor at a time while it is written back. Three
times leaves room; a zip entry that inflates 1000x does not fit."""


MEMORY_CEILING_MB = 8192
"""Never more than this, whatever the file size (ResNet-152 DANet with optimizer state: ~0.7 GB)."""


CPU_LIMIT_S = 30
"""CPU seconds; a 181 MB ResNet-50 zip parses and is written back in ~1.3 s. A hash bomb stops here."""


WALL_LIMIT_S = 90
"""Wall-clock seconds, for a child that sleeps or waits instead of computing; looser than the
CPU limit because a busy machine shares its cores."""


MAX_META_NODES = 100_000
"""Values (containers, numbers, strings) kept from a checkpoint's non-tensor metadata; mmseg's
``meta`` has a few hundred. A list holding itself 40 levels deep (2^40 values) stops here."""


MAX_META_CHARS = 4_000_000
"""Characters of metadata strings, counted per occurrence (mmseg's config text is ~30 KB)."""


MAX_RESULT_BYTES = 64 << 20     # the child's metadata JSON, read back by the parent


def limits_for(size: int) -> Limits:
    """The limits for a file of ``size`` bytes (read from the module constants at call time)."""
    memory = MEMORY_FLOOR_MB + MEMORY_PER_FILE_MB * math.ceil(size / 2**20)
    return Limits(int(min(memory, MEMORY_CEILING_MB)), CPU_LIMIT_S, WALL_LIMIT_S)


def read_isolated(source: Path | bytes, name: str, size: int) -> RawCheckpoint:
    """``read_in_process`` run in a limited child; only checked tensors and plain metadata come back."""
    limits = limits_for(size)
    folder = tempfile.mkdtemp(prefix="danet-read-")      # private (0700), removed below
    try:
        if isinstance(source, bytes):
            path = os.path.join(folder, "input")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
                handle.write(source)
        else:
            path = os.path.abspath(source)       # the server's working directory may differ
        try:
            code = run_limited(f"{__name__}:_read_child", [path, name, folder], limits, name, folder)
        except SandboxError as error:
            raise CheckpointError(str(error)) from None
        if code == EXIT_REFUSED:
            raise CheckpointError(child_message(folder, f"{name} could not be read"))
        if code != 0:
            detail = child_message(folder, f"exit status {code}")
            raise CheckpointError(f"{name} could not be read safely ({detail})")
        return _collect(folder, name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _collect(folder: str, name: str) -> RawCheckpoint:
    """Rebuild what the file held from the child's checked output (tensors + plain JSON)."""
    result_path = os.path.join(folder, "result.json")
    if os.path.getsize(result_path) > MAX_RESULT_BYTES:
        raise CheckpointError(f"{name} could not be read safely (its metadata is too large)")
    with open(result_path, "rb") as handle:
        result = bounded_json(handle.read(), "the reader's result", MAX_RESULT_BYTES, MAX_JSON_DEPTH + 8)
    tensor_path = Path(folder) / "tensors.safetensors"
    tensors = read_safetensors(None, tensor_path, name, tensor_path.stat().st_size).obj
    state = {key: tensors[key] for key in result["order"]}
    if result["container"] == "safetensors":
        return RawCheckpoint(state, result["header"], "safetensors", name)
    wrapper = result["wrapper"]
    obj = dict(state) if wrapper is None else {wrapper: state}
    if wrapper is not None and result["meta"] is not None:
        obj["meta"] = result["meta"]
    if result["own"] is not None:
        obj[OWN_META_KEY] = result["own"]
    return RawCheckpoint(obj, None, result["container"], name)


class _Budget:
    """Counts values and characters while metadata is copied; refuses past the bounds."""

    def __init__(self, name: str, what: str):
        self.name, self.what, self.nodes, self.chars = name, what, MAX_META_NODES, MAX_META_CHARS

    def spend(self, nodes: int = 1, chars: int = 0) -> None:
        self.nodes -= nodes
        self.chars -= chars
        if self.nodes < 0 or self.chars < 0:
            raise CheckpointError(f"{self.name} has {self.what} larger than danet-lens reads (more than "
                                  f"{MAX_META_NODES:,} values or {MAX_META_CHARS:,} characters, counting shared "
                                  "parts each time they occur)")


def plain(value, budget: _Budget, depth: int = 0):
    """``value`` as plain JSON data (dict/list/str/int/float/bool/None), depth- and size-bounded.

    Tensors and objects of other types become None (metadata never needs them); numpy scalars
    and small arrays become numbers and lists; integers beyond 64 bits become None.
    """
    budget.spend()
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(f"{budget.name} has {budget.what} nested more than {MAX_JSON_DEPTH} levels deep")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        budget.spend(0, len(value))
        return value
    if isinstance(value, int):
        return int(value) if -2**63 <= value < 2**63 else None
    if isinstance(value, float):
        return float(value)
    if isinstance(value, np.generic):
        return plain(value.item(), budget, depth + 1) if value.dtype.kind in "biuf" else None
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf" or value.size > 65_536:
            return None
        budget.spend(value.size)
        return plain(value.tolist(), budget, depth + 1)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if isinstance(key, (str, int, float, bool)) or key is None:
                text = key if isinstance(key, str) else str(key) if not isinstance(key, int) or abs(key) < 2**63 else None
                if text is not None:
                    budget.spend(0, len(text))
                    out[text] = plain(item, budget, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [plain(item, budget, depth + 1) for item in value]
    return None


def _own_strings(value, name: str) -> dict | None:
    """A training checkpoint's ``danet_lens`` strings, if they are a bounded map of strings."""
    if not isinstance(value, Mapping) or len(value) > 64:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    _Budget(name, "danet-lens metadata").spend(len(value), sum(len(k) + len(v) for k, v in value.items()))
    return dict(value)


def _write_tensors(path: str, state: dict) -> None:
    """A safetensors file of ``state``, written one tensor at a time (a view is copied only then)."""
    header, offset = {}, 0
    for key, tensor in state.items():
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as handle:
        handle.write(len(text).to_bytes(8, "little"))
        handle.write(text)
        for tensor in state.values():
            flat = tensor.detach().reshape(-1)
            if flat.stride(0) != 1:          # a view (stride 0, transposed...): materialised now, bounded above
                flat = torch.empty(flat.shape, dtype=flat.dtype).copy_(flat)
            handle.write(memoryview(flat.view(torch.uint8).numpy()))
            del flat


def _read_child(path: str, name: str, folder: str) -> None:
    """In the child: read, check, and write back only what the loader needs."""
    source = Path(path)
    size, head = open_regular(source, name)
    raw = read_in_process(source, name, size, head)
    own = meta = wrapper = None
    if raw.container == "safetensors":
        state = raw.obj
    else:
        try:
            found = unwrap(raw.obj).wrapper.split(" ")[0].split("+")[-1]     # "meta+state_dict (module. prefix)"
        except CheckpointError as error:
            raise CheckpointError(f"{name}: {error}") from None
        wrapper = None if found == "bare" else found
        inner = raw.obj if wrapper is None else raw.obj[wrapper]
        state = {str(k): v for k, v in inner.items() if isinstance(v, torch.Tensor)}
        if wrapper is not None and isinstance(raw.obj.get("meta"), Mapping):
            meta = plain(raw.obj["meta"], _Budget(name, "metadata ('meta')"))
        own = _own_strings(raw.obj.get(OWN_META_KEY), name)
    problems = [problem for key, tensor in state.items() if (problem := torch_tensor_problem(key, tensor))]
    check_tensor_set(problems, len(state), 0 if problems else sum(math.prod(t.shape) for t in state.values()), name)
    _write_tensors(os.path.join(folder, "tensors.safetensors"), state)
    result = {"container": raw.container, "header": raw.header, "wrapper": wrapper, "meta": meta, "own": own,
              "order": list(state)}
    with open(os.path.join(folder, "result.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle)
