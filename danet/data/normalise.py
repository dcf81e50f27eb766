"""Turning RGB uint8 images into the normalised tensors a network reads: the one rule, and its constants."""
from __future__ import annotations

import numpy as np
import torch

from danet.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)          # TF EfficientNet-Lite was trained on [-1, 1] inputs
INCEPTION_STD = (0.5, 0.5, 0.5)


def normalise(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """HxWx3 uint8 RGB -> normalised (3, H, W) float tensor."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"expected an HxWx3 uint8 RGB array, got {image.shape} {image.dtype}")
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def to_tensor(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """HxWx3 uint8 RGB -> normalised (1, 3, H, W) float tensor (a batch of one)."""
    return normalise(image, mean, std).unsqueeze(0)
