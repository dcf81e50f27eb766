"""Shared pieces of the measures: PAM rows a block of queries at a time, and input checks."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from danet.errors import InputError

# One block of softmax rows holds at most this many elements (16 MiB in fp32), whatever N is,
# so every pass over the attention matrix runs in O(block * N) memory.
CHUNK_ELEMENTS = 1 << 22
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


def row_blocks(query: torch.Tensor, key: torch.Tensor, index: torch.Tensor | None = None,
               chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, stop, rows): PAM softmax rows of the queries ``index`` (all when None), a block at a time.

    Same maths as the model: softmax over keys of Q_i . K_j, no 1/sqrt(d) scale.
    """
    n = key.shape[0]
    count = n if index is None else len(index)
    block = max(1, min(count, chunk_elements // max(n, 1)))
    key_t = key.t()
    for start in range(0, count, block):
        stop = min(start + block, count)
        rows = query[start:stop] if index is None else query[index[start:stop]]
        yield start, stop, torch.softmax(rows @ key_t, dim=-1)


def check_cell(cell: tuple[int, int], grid_size: tuple[int, int]) -> tuple[int, int]:
    row, col = (int(v) for v in cell)
    if not (0 <= row < grid_size[0] and 0 <= col < grid_size[1]):
        raise InputError(f"cell ({row}, {col}) lies outside the {grid_size[0]}x{grid_size[1]} feature grid")
    return row, col


def check_seed(seed) -> int:
    """``seed`` as an int in 0..``SEED_MAX``; anything else is an ``InputError`` (numpy's own is a ``ValueError``)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_MAX:
        raise InputError(f"seed must be a whole number from 0 to {SEED_MAX:,}, not {seed!r}")
    return int(seed)
