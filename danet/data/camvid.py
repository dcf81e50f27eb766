"""CamVid in the SegNet layout (``<split>/`` images, ``<split>annot/`` label maps)."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from danet.errors import ImageLoadError, LabelMapError
from danet.data.normalise import IMAGENET_MEAN, IMAGENET_STD, normalise
from danet.data.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, decode_first_frame, load_image, read_source

IGNORE_INDEX = 11
DATASET_MAX_PIXELS = DEFAULT_MAX_PIXELS
"""Largest frame evaluate, attention-stats and train take (predict downscales instead; a dataset
frame must keep its label map's size, so a larger one is refused before it is decoded)."""


def find_camvid() -> Path | None:
    """``$DANET_CAMVID`` or ``../shared/data/camvid`` relative to the repo, if either exists."""
    candidates = [os.environ.get("DANET_CAMVID"),
                  Path(__file__).resolve().parents[3] / "shared" / "data" / "camvid"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "val").is_dir():
            return Path(candidate)
    return None


def list_pairs(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) paths of a split; a clear error when the layout is not CamVid's."""
    root = Path(root)
    images, labels = root / split, root / f"{split}annot"
    if not images.is_dir() or not labels.is_dir():
        raise FileNotFoundError(f"{root} has no '{split}/' and '{split}annot/' folders (CamVid layout)")
    pairs = []
    for image in sorted(images.iterdir()):
        if image.suffix.lower() in IMAGE_SUFFIXES:
            label = labels / image.name
            if not label.exists():
                label = labels / (image.stem + ".png")
            if not label.exists():
                raise FileNotFoundError(f"no label map for {image.name} in {labels}")
            pairs.append((image, label))
    if not pairs:
        raise FileNotFoundError(f"no images in {images}")
    return pairs


def _named(error: Exception, path: Path) -> str:
    message = str(error)
    return message if str(path) in message else f"{path}: {message}"


def read_image(path: str | Path, max_pixels: int = DATASET_MAX_PIXELS) -> np.ndarray:
    """A dataset frame as (H, W, 3) uint8 through the guarded loader (``load_image``: file type and
    size, decode-time and bomb rules), never resized: a frame over ``max_pixels`` is refused
    before decoding. Any failure is an ``ImageLoadError`` naming the path."""
    path = Path(path)
    try:
        return load_image(path, max_pixels=max_pixels, min_side=1, max_decode_pixels=max_pixels).array
    except ImageLoadError as error:
        raise ImageLoadError(_named(error, path)) from None


def read_label_ids(path: str | Path, max_pixels: int = DATASET_MAX_PIXELS) -> np.ndarray:
    """A label map's stored ids (palette index or grey value, dtype as stored) through the same
    guarded reading as images; a colour image or any decode failure is a ``LabelMapError``."""
    path = Path(path)
    try:
        name, data = read_source(path, error=LabelMapError)
        image, _, _ = decode_first_frame(data, name, max_pixels, error=LabelMapError)
        with image:
            if image.mode in ("1", "L", "P", "I") or image.mode.startswith("I;16"):
                return np.array(image)
            if image.mode == "LA":
                return np.array(image)[..., 0]
    except LabelMapError as error:
        raise LabelMapError(_named(error, path)) from None
    raise LabelMapError(f"{path}: label map has pixel format {image.mode!r}; it needs one class id per pixel "
                        "(a greyscale or palette PNG)")


def read_pair(image: Path, label: Path, max_pixels: int = DATASET_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """(RGB frame, label ids) of one dataset pair, both read through the guarded loader; a damaged,
    truncated, oversized or bomb file is a one-line ``ImageLoadError``/``LabelMapError`` naming it."""
    array, ids = read_image(image, max_pixels), read_label_ids(label, max_pixels)
    if ids.shape != array.shape[:2]:
        raise LabelMapError(f"{label}: label map {ids.shape[1]}x{ids.shape[0]} does not match its image "
                            f"{Path(image).name} ({array.shape[1]}x{array.shape[0]})")
    return array, ids


class SegmentationAugment:
    """Random scale, crop (padded with ignore), horizontal flip and photometric jitter."""

    def __init__(self, crop: tuple[int, int] = (288, 384), scale: tuple[float, float] = (0.75, 1.5),
                 jitter: float = 0.3, ignore_index: int = IGNORE_INDEX):
        self.crop, self.scale, self.jitter, self.ignore_index = crop, scale, jitter, ignore_index

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: random.Random):
        h, w = label.shape
        s = rng.uniform(*self.scale)
        nh, nw = max(int(h * s + 0.5), 1), max(int(w * s + 0.5), 1)
        image = np.array(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        label = np.array(Image.fromarray(label).resize((nw, nh), Image.NEAREST))
        ch, cw = self.crop
        if nh < ch or nw < cw:  # pad: image with zeros, label with ignore
            ph, pw = max(ch - nh, 0), max(cw - nw, 0)
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
            label = np.pad(label, ((0, ph), (0, pw)), constant_values=self.ignore_index)
            nh, nw = label.shape
        y, x = rng.randint(0, nh - ch), rng.randint(0, nw - cw)
        image, label = image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        image = image.astype(np.float32)
        if self.jitter:
            brightness = rng.uniform(1 - self.jitter, 1 + self.jitter)
            contrast = rng.uniform(1 - self.jitter, 1 + self.jitter)
            saturation = rng.uniform(1 - self.jitter, 1 + self.jitter)
            grey = image.mean(axis=2, keepdims=True)
            image = grey + (image - grey) * saturation
            image = (image - image.mean()) * contrast + image.mean()
            image = np.clip(image * brightness, 0, 255)
        return image.astype(np.uint8), np.ascontiguousarray(label)


class SegmentationDataset(torch.utils.data.Dataset):
    """Pairs held in memory (CamVid is 190 MB), augmented on the fly when ``augment`` is set."""

    def __init__(self, root, split: str, augment: SegmentationAugment | None = None, seed: int = 0,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.pairs = list_pairs(root, split)
        self.samples = [read_pair(*p) for p in self.pairs]
        self.augment, self.mean, self.std = augment, mean, std
        self.rng = random.Random(seed)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        image, label = self.samples[index]
        if self.augment is not None:
            image, label = self.augment(image, label, self.rng)
        return normalise(image, self.mean, self.std), torch.from_numpy(label.astype(np.int64))
