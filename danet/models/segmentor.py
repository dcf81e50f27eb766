"""A segmentor = a dilated backbone + one attention head, described by a small serialisable config.

The head is looked up by name in ``danet.models.heads`` (DANet's ``"da"`` by default), so the
segmentor knows no head. ``forward`` returns the head's logits by output name at input size,
main output first (torchvision's segmentation models return an ordered dict the same way).
``DANet`` stays for the 0.2 API: a segmentor whose ``forward`` returns the (fused, PAM, CAM) tuple.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from danet.models.backbones import DilatedResNet, TimmBackbone
from danet.models.heads import get_head
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
    head: str = "da"                      # a registered head (``danet.models.heads.list_heads()``)
    stem: str = "7x7"
    output_stride: int = 8
    multi_grid: bool = False
    head_channels: int | None = None      # None: backbone channels // 4, as in the paper
    key_channels: int | None = None       # None: head_channels // 8
    align_corners: bool = True
    dropout: float = 0.1
    # options of heads other than DA, as sorted (name, value) pairs (hashable, JSON-ready)
    head_options: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        if isinstance(self.backbone, str) and not self.is_resnet and self.stem is not None:
            object.__setattr__(self, "stem", None)
        if isinstance(self.head_options, dict):
            object.__setattr__(self, "head_options", tuple(sorted(self.head_options.items())))
        else:
            object.__setattr__(self, "head_options", tuple(tuple(pair) for pair in self.head_options))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "head_options": dict(self.head_options)}

    @classmethod
    def from_dict(cls, data: dict) -> DANetConfig:
        """Unknown fields are ignored; a v1 record (no ``head``) is DANet's DA head."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def options(self) -> dict:
        """What the head's ``build`` reads: DA's own fields and every other head's options."""
        return {"head_channels": self.head_channels, "key_channels": self.key_channels,
                "dropout": self.dropout, **dict(self.head_options)}

    @property
    def is_resnet(self) -> bool:
        return self.backbone.startswith("resnet") and self.backbone[6:].isdigit()


SegmentorConfig = DANetConfig


class Segmentor(nn.Module):
    """Backbone + attention head. ``forward`` returns {output name: logits at input size}."""

    def __init__(self, config: DANetConfig):
        super().__init__()
        self.config = config
        if config.is_resnet:
            self.backbone = DilatedResNet(int(config.backbone[6:]), config.stem,
                                          config.output_stride, config.multi_grid)
        else:
            self.backbone = TimmBackbone(config.backbone, config.output_stride)
        self.head = get_head(config.head).build(self.backbone.out_channels, config.num_classes, config.options())

    def upsample(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(logits, size=size, mode="bilinear",
                             align_corners=self.config.align_corners)

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.head.outputs

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        return {name: self.upsample(t, size) for name, t in self.head(self.backbone(x)).items()}


class DANet(Segmentor):
    """The 0.2 API: a segmentor whose ``forward`` returns the tuple of its outputs, main first."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(super().forward(x).values())


def create_model(config: DANetConfig | None = None, **overrides) -> Segmentor:
    """Build a segmentor from a config (and/or keyword overrides); weights are random."""
    config = dataclasses.replace(config or DANetConfig(), **overrides)
    return Segmentor(config)


def _builder(backbone: str, default_classes: int):
    spec = BACKBONES[backbone]

    def build(*, num_classes: int = default_classes, **config) -> Segmentor:
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
