"""Live ablation: switch PAM and/or CAM off and see which pixels change class.

Setting alpha = 0 makes PAM the identity (E = A), beta = 0 does the same for CAM. The head is
recomputed from the branch inputs A_pam and A_cam kept in the ``InspectionResult``: these are
the outputs of the head's only layers that read the backbone features, so the recomputation is
the rest of the head (PAM aggregation, two 3x3 conv-BN-ReLU, the 1x1 classifiers) and never a
second backbone forward. The model is only read, never changed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from danet.errors import InputError, LabelMapError
from danet.analysis.metrics import confusion_matrix, scores
from danet.analysis.common import require


@dataclass(frozen=True)
class Ablation:
    """Predictions with PAM and/or CAM switched off, against the full model's."""

    pam_off: bool
    cam_off: bool
    logits: dict[str, torch.Tensor]       # (K, H, W) at input size: fused, pam, cam
    prediction: np.ndarray                # (H, W) fused class map after the ablation
    changed: np.ndarray                   # (H, W) bool: fused class differs from the full model's
    miou_before: float | None = None      # fused mIoU against the label map, when one was given
    miou_after: float | None = None

    @property
    def changed_fraction(self) -> float:
        return float(self.changed.mean())

    @property
    def miou_change(self) -> float | None:
        return None if self.miou_before is None else self.miou_after - self.miou_before

    @property
    def name(self) -> str:
        return {(True, False): "PAM off", (False, True): "CAM off", (True, True): "PAM and CAM off",
                (False, False): "nothing off"}[self.pam_off, self.cam_off]

    def summary(self) -> dict[str, float | str | None]:
        return {"variant": self.name, "changed_fraction": self.changed_fraction,
                "miou_before": self.miou_before, "miou_after": self.miou_after, "miou_change": self.miou_change}


def check_model(model, result) -> None:
    """Refuse a model that is training or whose head does not fit ``result``."""
    if model.training:
        raise InputError("the analysis needs a model in eval mode (call model.eval() once after loading)")
    head = model.head
    channels = head.pam_out_conv[0].in_channels
    classes = head.fused_classifier[1].out_channels
    if (result.pam_input.shape[0] != channels or result.cam_input.shape[0] != head.cam_out_conv[0].in_channels
            or result.fused_logits.shape[0] != classes):
        raise InputError(f"this model (head of {channels} channels, {classes} classes) is not the one that "
                         f"produced the result ({result.pam_input.shape[0]} channels, "
                         f"{result.fused_logits.shape[0]} classes)")


@torch.inference_mode()
def head_logits(model, result, *, pam: bool = True, cam: bool = True) -> dict[str, torch.Tensor]:
    """Grid-resolution (K, h, w) logits of the head, with PAM (``pam=False``: alpha = 0) and CAM
    (``cam=False``: beta = 0) on or off, recomputed by the head from the result's kept tensors."""
    require(result, "pam_input", "pam_value", "pam_query", "pam_key", "cam_input", "cam_output")
    check_model(model, result)
    off = frozenset(name for name, on in (("pam", pam), ("cam", cam)) if not on)
    return model.head.recompute(result.kept, off)


def fused_miou(prediction: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int | None) -> float:
    return scores(confusion_matrix(prediction, label, num_classes, ignore_index))["miou"]


@torch.inference_mode()
def ablate(model, result, *, pam_off: bool = True, cam_off: bool = False, label: np.ndarray | None = None,
           ignore_index: int | None = None) -> Ablation:
    """Switch PAM (``pam_off``) and/or CAM (``cam_off``) off for ``result``'s image.

    ``label`` is an optional (H, W) class-id map of the image: then the fused mIoU before and
    after is given too (ids outside 0..K-1 and ``ignore_index`` are void).
    """
    grid = head_logits(model, result, pam=not pam_off, cam=not cam_off)
    logits = {name: model.upsample(t[None], result.image_size)[0] for name, t in grid.items()}
    prediction = logits[result.main_output].argmax(0).numpy().astype(np.int64)
    before = result.prediction()
    miou_before = miou_after = None
    if label is not None:
        label = np.asarray(label)
        if label.shape != tuple(result.image_size):
            raise LabelMapError(f"label map is {label.shape[1] if label.ndim > 1 else '?'}x{label.shape[0]} "
                                f"but the image is {result.image_size[1]}x{result.image_size[0]}")
        classes = result.fused_logits.shape[0]
        miou_before = fused_miou(before, label, classes, ignore_index)
        miou_after = fused_miou(prediction, label, classes, ignore_index)
    return Ablation(pam_off=pam_off, cam_off=cam_off, logits=logits, prediction=prediction,
                    changed=prediction != before, miou_before=miou_before, miou_after=miou_after)
