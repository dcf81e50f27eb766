"""The FCN wrapper that mmseg's NL, GC, DNL and CC heads share, with mmseg's module names.

mmseg's ``FCNHead`` (``mmseg/models/decode_heads/fcn_head.py``, ``num_convs=2``,
``concat_input=True``): ``convs.0`` (3x3, C_in -> C) -> the head's block -> ``convs.1``
(3x3, C -> C) -> ``conv_cat`` (3x3 on cat[input, .], C_in + C -> C) -> dropout -> ``conv_seg``.
Every conv-norm-act is an mmcv ``ConvModule`` whose children are ``conv`` and ``bn``; keeping
those names makes our ``head.*`` state-dict keys mmseg's ``decode_head.*`` keys one for one.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from danet.errors import UnknownNameError
from danet.models.heads.base import AttentionHead

ACTIVATIONS = ("relu", "leaky_relu")          # mmseg's ReLU; CCNet's InPlaceABN leaky ReLU (0.01)


class ConvModule(nn.Module):
    """mmcv's ConvModule as the heads use it: conv (bias only without a norm), BN, activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *, norm: bool = True,
                 act: str | None = "relu"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not norm)
        self.bn = nn.BatchNorm2d(out_channels) if norm else None
        if act is not None and act not in ACTIVATIONS:
            raise UnknownNameError(f"unknown head activation {act!r}; use one of {', '.join(ACTIVATIONS)}")
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.conv(x))

    def post(self, x: torch.Tensor) -> torch.Tensor:
        """Norm and activation of a conv output (``conv_cat`` computes its conv in two parts)."""
        if self.bn is not None:
            x = self.bn(x)
        if self.act == "relu":
            return F.relu(x)
        if self.act == "leaky_relu":
            return F.leaky_relu(x, 0.01)
        return x


# The wrapper's modules (relative to ``head.``), in mmseg's names, which are also ours.
FCN_MODULES = ("convs.0.conv", "convs.0.bn", "convs.1.conv", "convs.1.bn", "conv_cat.conv", "conv_cat.bn",
               "conv_seg")
# speedinghzl/CCNet's RCCAModule names the same pieces conva / convb / bottleneck.{0,1,3}
OFFICIAL_CC_FCN = dict(zip(("conva.0", "conva.1", "convb.0", "convb.1", "bottleneck.0", "bottleneck.1",
                            "bottleneck.3"), FCN_MODULES))


def identity(modules) -> dict[str, str]:
    return {m: m for m in modules}


def fcn_options(options: dict, in_channels: int) -> tuple[int, float, str]:
    """(channels, dropout, activation) from a config's options; channels default C_in / 4
    (mmseg's r50-d8 configs: 2048 -> 512), or DANet's ``head_channels`` when that is set."""
    channels = options.get("channels") or options.get("head_channels") or max(in_channels // 4, 1)
    dropout = options.get("dropout")
    return int(channels), 0.1 if dropout is None else float(dropout), options.get("act") or "relu"


class FCNWrappedHead(AttentionHead):
    """Base of the heads that sit inside mmseg's FCN wrapper; subclasses add the block."""

    outputs = ("out",)
    output_titles: ClassVar[dict[str, str]] = {"out": "segmentation (conv_seg)"}

    def __init__(self, in_channels: int, num_classes: int, channels: int, dropout: float = 0.1,
                 act: str = "relu"):
        super().__init__()
        self.in_channels, self.channels = in_channels, channels
        self.convs = nn.ModuleList([ConvModule(in_channels, channels, 3, act=act),
                                    ConvModule(channels, channels, 3, act=act)])
        self.conv_cat = ConvModule(in_channels + channels, channels, 3, act=act)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def input_part(self, x: torch.Tensor) -> torch.Tensor:
        """``conv_cat``'s conv of the backbone part of cat[x, y]: (B, C, h, w), kept instead of
        the C_in-channel input so the head's tail can run again without the backbone."""
        return F.conv2d(x, self.conv_cat.conv.weight[:, : self.in_channels], padding=1)

    def tail(self, part: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """convs.1, conv_cat (from the kept input part) and the classifier after the block."""
        y = self.convs[1](y)
        y = F.conv2d(y, self.conv_cat.conv.weight[:, self.in_channels:], padding=1)
        return self.conv_seg(self.dropout(self.conv_cat.post(part + y)))

    def classify(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """mmseg's order exactly: convs.1, conv_cat(cat[x, y]), dropout, conv_seg."""
        y = self.conv_cat(torch.cat([x, self.convs[1](y)], dim=1))
        return self.conv_seg(self.dropout(y))

    @classmethod
    def fcn_shapes(cls, shape) -> dict:
        return {"num_classes": int(shape("conv_seg.weight")[0]), "channels": int(shape("convs.0.conv.weight")[0])}
