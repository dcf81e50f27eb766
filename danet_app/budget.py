"""Caches bounded by bytes: what the app keeps for all sessions, and what it refuses to keep.

``st.cache_resource(max_entries=n)`` bounds a cache by entry count only, and entries differ by
orders of magnitude: a forward's result holds 3 x K x H x W float32 logits (11 classes at
1 MP: 132 MB; 150 classes: 1.8 GB; 3,000 classes: 36 GB). ``ByteBudgetCache`` is a small LRU
with a total-bytes limit instead:

* values are keyed by content hashes (the caller's key), shared by every session;
* one caller computes a missing key while the others asking for it wait (so a result is still
  computed once per (model, image, device)); an error is handed to the waiters too, so a
  hostile file is parsed once, not once per waiting session;
* nothing is computed while the cache's lock is held: the lock guards the bookkeeping only,
  so one session's slow load or forward never blocks another session's different key;
* a value larger than the whole budget is refused with ``InputError`` -- before it is computed
  when the caller can say its size up front (``expected_bytes``), else right after;
* inserting evicts least-recently-used entries until the total fits. A session that is showing
  an evicted value keeps its own reference until it moves on, so the process holds at most the
  budgets plus one current selection per session.

Pure Python (no Streamlit): ``danet_app.sidebar`` holds one cache per kind of object.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np
import torch

from danet.errors import InputError

MB = 2**20


def _env_mb(name: str, default_mb: int) -> int:
    """A budget from the environment (``DANET_APP_<KIND>_CACHE_MB``), else the default."""
    try:
        value = int(os.environ.get(name, default_mb))
    except ValueError:
        value = default_mb
    return max(value, 1) * MB


RESULT_BUDGET = _env_mb("DANET_APP_RESULT_CACHE_MB", 2048)
"""Forward results (logits, attention, CAM maps): 15 results of the default 11-class model at
1 MP, one 150-class result at 1 MP; a 3,000-class model is refused above ~0.06 MP."""
MODEL_BUDGET = _env_mb("DANET_APP_MODEL_CACHE_MB", 1536)
"""Uploaded models' weights in memory (a DANet-ResNet101 is ~270 MB in fp32)."""
IMAGE_BUDGET = _env_mb("DANET_APP_IMAGE_CACHE_MB", 256)
"""Decoded images (at most 4.2 MP x 3 bytes = 12.6 MB each) and label maps (8 bytes a pixel)."""


@dataclasses.dataclass
class _Pending:
    event: threading.Event = dataclasses.field(default_factory=threading.Event)
    value: object = None
    error: BaseException | None = None
    done: bool = False


class ByteBudgetCache:
    """LRU of values whose sizes add up to at most ``budget`` bytes (see the module docstring)."""

    def __init__(self, budget: int, what: str):
        self.budget = int(budget)
        self.what = what                              # "result", "model", ... for messages
        self._lock = threading.Lock()                 # bookkeeping only; never held while computing
        self._entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._pending: dict[Hashable, _Pending] = {}
        self.total = 0
        self.computed = 0                             # values computed (for tests and diagnostics)
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def refuse_above_budget(self, nbytes: int, detail: str = "", advice: str = "") -> None:
        """``InputError`` when one value of ``nbytes`` would not fit in the whole budget."""
        if nbytes > self.budget:
            raise InputError(f"{detail or f'this {self.what}'} would hold {nbytes / MB:,.0f} MB, more than the "
                             f"{self.budget / MB:,.0f} MB the app keeps for {self.what}s"
                             + (f"; {advice}" if advice else ""))

    def get(self, key: Hashable, compute: Callable[[], object], size: Callable[[object], int],
            expected_bytes: int | None = None, detail: str = "", advice: str = "") -> object:
        """The cached value of ``key``, or ``compute()``'s, which is then kept if it fits."""
        while True:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    return self._entries[key][0]
                pending = self._pending.get(key)
                owner = pending is None
                if owner:
                    pending = self._pending[key] = _Pending()
            if owner:
                break
            pending.event.wait()
            if pending.error is not None:
                raise pending.error
            if pending.done:
                return pending.value
            # the computing caller vanished without a value or an error (cannot happen): retry
        try:
            if expected_bytes is not None:
                self.refuse_above_budget(expected_bytes, detail, advice)
            value = compute()
            nbytes = int(size(value))
            self.refuse_above_budget(nbytes, detail, advice)
        except BaseException as error:
            pending.error = error
            with self._lock:
                self._pending.pop(key, None)
            pending.event.set()
            raise
        with self._lock:
            self.computed += 1
            self._entries[key] = (value, nbytes)
            self.total += nbytes
            while self.total > self.budget and len(self._entries) > 1:
                _, (_, freed) = self._entries.popitem(last=False)
                self.total -= freed
                self.evicted += 1
            self._pending.pop(key, None)
        pending.value, pending.done = value, True
        pending.event.set()
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.total = 0


# ---- sizes --------------------------------------------------------------------------------------
def nbytes(value, _seen: set | None = None) -> int:
    """Bytes held by the arrays and tensors in ``value`` (dataclasses, containers), each once."""
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):          # a view holds its whole storage, counted once
        if value.layout != torch.strided:
            return 0
        storage = value.untyped_storage()
        if ("storage", storage.data_ptr()) in seen:
            return 0
        seen.add(("storage", storage.data_ptr()))
        return storage.nbytes()
    if isinstance(value, np.ndarray):
        return value.nbytes
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return sum(nbytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v, seen) for v in value)
    return 0


def model_bytes(loaded) -> int:
    """A ``LoadedModel``'s weights and buffers."""
    model = loaded.model
    return (sum(p.numel() * p.element_size() for p in model.parameters())
            + sum(b.numel() * b.element_size() for b in model.buffers()))


def result_bytes_estimate(num_classes: int, height: int, width: int) -> int:
    """Bytes a forward's result will hold at least, known before the forward: the three
    float32 logit maps and the three int64 predictions the pages compute from them."""
    return 3 * num_classes * height * width * 4 + 3 * height * width * 8


def result_bytes(result) -> int:
    """An ``InspectionResult``'s arrays, plus the predictions pages will cache on it."""
    height, width = result.image_size
    cached = sum(1 for which in result.outputs if which in getattr(result, "_cache", {}))
    return nbytes(result) + (3 - cached) * height * width * 8


def max_megapixels(num_classes: int, budget: int) -> float:
    """The largest image (megapixels) whose result fits ``budget`` for ``num_classes``."""
    return budget / (3 * num_classes * 4 + 3 * 8) / 1e6
