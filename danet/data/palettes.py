"""Class names and colours of the datasets DANet checkpoints are trained on, as data."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DatasetInfo:
    """Names, colours and ignore id of one label set. ``palette`` is (K, 3) uint8."""

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def palette_array(self) -> np.ndarray:
        return np.array(self.palette, dtype=np.uint8)


CAMVID = DatasetInfo(
    name="camvid",
    classes=("Sky", "Building", "Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car",
             "Pedestrian", "Bicyclist"),
    palette=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (0, 0, 192),
             (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
    ignore_index=11,
)

DATASETS: dict[str, DatasetInfo] = {CAMVID.name: CAMVID}


def get_dataset(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def generic_dataset(num_classes: int) -> DatasetInfo:
    """Numbered classes with well-spread colours, for checkpoints of unknown datasets."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(num_classes, 3))
    return DatasetInfo(f"generic{num_classes}", tuple(f"class {i}" for i in range(num_classes)),
                       tuple(tuple(int(v) for v in c) for c in colours))
