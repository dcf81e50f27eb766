"""Criss-cross head (CCNet; Huang et al., ICCV 2019) as mmseg's ``CCHead``, natively.

``cca`` is mmcv's ``CrissCrossAttention`` (``mmcv/ops/cc_attention.py``), applied ``recurrence``
(2) times with the same weights between ``convs.0`` and ``convs.1`` of the FCN wrapper. Per loop:
q, k (1x1, C -> C/8, bias), v (1x1, C -> C, bias); for query (i, j) the column energies
q_ij . k_i'j (-inf at i' = i) and the row energies q_ij . k_ij', no scale, one softmax over the
h + w of them, column part first: weights (B, h, w, h + w); out = gamma (A v) + x.
Each loop's weights are kept whole (O(N (h + w)), never N x N); a loop's map is exact, the
composed map A2 A1 is a mass flow (the value projections, gamma and the residual between the
loops are not in it). speedinghzl/CCNet's ``RCCAModule`` is the same maths (its heads use
InPlaceABN with leaky ReLU 0.01: option ``act="leaky_relu"``).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from danet.maps import CrissCrossMap, Grid
from danet.models.heads.base import HeadKeys, HeadState, Term, register_head
from danet.models.heads.fcn import (
    FCN_MODULES,
    OFFICIAL_CC_FCN,
    FCNWrappedHead,
    fcn_options,
    identity,
)

RECURRENCE = 2              # every published CCNet config


def criss_cross_weights(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """(B, h, w, h + w) softmax weights over each query's column (own cell 0) then its row."""
    h = query.shape[2]
    energy_h = torch.einsum("bchw,bciw->bhwi", query, key)
    own = torch.eye(h, dtype=torch.bool, device=query.device)[:, None, :]       # (h, 1, h): i' == i
    energy_h = energy_h.masked_fill(own, float("-inf"))
    energy_w = torch.einsum("bchw,bchj->bhwj", query, key)
    return torch.softmax(torch.cat([energy_h, energy_w], dim=-1), dim=-1)


def criss_cross_aggregate(weights: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w): each query's weighted sum of ``value`` over its cross."""
    h = value.shape[2]
    return (torch.einsum("bciw,bhwi->bchw", value, weights[..., :h])
            + torch.einsum("bchj,bhwj->bchw", value, weights[..., h:]))


class CrissCrossAttention(nn.Module):
    """One criss-cross loop; ``gamma`` (shape [1]; mmseg's Scale is 0-d) scales the context."""

    def __init__(self, channels: int, key_channels: int | None = None):
        super().__init__()
        key_channels = key_channels or max(channels // 8, 1)
        self.query_conv = nn.Conv2d(channels, key_channels, 1)
        self.key_conv = nn.Conv2d(channels, key_channels, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)[0]

    def attend(self, x: torch.Tensor):
        """Output and the loop's weights (B, h, w, h + w)."""
        weights = criss_cross_weights(self.query_conv(x), self.key_conv(x))
        return self.gamma * criss_cross_aggregate(weights, self.value_conv(x)) + x, weights

    def meta_attend(self, x: torch.Tensor, device: str, element_bytes: int):
        b, c, h, w = x.shape
        weights = x.new_empty(b, h, w, h + w)
        # the two energies, their concatenation and the softmax, then the two aggregations
        working = 3 * weights.numel() * element_bytes + 2 * x.numel() * element_bytes
        qkv = b * h * w * (2 * self.query_conv.out_channels + c) * element_bytes
        return (torch.empty_like(x), weights), working + qkv, None


MODULES = FCN_MODULES + ("cca.query_conv", "cca.key_conv", "cca.value_conv", "cca.gamma")


@register_head
class CCHead(FCNWrappedHead):
    """mmseg's CCHead: FCN wrapper, one shared criss-cross module run ``recurrence`` times."""

    name = "cc"
    title = "Criss-cross attention (CCNet; Huang et al., ICCV 2019; mmseg CCHead)"
    terms = (Term("cc", "criss-cross attention (every loop)", "cca.gamma", "gamma"),)
    keys: ClassVar[dict[str, HeadKeys]] = {"mmseg": HeadKeys("cca", {**identity(MODULES[:-1]), "cca.gamma.scale": "cca.gamma"}),
            "official": HeadKeys("conva", {**OFFICIAL_CC_FCN, **identity(MODULES[len(FCN_MODULES):])}),
            "danet-lens": HeadKeys("cca", identity(MODULES))}
    option_names = ("channels", "key_channels", "recurrence", "act", "dropout")

    def __init__(self, in_channels: int, num_classes: int, channels: int, key_channels: int | None = None,
                 recurrence: int = RECURRENCE, dropout: float = 0.1, act: str = "relu"):
        super().__init__(in_channels, num_classes, channels, dropout, act)
        if recurrence < 1:
            raise ValueError(f"criss-cross recurrence must be at least 1, got {recurrence}")
        self.recurrence = int(recurrence)
        self.act = act
        self.cca = CrissCrossAttention(channels, key_channels)

    @classmethod
    def build(cls, in_channels: int, num_classes: int, options: dict) -> CCHead:
        channels, dropout, act = fcn_options(options, in_channels)
        recurrence = options.get("recurrence")
        return cls(in_channels, num_classes, channels, options.get("key_channels"),
                   RECURRENCE if recurrence is None else int(recurrence), dropout, act)

    @classmethod
    def options_from_shapes(cls, shape) -> dict:
        """The recurrence is no shape: the published configs' 2 unless the config says otherwise."""
        return {**cls.fcn_shapes(shape), "key_channels": int(shape("cca.query_conv.weight")[0])}

    def loops(self, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        weights = []
        for _ in range(self.recurrence):
            y, w = self.cca.attend(y)
            weights.append(w)
        return y, weights

    def inspect(self, x: torch.Tensor) -> HeadState:
        cc_input = self.convs[0](x)
        y, weights = self.loops(cc_input)
        part = self.input_part(x)
        kept = {f"cc_loop{i + 1}": w for i, w in enumerate(weights)}
        kept.update(cc_input=cc_input, cat_part=part)
        return HeadState({"out": self.tail(part, y)}, kept)

    def maps(self, kept, grid: Grid) -> dict:
        loops = [kept[f"cc_loop{i + 1}"] for i in range(self.recurrence) if f"cc_loop{i + 1}" in kept]
        if len(loops) != self.recurrence:
            return {}
        maps = {f"loop{i + 1}": CrissCrossMap(grid, [loop], title=f"criss-cross loop {i + 1} (exact)")
                for i, loop in enumerate(loops)}
        if len(loops) > 1:
            maps["composed"] = CrissCrossMap(grid, loops, title=f"{len(loops)} loops composed (mass flow: "
                                             "value projections, gamma and residuals left out)")
        return maps

    @torch.inference_mode()
    def recompute(self, kept, off: frozenset[str]) -> dict[str, torch.Tensor]:
        """gamma = 0 makes every loop the identity: the tail runs from the kept loop input."""
        parameter = next(self.parameters())

        def on_device(t):
            return torch.as_tensor(t)[None].to(parameter.device, parameter.dtype)

        y = on_device(kept["cc_input"])
        if "cc" not in off and float(self.cca.gamma) != 0:
            y = self.loops(y)[0]
        return {"out": self.tail(on_device(kept["cat_part"]), y)[0].float().cpu()}
