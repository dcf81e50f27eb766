"""Global context head (Cao et al., ICCVW 2019) as mmseg's ``GCHead``, natively.

``gc_block`` is mmcv's ``ContextBlock`` (``mmcv/cnn/bricks/context_block.py``) with
``pooling_type='att'`` and ``fusion_types=('channel_add',)``: mask m = softmax_N(conv_mask(x)),
context = sum_n m_n x_n, out = x + channel_add_conv(context), where channel_add_conv is
1x1 conv (C -> planes) -> LayerNorm([planes, 1, 1]) -> ReLU -> 1x1 conv (planes -> C). The mask
is one (N,) map, the same for every query: its map is a ``GlobalMap``.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from danet.maps import GlobalMap, Grid
from danet.models.heads.base import HeadKeys, HeadState, register_head
from danet.models.heads.fcn import FCN_MODULES, FCNWrappedHead, fcn_options, identity

RATIO = 0.25                # planes = int(C * ratio), mmseg's default and every config's


class ContextBlock(nn.Module):
    """Attention pooling to one context vector, added to every position (channel add)."""

    def __init__(self, channels: int, planes: int):
        super().__init__()
        self.conv_mask = nn.Conv2d(channels, 1, 1)
        self.channel_add_conv = nn.Sequential(nn.Conv2d(channels, planes, 1), nn.LayerNorm([planes, 1, 1]),
                                              nn.ReLU(inplace=True), nn.Conv2d(planes, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)[0]

    def attend(self, x: torch.Tensor):
        """Output and the mask (B, N)."""
        b, c = x.shape[:2]
        mask = torch.softmax(self.conv_mask(x).reshape(b, -1), dim=-1)               # (B, N)
        context = torch.bmm(x.reshape(b, c, -1), mask[..., None]).reshape(b, c, 1, 1)
        return x + self.channel_add_conv(context), mask


MODULES = FCN_MODULES + ("gc_block.conv_mask", "gc_block.channel_add_conv")


@register_head
class GCHead(FCNWrappedHead):
    """mmseg's GCHead: FCN wrapper around one global context block."""

    name = "gc"
    title = "Global context (GCNet; Cao et al., ICCVW 2019; mmseg GCHead)"
    keys: ClassVar[dict[str, HeadKeys]] = {"mmseg": HeadKeys("gc_block", identity(MODULES)),
            "danet-lens": HeadKeys("gc_block", identity(MODULES))}
    option_names = ("channels", "planes", "dropout")

    def __init__(self, in_channels: int, num_classes: int, channels: int, planes: int, dropout: float = 0.1):
        super().__init__(in_channels, num_classes, channels, dropout)
        self.gc_block = ContextBlock(channels, planes)

    @classmethod
    def build(cls, in_channels: int, num_classes: int, options: dict) -> GCHead:
        channels, dropout, _ = fcn_options(options, in_channels)
        planes = options.get("planes") or int(channels * float(options.get("ratio") or RATIO))
        return cls(in_channels, num_classes, channels, max(int(planes), 1), dropout)

    @classmethod
    def options_from_shapes(cls, shape) -> dict:
        return {**cls.fcn_shapes(shape), "planes": int(shape("gc_block.channel_add_conv.0.weight")[0])}

    def inspect(self, x: torch.Tensor) -> HeadState:
        y, mask = self.gc_block.attend(self.convs[0](x))
        return HeadState({"out": self.classify(x, y)}, {"gc_mask": mask})

    def maps(self, kept, grid: Grid) -> dict:
        if "gc_mask" not in kept:
            return {}
        return {"gc": GlobalMap(grid, kept["gc_mask"], title="GCNet context mask: softmax_N(conv_mask(x))")}
