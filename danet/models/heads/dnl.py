"""Disentangled non-local head (Yin et al., ECCV 2020) as mmseg's ``DNLHead``, natively.

``dnl_block`` (``mmseg/models/decode_heads/dnl_head.py``, ``DisentangledNonLocal2d``): NL's
theta/phi/g/conv_out plus ``conv_mask`` (1x1, C -> 1, bias). Pairwise term: theta and phi are
whitened (minus their mean over the N positions, per channel), then
softmax_keys(theta~^T phi~ / sqrt(d) / temperature). Unary term: softmax_N(conv_mask(x)), one map
for every query. out = x + conv_out(pairwise g^T + unary g^T): each term sums to 1, the two to 2.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from danet.maps import DotSoftmaxMap, GlobalMap, Grid
from danet.maps.dot_softmax import aggregate, method_for
from danet.models.heads.base import HeadKeys, HeadState, register_head
from danet.models.heads.da import pam_working_bytes
from danet.models.heads.fcn import FCN_MODULES, FCNWrappedHead, fcn_options, identity
from danet.models.heads.nonlocal_ import NonLocal2d, inter_channels

TEMPERATURE = 0.05          # every published DNL config


class DisentangledNonLocal2d(NonLocal2d):
    """The whitened pairwise term plus the unary term, as mmseg computes them."""

    def __init__(self, channels: int, inter: int, temperature: float = TEMPERATURE, use_scale: bool = True,
                 method: str = "auto"):
        super().__init__(channels, inter, use_scale, method)
        self.temperature = float(temperature)
        self.conv_mask = nn.Conv2d(channels, 1, 1)

    @property
    def scale(self) -> float:
        """The pairwise energies' factor: 1 / (sqrt(d) temperature)."""
        return (1.0 / math.sqrt(self.inter_channels) if self.use_scale else 1.0) / self.temperature

    def attend(self, x: torch.Tensor):
        """Output, whitened theta and phi (B, N, d) and the unary map (B, N)."""
        theta, phi, g = self.project(x)
        theta = theta - theta.mean(dim=1, keepdim=True)
        phi = phi - phi.mean(dim=1, keepdim=True)
        pairwise = aggregate(theta, phi, g, self.method, self.scale)                 # (B, N, d)
        unary = torch.softmax(self.conv_mask(x).flatten(1), dim=-1)                  # (B, N)
        unary_x = torch.bmm(unary[:, None], g)                                       # (B, 1, d)
        y = (pairwise + unary_x).transpose(1, 2).reshape(x.shape[0], self.inter_channels, *x.shape[2:])
        return x + self.conv_out(y), theta, phi, unary

    def meta_attend(self, x: torch.Tensor, device: str, element_bytes: int):
        theta, phi, _ = self.project(x)
        b, n, d = x.shape[0], x.shape[-2] * x.shape[-1], self.inter_channels
        method = self.method if self.method != "auto" else method_for(n, device)
        working = pam_working_bytes(n, d, d, method, device, element_bytes)
        outputs = (torch.empty_like(x), theta, phi, x.new_empty(b, n))
        return outputs, working + 5 * b * n * d * element_bytes, (method, working)


MODULES = FCN_MODULES + ("dnl_block.theta.conv", "dnl_block.phi.conv", "dnl_block.g.conv",
                         "dnl_block.conv_out.conv", "dnl_block.conv_out.bn", "dnl_block.conv_mask")


@register_head
class DNLHead(FCNWrappedHead):
    """mmseg's DNLHead: FCN wrapper around one disentangled non-local block."""

    name = "dnl"
    title = "Disentangled non-local (whitened pairwise + unary; Yin et al., ECCV 2020; mmseg DNLHead)"
    keys: ClassVar[dict[str, HeadKeys]] = {"mmseg": HeadKeys("dnl_block", identity(MODULES)),
            "danet-lens": HeadKeys("dnl_block", identity(MODULES))}
    option_names = ("channels", "inter_channels", "temperature", "use_scale", "dropout")

    def __init__(self, in_channels: int, num_classes: int, channels: int, inter: int,
                 temperature: float = TEMPERATURE, use_scale: bool = True, dropout: float = 0.1,
                 method: str = "auto"):
        super().__init__(in_channels, num_classes, channels, dropout)
        self.dnl_block = DisentangledNonLocal2d(channels, inter, temperature, use_scale, method)

    @classmethod
    def build(cls, in_channels: int, num_classes: int, options: dict) -> DNLHead:
        channels, dropout, _ = fcn_options(options, in_channels)
        temperature, use_scale = options.get("temperature"), options.get("use_scale")
        return cls(in_channels, num_classes, channels, inter_channels(options, channels),
                   TEMPERATURE if temperature is None else float(temperature),
                   True if use_scale is None else bool(use_scale), dropout)

    @classmethod
    def options_from_shapes(cls, shape) -> dict:
        """The temperature is no shape: the published configs' 0.05 unless the config says otherwise."""
        return {**cls.fcn_shapes(shape), "inter_channels": int(shape("dnl_block.theta.conv.weight")[0])}

    def inspect(self, x: torch.Tensor) -> HeadState:
        y, theta, phi, unary = self.dnl_block.attend(self.convs[0](x))
        return HeadState({"out": self.classify(x, y)}, {"dnl_query": theta, "dnl_key": phi, "dnl_unary": unary})

    def maps(self, kept, grid: Grid) -> dict:
        if "dnl_query" not in kept:
            return {}
        block = self.dnl_block
        return {"pairwise": DotSoftmaxMap(grid, kept["dnl_query"], kept["dnl_key"], scale=block.scale,
                                          title=f"DNL pairwise: softmax(whitened theta . phi / sqrt("
                                                f"{block.inter_channels}) / {block.temperature:g})"),
                "unary": GlobalMap(grid, kept["dnl_unary"], title="DNL unary: softmax_N(conv_mask(x))")}
