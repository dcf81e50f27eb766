"""Criss-cross maps (CCNet): each loop's query (i, j) weighs only its cross, column j and row i.

One loop's weights are kept as ``(h, w, h + w)`` (mmseg's ``CrissCrossAttention`` order): entries
``[:h]`` are the column part (cell (i', j), with the query's own cell masked to 0 there) and
``[h:]`` the row part (cell (i, j')). As an N x N matrix M a loop is a row-stochastic sparse
matrix; L loops applied one after the other compose to e_p^T M_L ... M_1, which covers the
whole image after two loops. The composed map is a mass flow (the value projections, the
residual and the gamma scale between loops are not in it); a single loop's map is exact.
Every product here is a vector times a sparse cross matrix, O(N (h + w)): never N x N.
"""
from __future__ import annotations

import numpy as np
import torch

from danet.maps.base import AttentionMap, MapFlags, as_float, b64
from danet.maps.grid import Grid


def left(u: torch.Tensor, loop: torch.Tensor) -> torch.Tensor:
    """(P, h, w) u -> u^T M for one loop's cross weights (h, w, h + w)."""
    h = loop.shape[0]
    return (torch.einsum("pij,ija->paj", u, loop[..., :h])
            + torch.einsum("pij,ijb->pib", u, loop[..., h:]))


def right(v: torch.Tensor, loop: torch.Tensor) -> torch.Tensor:
    """(h, w) v -> M v for one loop: each query's weighted sum of v over its cross."""
    h = loop.shape[0]
    return torch.einsum("ijk,kj->ij", loop[..., :h], v) + torch.einsum("ijk,ik->ij", loop[..., h:], v)


class CrissCrossMap(AttentionMap):
    """Rows of the product of criss-cross loops (one loop: that loop's exact cross weights)."""

    kind = "criss_cross"

    def __init__(self, grid: Grid, loops, *, title: str):
        loops = [as_float(loop) for loop in loops]
        h, w = grid.grid_size
        for loop in loops:
            if tuple(loop.shape) != (h, w, h + w):
                raise ValueError(f"criss-cross weights of shape {tuple(loop.shape)}; expected {(h, w, h + w)}")
        super().__init__(grid, title=title, flags=MapFlags(exact=len(loops) == 1))
        self.loops = loops

    def rows_at(self, index: torch.Tensor) -> torch.Tensor:
        h, w = self.grid.grid_size
        u = torch.zeros(len(index), h * w)
        u[torch.arange(len(index)), index] = 1.0
        u = u.reshape(-1, h, w)
        for loop in reversed(self.loops):          # e_p^T M_L first, M_1 last
            u = left(u, loop)
        return u.reshape(len(index), h * w)

    def _mean_row(self) -> np.ndarray:
        h, w = self.grid.grid_size
        u = torch.full((1, h, w), 1.0 / (h * w), dtype=torch.float64)
        for loop in reversed(self.loops):
            u = left(u, loop.double())
        return u.reshape(-1).numpy()

    def column(self, cell: int) -> np.ndarray:
        h, w = self.grid.grid_size
        v = torch.zeros(h * w, dtype=torch.float64)
        v[int(cell)] = 1.0
        v = v.reshape(h, w)
        for loop in self.loops:                    # M_L ... M_1 e_c: M_1 first
            v = right(v, loop.double())
        return v.reshape(-1).numpy()

    def arrays(self) -> dict:
        return {"loops": [b64(loop.numpy(), np.float32) for loop in self.loops]}
