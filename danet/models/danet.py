"""DANet = backbone + DA head, described by a small serialisable config."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from danet.models.backbones import DilatedResNet, TimmBackbone
from danet.models.head import DAHead
from danet.models.registry import BACKBONES, register_model


@dataclass(frozen=True)
class DANetConfig:
    """Everything needed to rebuild the network; stored in our ``.safetensors`` metadata.

    ``backbone`` is ``"resnet{18,34,50,101,152}"`` or a timm model name
    (e.g. ``"tf_efficientnet_lite0"``, ``"mobilenetv2_100"``). ``stem`` only means something
    for ResNets; a timm backbone has its own, so it is stored as None there.
    """

    num_classes: int = 19
    backbone: str = "resnet50"
    stem: str = "7x7"
    output_stride: int = 8
    multi_grid: bool = False
    head_channels: int | None = None      # None: backbone channels // 4, as in the paper
    key_channels: int | None = None       # None: head_channels // 8
    align_corners: bool = True
    dropout: float = 0.1

    def __post_init__(self):
        if isinstance(self.backbone, str) and not self.is_resnet and self.stem is not None:
            object.__setattr__(self, "stem", None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DANetConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def is_resnet(self) -> bool:
        return self.backbone.startswith("resnet") and self.backbone[6:].isdigit()


class DANet(nn.Module):
    """Dual Attention Network. ``forward`` returns (fused, PAM, CAM) logits at input size."""

    def __init__(self, config: DANetConfig):
        super().__init__()
        self.config = config
        if config.is_resnet:
            self.backbone = DilatedResNet(int(config.backbone[6:]), config.stem,
                                          config.output_stride, config.multi_grid)
        else:
            self.backbone = TimmBackbone(config.backbone, config.output_stride)
        self.head = DAHead(self.backbone.out_channels, config.num_classes, config.head_channels,
                           config.key_channels, config.dropout)

    def upsample(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(logits, size=size, mode="bilinear",
                             align_corners=self.config.align_corners)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        fused, pam, cam = self.head(self.backbone(x))
        return self.upsample(fused, size), self.upsample(pam, size), self.upsample(cam, size)


def create_model(config: DANetConfig | None = None, **overrides) -> DANet:
    """Build a DANet from a config (and/or keyword overrides); weights are random."""
    config = dataclasses.replace(config or DANetConfig(), **overrides)
    return DANet(config)


def _builder(backbone: str, default_classes: int):
    spec = BACKBONES[backbone]

    def build(*, num_classes: int = default_classes, **config) -> DANet:
        if spec.head_channels is not None:
            config.setdefault("head_channels", spec.head_channels)
        return create_model(num_classes=num_classes, backbone=backbone, **config)

    build.__name__ = build.__qualname__ = "danet_" + backbone.replace("_100", "").replace("tf_", "")
    build.__doc__ = (f"DANet on {backbone} ({spec.family}, {spec.channels}-channel features), random weights; "
                     f"keyword arguments override ``DANetConfig`` fields.")
    return register_model()(build)


danet_resnet18 = _builder("resnet18", 19)
danet_resnet34 = _builder("resnet34", 19)
danet_resnet50 = _builder("resnet50", 19)
danet_resnet101 = _builder("resnet101", 19)
danet_resnet152 = _builder("resnet152", 19)
danet_mobilenetv2 = _builder("mobilenetv2_100", 11)
danet_efficientnet_lite0 = _builder("tf_efficientnet_lite0", 11)
danet_efficientnet_lite1 = _builder("tf_efficientnet_lite1", 11)
danet_efficientnet_lite2 = _builder("tf_efficientnet_lite2", 11)
