"""mIoU, per-class IoU, pixel accuracy and confusion matrix over a CamVid-layout folder.

Under ``torchrun`` each process scores its share of the images (``danet.runtime.distributed.shard``) and
the int64 confusion matrices are summed across processes, so the scores are exactly those of one
process over all images, on every rank.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from danet.runtime import distributed as dist_helpers
from danet.checkpoints.meta import LoadedModel
from danet.data.camvid import IGNORE_INDEX, list_pairs, normalise, read_pair
from danet.errors import LabelMapError
from danet.analysis.metrics import confusion_matrix, scores
from danet.models import IMAGENET_MEAN, IMAGENET_STD, Segmentor


@torch.inference_mode()
def predict_logits(model: Segmentor, x: torch.Tensor, flip: bool = False,
                   scales: tuple[float, ...] = (1.0,)) -> torch.Tensor:
    """Main-output logits (DANet: fused; summed softmax over scales and flips) at the input size."""
    size = x.shape[-2:]
    total = 0
    for scale in scales:
        xs = x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear",
                                                  align_corners=model.config.align_corners)
        views = [xs, xs.flip(-1)] if flip else [xs]
        for i, view in enumerate(views):
            logits = next(iter(model(view).values()))       # the main output
            if i == 1:
                logits = logits.flip(-1)
            total = total + torch.softmax(F.interpolate(logits, size=size, mode="bilinear",
                                                        align_corners=model.config.align_corners), 1)
    return total


def evaluate_model(model: Segmentor, data: str | Path, split: str = "val", device=None, num_classes: int = 11,
                   ignore_index: int = IGNORE_INDEX, flip: bool = False, scales=(1.0,),
                   mean=IMAGENET_MEAN, std=IMAGENET_STD, progress=None, distributed: bool | None = None) -> dict:
    """Scores of ``model`` on every pair of ``data/split``; ``progress`` wraps the pair list.

    ``distributed`` (default: when a process group of several ranks is joined) shards the pairs
    across ranks and sums the confusion matrices; every rank must then call this together.
    """
    device = device or next(model.parameters()).device
    pairs = list_pairs(data, split)
    sharded = dist_helpers.is_active() if distributed is None else distributed and dist_helpers.is_active()
    mine = dist_helpers.shard(pairs) if sharded else pairs
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for image_path, label_path in (progress(mine) if progress else mine):
        image, label = read_pair(image_path, label_path)
        x = normalise(image, mean, std).unsqueeze(0).to(device)
        prediction = predict_logits(model, x, flip, tuple(scales)).argmax(1)[0].cpu().numpy()
        if label.shape != prediction.shape:
            raise LabelMapError(f"{label_path.name}: label {label.shape} does not match image {prediction.shape}")
        confusion += confusion_matrix(prediction, label, num_classes, ignore_index)
    if sharded:
        confusion = dist_helpers.sum_array(confusion)
    result = scores(confusion)
    result.update(confusion=confusion, images=len(pairs), split=split)
    return result


def evaluate_loaded(loaded: LoadedModel, data: str | Path, split: str = "val", *, flip: bool = False,
                    scales=(1.0,), progress=None, distributed: bool | None = None) -> dict:
    """``evaluate_model`` with the classes, void label and normalisation of a loaded checkpoint."""
    meta = loaded.meta
    ignore = meta.dataset.ignore_index if meta.dataset.ignore_index is not None else IGNORE_INDEX
    return evaluate_model(loaded.model, data, split, num_classes=meta.config.num_classes, ignore_index=ignore,
                          flip=flip, scales=tuple(scales), mean=meta.mean, std=meta.std, progress=progress,
                          distributed=distributed)


def scores_record(result: dict, classes: tuple[str, ...] | list[str]) -> dict:
    """``evaluate_model``'s result as plain JSON values, per-class IoU keyed by class name."""
    return {"split": result["split"], "images": result["images"], "miou": result["miou"],
            "pixel_accuracy": result["pixel_accuracy"], "mean_accuracy": result["mean_accuracy"],
            "iou": dict(zip(classes, [None if math.isnan(v) else float(v) for v in result["iou"]])),
            "confusion": result["confusion"].tolist()}
