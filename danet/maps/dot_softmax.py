"""Dot-product softmax maps: row p = softmax(scale * q_p . K) (DANet's PAM with scale 1,
Non-local's embedded Gaussian with 1/sqrt(d)). Also the one aggregation kernel the model uses:
softmax(scale Q K^T) V without N x N memory on large grids.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from danet.maps.base import AttentionMap, MapFlags, as_float, b64, wire_dtype
from danet.maps.grid import Grid

# Grids with at most this many positions use the explicit N x N product (64 MiB at 4096);
# above it, SDPA on CUDA and the query-chunked product on the CPU.
EXPLICIT_MAX_POSITIONS = 4096
# The chunked path takes as many queries at a time as keep one energy block at this many
# elements (16 MiB in fp32), whatever N is.
CHUNK_ELEMENTS = 1 << 22
METHODS = ("auto", "explicit", "chunked", "sdpa")


def method_for(positions: int, device: torch.device | str) -> str:
    """The path ``method="auto"`` takes for ``positions`` grid cells on ``device``."""
    if positions <= EXPLICIT_MAX_POSITIONS:
        return "explicit"
    return "sdpa" if torch.device(device).type == "cuda" else "chunked"


def softmax_matrix(query: torch.Tensor, key: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The full (B, N, N) softmax(scale Q K^T) for (B, N, d) query/key. Small grids only."""
    energy = torch.bmm(query, key.transpose(1, 2))
    if scale != 1.0:
        energy = energy * scale
    return torch.softmax(energy, dim=-1)


def aggregate(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, method: str = "auto",
              scale: float = 1.0) -> torch.Tensor:
    """sum_q softmax(scale Q K^T)[p, q] V_q for (B, N, d) query/key and (B, N, C) value.

    The explicit product on small grids (the reference maths, fastest there); on large grids
    SDPA on a GPU and the same explicit product a block of queries at a time on the CPU: there
    SDPA's fused kernel needs q/k padded to v's width (8x the Q K^T work) and measured 12-50%
    slower (benchmarks/results.md, section 4b).
    """
    n = query.shape[1]
    if method == "auto":
        method = method_for(n, query.device)
    if method == "explicit":
        return torch.bmm(softmax_matrix(query, key, scale), value)
    if method == "chunked":
        return _chunked(query, key, value, scale)
    if method == "sdpa":
        # The fused kernels need a unit stride on the channel axis and, on the CPU, one head
        # size for q, k and v (else SDPA's math path builds N x N): zero channels leave Q K^T as is.
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
        extra = value.shape[-1] - query.shape[-1]
        if query.device.type == "cpu" and extra > 0:
            query, key = F.pad(query, (0, extra)), F.pad(key, (0, extra))
        return F.scaled_dot_product_attention(
            query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1), scale=scale).squeeze(1)
    raise ValueError(f"unknown attention method {method!r}; use one of {', '.join(METHODS)}")


def _chunked(query, key, value, scale):
    """The explicit product a block of queries at a time, in O(block * N) memory.

    Inference reuses one energy buffer and writes into a preallocated output: fresh 16 MiB
    blocks per step made glibc page-fault and fragment its heap (4 GiB RSS at N = 32768).
    """
    n = query.shape[1]
    block = max(1, min(n, CHUNK_ELEMENTS // n))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        return torch.cat([torch.bmm(torch.softmax(scale * torch.bmm(query[:, i:i + block], key.transpose(1, 2)), -1),
                                    value) for i in range(0, n, block)], dim=1)
    out = value.new_empty(value.shape)
    energy = query.new_empty(block, n)
    for b in range(query.shape[0]):
        key_t, values = key[b].t(), value[b]
        for start in range(0, n, block):
            stop = min(start + block, n)
            scores = energy[: stop - start]
            torch.mm(query[b, start:stop], key_t, out=scores)
            if scale != 1.0:
                scores.mul_(scale)
            scores.sub_(scores.amax(dim=1, keepdim=True)).exp_()     # softmax over keys, in place
            scores.div_(scores.sum(dim=1, keepdim=True))
            torch.mm(scores, values, out=out[b, start:stop])
    return out


class DotSoftmaxMap(AttentionMap):
    """Rows softmax(scale q_p . K), rebuilt from the (N, d) query and key (O(N d) kept)."""

    kind = "dot_softmax"

    def __init__(self, grid: Grid, query, key, *, scale: float = 1.0, title: str, flags: MapFlags = MapFlags()):
        super().__init__(grid, title=title, flags=flags)
        self.query, self.key, self.scale = as_float(query), as_float(key), float(scale)
        self._lse: np.ndarray | None = None

    def energy(self, index: torch.Tensor) -> torch.Tensor:
        """(P, N) scale * q . K of the queries ``index``: what the softmax takes."""
        energy = self.query[index] @ self.key.T
        return energy * self.scale if self.scale != 1.0 else energy

    def rows_at(self, index: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.energy(index), dim=-1)

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(lse, mean_row) in one sweep over all queries: O(N^2 d) time, O(block N) memory.
        ``lse[p]`` = log sum_j exp(scale q_p . k_j) normalises a column's entries."""
        if self._lse is None:
            n = self.cells
            lse = torch.empty(n, dtype=torch.float64)
            total = torch.zeros(n, dtype=torch.float64)
            block = max(1, min(n, CHUNK_ELEMENTS // max(n, 1)))
            for start in range(0, n, block):
                energy = self.energy(torch.arange(start, min(start + block, n)))
                norm = torch.logsumexp(energy, dim=1)
                lse[start:start + len(energy)] = norm.double()
                total += torch.exp(energy - norm[:, None]).sum(0, dtype=torch.float64)
            self._lse, self._mean = lse.numpy(), (total / n).numpy()
        return self._lse, self._mean

    def _mean_row(self) -> np.ndarray:
        return self.statistics()[1]

    def column(self, cell: int) -> np.ndarray:
        lse = self.statistics()[0]
        energy = (self.query.double() @ self.key[int(cell)].double()) * self.scale
        return np.exp(energy.numpy() - lse)

    def arrays(self) -> dict:
        dtype = wire_dtype(self.query)
        return {"d": int(self.query.shape[1]), "scale": self.scale, "dtype": np.dtype(dtype).name,
                "q": b64(self.query.numpy(), dtype), "k": b64(self.key.numpy(), dtype),
                "lse": b64(self.statistics()[0], np.float32)}
