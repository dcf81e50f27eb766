"""Global maps: one query-independent weighting of the grid (GCNet's context mask, DNL's unary term)."""
from __future__ import annotations

import numpy as np
import torch

from danet.maps.base import AttentionMap, MapFlags, as_float, b64
from danet.maps.grid import Grid


class GlobalMap(AttentionMap):
    """Every row is the same (N,) ``weights``; the column of cell c is weights[c] everywhere."""

    kind = "global"

    def __init__(self, grid: Grid, weights, *, title: str, distribution: bool = True):
        super().__init__(grid, title=title, flags=MapFlags(distribution=distribution, query_dependent=False))
        self.weights = as_float(weights).reshape(-1)

    def rows_at(self, index: torch.Tensor) -> torch.Tensor:
        return self.weights.expand(len(index), -1).clone()

    def _mean_row(self) -> np.ndarray:
        return self.weights.double().numpy()

    def column(self, cell: int) -> np.ndarray:
        return np.full(self.cells, float(self.weights[int(cell)]))

    def arrays(self) -> dict:
        return {"weights": b64(self.weights.numpy(), np.float32)}
