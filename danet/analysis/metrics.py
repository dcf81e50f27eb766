"""Confusion matrices and the scores derived from them."""
from __future__ import annotations

import numpy as np


def confusion_matrix(prediction: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
    """(K, K) counts, rows = ground truth, columns = prediction; ignore/out-of-range ids skipped."""
    prediction = np.asarray(prediction).ravel().astype(np.int64)
    target = np.asarray(target).ravel().astype(np.int64)
    valid = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        valid &= target != ignore_index
    index = target[valid] * num_classes + np.clip(prediction[valid], 0, num_classes - 1)
    return np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def scores(confusion: np.ndarray) -> dict:
    """Per-class IoU (NaN for classes absent from both), mIoU, pixel and mean class accuracy."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        class_acc = np.where(confusion.sum(1) > 0, tp / confusion.sum(1), np.nan)
    total = confusion.sum()
    return {
        "iou": iou,
        "miou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "mean_accuracy": float(np.nanmean(class_acc)) if np.any(confusion.sum(1) > 0) else float("nan"),
    }
