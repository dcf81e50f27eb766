"""Shared pieces of the measures: input checks and tensor conversion (rows come from ``danet.maps``)."""
from __future__ import annotations


import numpy as np
import torch

from danet.errors import InputError

# One block of softmax rows holds at most this many elements (16 MiB in fp32), whatever N is,
# so every pass over the attention matrix runs in O(block * N) memory.


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
