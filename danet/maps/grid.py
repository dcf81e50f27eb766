"""The head's feature grid and its mapping to input pixels: one place for the geometry.

Pixels scale proportionally: grid cell (r, c) of an (h, w) grid covers the input region
[c W / w, (c+1) W / w) x [r H / h, (r+1) H / h). Cells are numbered row-major (r w + c).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from danet.errors import InputError

VOID = -1                      # a cell with no labelled pixel


@dataclass(frozen=True)
class Grid:
    """An (h, w) feature grid laid over an (H, W) image."""

    image_size: tuple[int, int]          # (H, W)
    grid_size: tuple[int, int]           # (h, w)

    @property
    def cells(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def pixel_to_cell(self, x: float, y: float) -> tuple[int, int]:
        """Grid cell (row, col) that covers input pixel (x, y)."""
        height, width = self.image_size
        gh, gw = self.grid_size
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(f"point ({x}, {y}) lies outside the {width}x{height} image")
        return min(int(y * gh / height), gh - 1), min(int(x * gw / width), gw - 1)

    def index(self, points) -> np.ndarray:
        """Flat cell indices (row-major) of input-pixel points (x, y)."""
        gw = self.grid_size[1]
        return np.array([r * gw + c for r, c in (self.pixel_to_cell(x, y) for x, y in points)], dtype=np.int64)

    def cell_to_pixel_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the input region a grid cell stands for."""
        height, width = self.image_size
        gh, gw = self.grid_size
        return (col * width / gw, row * height / gh, (col + 1) * width / gw, (row + 1) * height / gh)

    def check_cell(self, cell: tuple[int, int]) -> tuple[int, int]:
        row, col = (int(v) for v in cell)
        if not (0 <= row < self.grid_size[0] and 0 <= col < self.grid_size[1]):
            raise InputError(f"cell ({row}, {col}) lies outside the {self.grid_size[0]}x{self.grid_size[1]} feature grid")
        return row, col

    def region_cells(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """Flat indices of the cells in ``box`` = (row0, col0, row1, col1), inclusive corners in any order."""
        r0, c0, r1, c1 = box
        rows = np.arange(min(r0, r1), max(r0, r1) + 1)
        cols = np.arange(min(c0, c1), max(c0, c1) + 1)
        gh, gw = self.grid_size
        if rows[0] < 0 or cols[0] < 0 or rows[-1] >= gh or cols[-1] >= gw:
            raise InputError(f"box {box} reaches outside the {gh}x{gw} grid")
        return (rows[:, None] * gw + cols[None, :]).ravel()


def pixel_cells(image_size: tuple[int, int], grid_size: tuple[int, int]) -> np.ndarray:
    """(H, W) index of the grid cell that covers each input pixel (row-major cell numbers)."""
    height, width = image_size
    gh, gw = grid_size
    rows = np.minimum(np.arange(height) * gh // height, gh - 1)
    cols = np.minimum(np.arange(width) * gw // width, gw - 1)
    return rows[:, None] * gw + cols[None, :]


def grid_labels(label: np.ndarray, grid_size: tuple[int, int], num_classes: int,
                ignore_index: int | None = None) -> np.ndarray:
    """(h, w) majority label of each cell; ``VOID`` where void pixels win (see module docstring)."""
    label = np.asarray(label).astype(np.int64)
    void = (label < 0) | (label >= num_classes)
    if ignore_index is not None:
        void |= label == ignore_index
    classes = np.where(void, num_classes, label)              # void is the last candidate
    cells = pixel_cells(label.shape, grid_size)
    n = grid_size[0] * grid_size[1]
    counts = np.bincount((cells * (num_classes + 1) + classes).ravel(),
                         minlength=n * (num_classes + 1)).reshape(n, num_classes + 1)
    winner = counts.argmax(1)
    return np.where(winner == num_classes, VOID, winner).reshape(grid_size)


def cell_centres(grid_size: tuple[int, int], image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Centres of all cells as (N, 2) (row, col) in cell units and (N, 2) (x, y) in input pixels."""
    gh, gw = grid_size
    height, width = image_size
    rows, cols = np.meshgrid(np.arange(gh) + 0.5, np.arange(gw) + 0.5, indexing="ij")
    in_cells = np.stack([rows.ravel(), cols.ravel()], 1)
    in_pixels = np.stack([cols.ravel() * width / gw, rows.ravel() * height / gh], 1)
    return in_cells, in_pixels


def same_class_mass(rows, cell_classes, query_classes) -> np.ndarray:
    """The share of each row's mass on cells of its query's class: the one definition.

    ``rows`` (P, N) attention rows, ``cell_classes`` (N,) each cell's class (``grid_labels``: the
    majority of its pixels, ``VOID`` where void wins), ``query_classes`` (P,) the class each query
    stands for (a clicked pixel's own class in the app; a sampled cell's majority class in
    attention-stats). Void cells are left out and the rest renormalised; NaN when a row has no
    mass off void cells.
    """
    rows = np.asarray(rows, dtype=np.float64).reshape(len(query_classes), -1)
    cells = np.asarray(cell_classes).ravel()
    valid = cells != VOID
    same = (cells[None, :] == np.asarray(query_classes)[:, None]) & valid[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        return (rows * same).sum(1) / (rows * valid[None, :]).sum(1)
