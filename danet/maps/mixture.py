"""Mixture maps: a query's row is a weighted sum of K region or basis maps (OCR's object regions,
EMANet's bases, ANN's pooled keys): row p = weights[p] @ components, kept as (N, K) and (K, N)."""
from __future__ import annotations

import numpy as np
import torch

from danet.maps.base import AttentionMap, MapFlags, as_float, b64
from danet.maps.grid import Grid


class MixtureMap(AttentionMap):
    """Rows ``weights @ components`` composed to pixels: O(N K) kept, never N x N."""

    kind = "mixture"

    def __init__(self, grid: Grid, weights, components, *, title: str, flags: MapFlags = MapFlags(exact=False)):
        weights, components = as_float(weights), as_float(components)
        if weights.ndim != 2 or components.ndim != 2 or weights.shape[1] != components.shape[0] \
                or weights.shape[0] != grid.cells or components.shape[1] != grid.cells:
            raise ValueError(f"mixture of shapes {tuple(weights.shape)} and {tuple(components.shape)} "
                             f"on a grid of {grid.cells} cells")
        super().__init__(grid, title=title, flags=flags)
        self.weights, self.components = weights, components

    def rows_at(self, index: torch.Tensor) -> torch.Tensor:
        return self.weights[index] @ self.components

    def _mean_row(self) -> np.ndarray:
        return (self.weights.double().mean(0) @ self.components.double()).numpy()

    def column(self, cell: int) -> np.ndarray:
        return (self.weights.double() @ self.components[:, int(cell)].double()).numpy()

    def arrays(self) -> dict:
        return {"k": int(self.weights.shape[1]), "weights": b64(self.weights.numpy(), np.float32),
                "components": b64(self.components.numpy(), np.float32)}
