"""Class names and colours of the datasets DANet checkpoints are trained on, as data."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from danet.errors import UnknownNameError


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

CITYSCAPES = DatasetInfo(
    name="cityscapes",
    classes=("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
             "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
             "motorcycle", "bicycle"),
    palette=((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
             (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
             (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
             (0, 80, 100), (0, 0, 230), (119, 11, 32)),
    ignore_index=255,
)


def _voc_colour(index: int) -> tuple[int, int, int]:
    """The standard PASCAL VOC colour map: the bits of ``index`` spread over R, G, B."""
    r = g = b = 0
    for shift in range(7, -1, -1):
        r |= ((index >> 0) & 1) << shift
        g |= ((index >> 1) & 1) << shift
        b |= ((index >> 2) & 1) << shift
        index >>= 3
    return r, g, b


VOC = DatasetInfo(
    name="voc",
    classes=("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
             "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
             "train", "tvmonitor"),
    palette=tuple(_voc_colour(i) for i in range(21)),
    ignore_index=255,
)

# ADE20K SceneParsing, 150 classes in mmseg's order (raw label 0 "other" is ignored and
# 1..150 become 0..149). mmseg writes the 8th name as 'bed ' (trailing space); we drop it.
ADE20K = DatasetInfo(
    name="ade20k",
    classes=(
        "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
        "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
        "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
        "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
        "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
        "fireplace",
        "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
        "screen door", "stairway",
        "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
        "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
        "arcade machine", "hovel",
        "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
        "television receiver",
        "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
        "buffet",
        "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
        "swimming pool",
        "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
        "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
        "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
        "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock",
        "flag",
    ),
    palette=(
        (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
        (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
        (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
        (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
        (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
        (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
        (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
        (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
        (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
        (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
        (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
        (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
        (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
        (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
        (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
        (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
        (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
        (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
        (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
        (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
        (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
        (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
        (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
        (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
        (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
    ),
    ignore_index=255,
)

# PASCAL Context: 'background' + 59 classes in alphabetical order (mmseg), coloured with the
# first 60 ADE20K colours. The 59-class variant drops background and uses ADE colours 2..60.
_CONTEXT_59 = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup",
    "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard",
    "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road",
    "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train",
    "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)
PASCAL_CONTEXT = DatasetInfo("pascal_context", ("background",) + _CONTEXT_59, ADE20K.palette[:60], 255)
PASCAL_CONTEXT_59 = DatasetInfo("pascal_context59", _CONTEXT_59, ADE20K.palette[1:60], 255)

DATASETS: dict[str, DatasetInfo] = {
    d.name: d for d in (CAMVID, CITYSCAPES, VOC, ADE20K, PASCAL_CONTEXT, PASCAL_CONTEXT_59)
}
# Other spellings users type or other projects use (official code: "citys", "pcontext").
ALIASES = {"citys": "cityscapes", "pascal_voc": "voc", "voc12": "voc", "voc12aug": "voc", "ade": "ade20k",
           "pcontext": "pascal_context59", "pascal_context60": "pascal_context", "context": "pascal_context"}

# Which dataset a checkpoint with K classes most likely comes from, when nothing says.
DEFAULT_FOR_CLASSES = {19: "cityscapes", 150: "ade20k", 21: "voc", 60: "pascal_context",
                       59: "pascal_context59", 11: "camvid"}


def get_dataset(name: str) -> DatasetInfo:
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    try:
        return DATASETS[ALIASES.get(key, key)]
    except KeyError:
        raise UnknownNameError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def generic_dataset(num_classes: int) -> DatasetInfo:
    """Numbered classes with well-spread colours, for checkpoints of unknown datasets."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(num_classes, 3))
    return DatasetInfo(f"generic{num_classes}", tuple(f"class {i}" for i in range(num_classes)),
                       tuple(tuple(int(v) for v in c) for c in colours))


def dataset_for_classes(num_classes: int) -> DatasetInfo:
    """The usual dataset for a class count (19 Cityscapes, 150 ADE20K, 21 VOC, 59/60 PASCAL
    Context, 11 CamVid); numbered generic classes otherwise."""
    name = DEFAULT_FOR_CLASSES.get(num_classes)
    return DATASETS[name] if name else generic_dataset(num_classes)
