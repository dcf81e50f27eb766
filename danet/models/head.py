"""The dual-attention head: two branches (PAM, CAM) and three classifiers (fused, PAM, CAM)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from danet.models.attention import ChannelAttention, PositionAttention


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (no bias) + BN + ReLU; indices 0 and 1 match every public layout."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def classifier(in_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Dropout + 1x1 conv; the conv sits at index 1 as in the official and Tramac layouts."""
    return nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(in_channels, num_classes, 1))


class HeadOutput(NamedTuple):
    """Grid-resolution logits plus what an inspector needs to rebuild the attention."""

    fused: torch.Tensor
    pam: torch.Tensor
    cam: torch.Tensor
    pam_query: torch.Tensor        # (B, N, d)
    pam_key: torch.Tensor          # (B, N, d)
    cam_attention: torch.Tensor    # (B, C, C)
    cam_input: torch.Tensor        # (B, C, h, w): channel maps before CAM
    cam_output: torch.Tensor       # (B, C, h, w): channel maps after CAM
    pam_input: torch.Tensor | None = None   # (B, C, h, w): PAM's input A (the analysis recomputes from it)


class DAHead(nn.Module):
    """DANet head (Fu et al., CVPR 2019) with module names that say what each piece does."""

    def __init__(self, in_channels: int, num_classes: int, inter_channels: int | None = None,
                 key_channels: int | None = None, dropout: float = 0.1, pam_method: str = "auto"):
        super().__init__()
        inter = inter_channels or in_channels // 4
        self.pam_in_conv = conv_bn_relu(in_channels, inter)
        self.cam_in_conv = conv_bn_relu(in_channels, inter)
        self.pam = PositionAttention(inter, key_channels, method=pam_method)
        self.cam = ChannelAttention()
        self.pam_out_conv = conv_bn_relu(inter, inter)
        self.cam_out_conv = conv_bn_relu(inter, inter)
        self.pam_classifier = classifier(inter, num_classes, dropout)
        self.cam_classifier = classifier(inter, num_classes, dropout)
        self.fused_classifier = classifier(inter, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.inspect(x)
        return out.fused, out.pam, out.cam

    def inspect(self, x: torch.Tensor) -> HeadOutput:
        pam_in = self.pam_in_conv(x)
        pam_feat, query, key = self.pam.attend(pam_in)
        pam_feat = self.pam_out_conv(pam_feat)
        cam_in = self.cam_in_conv(x)
        cam_out, cam_attn = self.cam.attend(cam_in)
        cam_feat = self.cam_out_conv(cam_out)
        return HeadOutput(
            fused=self.fused_classifier(pam_feat + cam_feat),
            pam=self.pam_classifier(pam_feat),
            cam=self.cam_classifier(cam_feat),
            pam_query=query, pam_key=key, cam_attention=cam_attn,
            cam_input=cam_in, cam_output=cam_out, pam_input=pam_in,
        )
