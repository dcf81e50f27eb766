"""Shared pieces of the measures: input checks and tensor conversion (rows come from ``danet.maps``)."""
from __future__ import annotations


import numpy as np
import torch

from danet.errors import InputError

SEED_MAX = 2**32 - 1
"""Seeds are 0..2^32-1: what numpy's and torch's generators take everywhere (numpy refuses negatives)."""


def require(result, *names: str) -> None:
    """Refuse a result that lacks a field a measure needs (e.g. one built by hand)."""
    missing = [name for name in names if getattr(result, name, None) is None]
    if missing:
        raise InputError(f"this inspection result has no {', '.join(missing)}: it was not made by "
                         f"danet.inspection.result.inspect_image; inspect the image again")


def as_tensor(array) -> torch.Tensor:
    """float32 CPU tensor view of a numpy array or tensor."""
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu", torch.float32)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
def check_seed(seed) -> int:
    """``seed`` as an int in 0..``SEED_MAX``; anything else is an ``InputError`` (numpy's own is a ``ValueError``)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_MAX:
        raise InputError(f"seed must be a whole number from 0 to {SEED_MAX:,}, not {seed!r}")
    return int(seed)
