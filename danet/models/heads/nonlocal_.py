"""Non-local head (Wang et al., CVPR 2018) as mmseg's ``NLHead``, natively.

``nl_block`` is mmcv's ``NonLocal2d`` in ``embedded_gaussian`` mode (``mmcv/cnn/bricks/non_local.py``):
theta, phi, g are 1x1 convs with bias, C -> d = C / reduction; attn = softmax_keys(theta^T phi / sqrt(d))
(``use_scale``, set in every config); out = x + conv_out(attn g^T), conv_out a 1x1 conv + BN, no gain.
It sits in the FCN wrapper (``fcn.py``). The map is the query's softmax row, rebuilt from the kept
(N, d) theta and phi; the aggregation never builds N x N on large grids (``maps.dot_softmax``).
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from danet.maps import DotSoftmaxMap, Grid
from danet.maps.dot_softmax import aggregate, method_for
from danet.models.heads.base import HeadKeys, HeadState, register_head
from danet.models.heads.da import pam_working_bytes
from danet.models.heads.fcn import (
    FCN_MODULES,
    ConvModule,
    FCNWrappedHead,
    fcn_options,
    identity,
)


def inter_channels(options: dict, channels: int) -> int:
    """d: stored as ``inter_channels``; else from mmseg's ``reduction`` (2), ``max(C // r, 1)``."""
    if options.get("inter_channels"):
        return int(options["inter_channels"])
    return max(channels // int(options.get("reduction") or 2), 1)


class NonLocal2d(nn.Module):
    """mmcv's NonLocal2d, embedded Gaussian, no sub-sampling (mmseg's NLHead settings)."""

    def __init__(self, channels: int, inter: int, use_scale: bool = True, method: str = "auto"):
        super().__init__()
        self.inter_channels, self.use_scale, self.method = inter, use_scale, method
        self.g = ConvModule(channels, inter, 1, norm=False, act=None)
        self.theta = ConvModule(channels, inter, 1, norm=False, act=None)
        self.phi = ConvModule(channels, inter, 1, norm=False, act=None)
        self.conv_out = ConvModule(inter, channels, 1, act=None)

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.inter_channels) if self.use_scale else 1.0

    def project(self, x: torch.Tensor):
        """theta, phi, g as (B, N, d)."""
        return tuple(m(x).flatten(2).transpose(1, 2) for m in (self.theta, self.phi, self.g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)[0]

    def attend(self, x: torch.Tensor):
        """Output, theta and phi (B, N, d): what the map is rebuilt from."""
        theta, phi, g = self.project(x)
        y = aggregate(theta, phi, g, self.method, self.scale)
        y = y.transpose(1, 2).reshape(x.shape[0], self.inter_channels, *x.shape[2:])
        return x + self.conv_out(y), theta, phi

    def meta_attend(self, x: torch.Tensor, device: str, element_bytes: int):
        theta, phi, _ = self.project(x)
        n, d = x.shape[-2] * x.shape[-1], self.inter_channels
        method = self.method if self.method != "auto" else method_for(n, device)
        working = pam_working_bytes(n, d, d, method, device, element_bytes)
        return (torch.empty_like(x), theta, phi), working + 3 * x.shape[0] * n * d * element_bytes, (method, working)


MODULES = FCN_MODULES + ("nl_block.theta.conv", "nl_block.phi.conv", "nl_block.g.conv",
                         "nl_block.conv_out.conv", "nl_block.conv_out.bn")


@register_head
class NLHead(FCNWrappedHead):
    """mmseg's NLHead: FCN wrapper around one non-local block (module names as mmseg's)."""

    name = "nl"
    title = "Non-local (embedded Gaussian; Wang et al., CVPR 2018; mmseg NLHead)"
    keys: ClassVar[dict[str, HeadKeys]] = {"mmseg": HeadKeys("nl_block", identity(MODULES)),
            "danet-lens": HeadKeys("nl_block", identity(MODULES))}
    option_names = ("channels", "inter_channels", "use_scale", "dropout")

    def __init__(self, in_channels: int, num_classes: int, channels: int, inter: int, use_scale: bool = True,
                 dropout: float = 0.1, method: str = "auto"):
        super().__init__(in_channels, num_classes, channels, dropout)
        self.nl_block = NonLocal2d(channels, inter, use_scale, method)

    @classmethod
    def build(cls, in_channels: int, num_classes: int, options: dict) -> NLHead:
        channels, dropout, _ = fcn_options(options, in_channels)
        use_scale = options.get("use_scale")
        return cls(in_channels, num_classes, channels, inter_channels(options, channels),
                   True if use_scale is None else bool(use_scale), dropout)

    @classmethod
    def options_from_shapes(cls, shape) -> dict:
        return {**cls.fcn_shapes(shape), "inter_channels": int(shape("nl_block.theta.conv.weight")[0])}

    def inspect(self, x: torch.Tensor) -> HeadState:
        y, theta, phi = self.nl_block.attend(self.convs[0](x))
        return HeadState({"out": self.classify(x, y)}, {"nl_query": theta, "nl_key": phi})

    def maps(self, kept, grid: Grid) -> dict:
        if "nl_query" not in kept:
            return {}
        scale = self.nl_block.scale
        return {"nl": DotSoftmaxMap(grid, kept["nl_query"], kept["nl_key"], scale=scale,
                                    title=f"Non-local: softmax(theta . phi / sqrt({self.nl_block.inter_channels}))"
                                    if scale != 1.0 else "Non-local: softmax(theta . phi)")}
