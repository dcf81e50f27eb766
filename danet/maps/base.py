"""What every attention map offers, whatever head made it: rows, mean row, column, payload.

A map lives on the head's feature grid (N = h * w cells, row-major). Its *row* for a query cell
p is where p's output reads from (a length-N map); its *column* for a key cell c is how much
every query reads from c ("who looks here"); its *mean row* is the average of all N rows, the
part of a row that every query shares. Each kind implements one kernel, ``rows_at`` (a block of
query cells -> their rows), and may give the mean row and the column in closed form; the rest
is built on that kernel here, a block of queries at a time, so nothing ever holds N x N.
"""
from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from danet.maps.grid import Grid

# One block of rows holds at most this many elements (16 MiB in fp32), whatever N is.
BLOCK_ELEMENTS = 1 << 22
# Arrays go to the browser as float32 while they are small, float16 above (a 2048x1024 frame at
# d = 64: 8 MB instead of 16 MB). float16 moves a softmax weight by up to ~1e-3.
FLOAT32_LIMIT = 1 << 18


@dataclass(frozen=True)
class MapFlags:
    """What a map's numbers mean, so a measure knows whether it applies.

    ``distribution``: every row is non-negative and sums to 1. ``query_dependent``: rows can
    differ between queries by construction (a global map's cannot). ``exact``: a row is the
    exact weight each key cell's value gets in the query's output; otherwise it is a composed
    mass flow (e.g. two criss-cross loops multiplied), a faithful but indirect account.
    """

    distribution: bool = True
    query_dependent: bool = True
    exact: bool = True

    def notes(self) -> str:
        parts = ["rows sum to 1" if self.distribution else "rows are weights, not distributions",
                 "one row per query" if self.query_dependent else "the same map for every query",
                 "exact weights" if self.exact else "a composed mass flow"]
        return "; ".join(parts)


def b64(array, dtype) -> str:
    """Little-endian bytes of ``array`` as ``dtype``, base64 (what the browser decodes)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def wire_dtype(array) -> type:
    """float32 for small arrays, float16 above ``FLOAT32_LIMIT`` elements."""
    return np.float32 if np.asarray(array).size <= FLOAT32_LIMIT else np.float16


def as_float(array) -> torch.Tensor:
    """A float32 CPU tensor of a numpy array or tensor."""
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu", torch.float32)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def upsample(maps: np.ndarray, size: tuple[int, int], align_corners: bool, mode: str = "bilinear") -> np.ndarray:
    """(P, h, w) grid maps -> (P, H, W) at input size (``"bilinear"`` or ``"nearest"``)."""
    tensor = torch.from_numpy(np.asarray(maps, dtype=np.float32)).unsqueeze(1)
    kwargs = {"align_corners": align_corners} if mode == "bilinear" else {}
    return F.interpolate(tensor, size=size, mode=mode, **kwargs)[:, 0].numpy()


class AttentionMap:
    """Base of every map kind; subclasses set ``kind`` and implement ``rows_at`` and ``arrays``."""

    kind: ClassVar[str] = ""

    def __init__(self, grid: Grid, *, title: str, flags: MapFlags = MapFlags()):
        self.grid, self.title, self.flags = grid, title, flags
        self._mean: np.ndarray | None = None

    # ---- the kernel --------------------------------------------------------------------------
    def rows_at(self, index: torch.Tensor) -> torch.Tensor:
        """(P, N) float32 rows of the query cells ``index`` (flat, row-major)."""
        raise NotImplementedError

    def arrays(self) -> dict:
        """The kind's own payload entries for the browser (besides kind, grid and mean row)."""
        raise NotImplementedError

    # ---- built on the kernel -----------------------------------------------------------------
    @property
    def cells(self) -> int:
        return self.grid.cells

    def rows(self, points) -> np.ndarray:
        """Rows for input-pixel points (x, y), as (P, h, w) maps on the grid."""
        return self.rows_of_cells(self.grid.index(points))

    def rows_of_cells(self, cells) -> np.ndarray:
        index = torch.as_tensor(np.asarray(cells, dtype=np.int64).reshape(-1))
        return self.rows_at(index).reshape(len(index), *self.grid.grid_size).numpy()

    def rows_upsampled(self, points, align_corners: bool, mode: str = "bilinear") -> np.ndarray:
        return upsample(self.rows(points), self.grid.image_size, align_corners, mode)

    def row_blocks(self, index: torch.Tensor | None = None,
                   block_elements: int = BLOCK_ELEMENTS) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(start, stop, rows) for the queries ``index`` (all when None), a block at a time."""
        n = self.cells
        count = n if index is None else len(index)
        block = max(1, min(count, block_elements // max(n, 1)))
        for start in range(0, count, block):
            stop = min(start + block, count)
            cells = torch.arange(start, stop) if index is None else torch.as_tensor(index[start:stop])
            yield start, stop, self.rows_at(cells)

    def mean_row(self) -> np.ndarray:
        """(N,) float64 mean of the rows of ALL N queries (what every query shares); cached."""
        if self._mean is None:
            self._mean = self._mean_row()
        return self._mean

    def _mean_row(self) -> np.ndarray:
        total = torch.zeros(self.cells, dtype=torch.float64)
        for _, _, rows in self.row_blocks():
            total += rows.sum(0, dtype=torch.float64)
        return (total / self.cells).numpy()

    def column(self, cell: int) -> np.ndarray:
        """(N,) float64: every query's weight on key ``cell`` ("who looks here")."""
        out = np.empty(self.cells, np.float64)
        for start, stop, rows in self.row_blocks():
            out[start:stop] = rows[:, int(cell)].double().numpy()
        return out

    def region_mean(self, cells) -> np.ndarray:
        """(N,) mean row of the query ``cells``: where a region looks, on average."""
        index = torch.as_tensor(np.asarray(cells, dtype=np.int64).reshape(-1))
        total = torch.zeros(self.cells, dtype=torch.float64)
        for _, _, rows in self.row_blocks(index):
            total += rows.sum(0, dtype=torch.float64)
        return (total / len(index)).numpy()

    def payload(self) -> dict:
        """JSON-ready: what the browser's kernel of this kind needs to draw any row or column."""
        gh, gw = self.grid.grid_size
        return {"kind": self.kind, "title": self.title, "gh": gh, "gw": gw,
                "flags": {"distribution": self.flags.distribution, "query_dependent": self.flags.query_dependent,
                          "exact": self.flags.exact},
                "mean_row": b64(self.mean_row(), np.float32), **self.arrays()}

    def describe(self) -> str:
        return f"{self.title} ({self.kind}: {self.flags.notes()})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.title!r}, grid={self.grid.grid_size})"
