"""DANet's dual attention head (Fu et al., CVPR 2019): PAM and CAM branches, three classifiers.

PAM: energy[p, q] = Q_p . K_q (no 1/sqrt(d) scale), softmax over q, E = alpha * attn V + A.
CAM: energy = A A^T, attn = softmax(rowmax(energy) - energy), E = beta * attn A + A.
The PAM row kernel is ``danet.maps.dot_softmax`` (shared with every dot-product head); the
C x C CAM matrix is small and kept whole. Key tables: docs/checkpoint-formats.md section 4.
"""
from __future__ import annotations

import torch
from torch import nn

from danet.maps import DotSoftmaxMap, Grid
from danet.maps.dot_softmax import CHUNK_ELEMENTS, aggregate, method_for
from danet.models.heads.base import (
    AttentionHead,
    HeadKeys,
    HeadState,
    Term,
    register_head,
)


def cam_attention(features: torch.Tensor) -> torch.Tensor:
    """CAM C x C softmax matrix for (B, C, N) features, with the reference max-minus-energy."""
    energy = torch.bmm(features, features.transpose(1, 2))
    energy_new = energy.amax(dim=-1, keepdim=True) - energy
    return torch.softmax(energy_new, dim=-1)


def pam_working_bytes(positions: int, key_channels: int, channels: int, method: str,
                      device: str = "cpu", element_bytes: int = 4) -> int:
    """Temporary memory of one PAM aggregation beyond its query, key and value (mirrors ``aggregate``)."""
    n = positions
    output = n * channels * element_bytes
    if method == "explicit":
        return 2 * n * n * element_bytes + output             # energy + softmax, then the product
    if method == "chunked":
        # the autograd path's energy + softmax per block, then per-block outputs and their
        # concatenation; inference needs one block in place: an upper bound there
        block = min(n, max(1, CHUNK_ELEMENTS // n)) * n
        return 2 * block * element_bytes + 2 * output
    if method == "sdpa":
        # contiguous q, k (zero-padded to C on the CPU) and v, then the output
        qk_width = channels if device == "cpu" else key_channels
        return (2 * qk_width + channels) * n * element_bytes + output
    raise ValueError(f"unknown PAM method {method!r}")


class PositionAttention(nn.Module):
    """PAM: self-attention over spatial positions, residual scaled by ``alpha`` (init 0)."""

    def __init__(self, channels: int, key_channels: int | None = None, method: str = "auto"):
        super().__init__()
        key_channels = key_channels or max(channels // 8, 1)
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.alpha = nn.Parameter(torch.zeros(1))
        self.method = method

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key (B, N, d) and value (B, N, C) for a (B, C, H, W) input."""
        return (self.query(x).flatten(2).transpose(1, 2),
                self.key(x).flatten(2).transpose(1, 2),
                self.value(x).flatten(2).transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)[0]

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Output plus query, key and value, so a row or the output can be rebuilt later."""
        b, c, h, w = x.shape
        query, key, value = self.project(x)
        context = aggregate(query, key, value, self.method)
        context = context.transpose(1, 2).reshape(b, c, h, w)
        return self.alpha * context + x, query, key, value

    def meta_attend(self, x: torch.Tensor, device: str, element_bytes: int):
        """For the memory estimate: (``attend``'s outputs as shapes, bytes alive beyond them,
        (path, aggregation working set)); the aggregation itself is not run."""
        query, key, value = self.project(x)
        n = x.shape[-2] * x.shape[-1]
        d, c = self.query.out_channels, self.value.out_channels
        method = self.method if self.method != "auto" else method_for(n, device)
        working = pam_working_bytes(n, d, c, method, device, element_bytes)
        qkv = x.shape[0] * n * (2 * d + c) * element_bytes
        return (torch.empty_like(x), query, key, value), working + qkv, (method, working)


class ChannelAttention(nn.Module):
    """CAM: attention between channels (no convolutions), residual scaled by ``beta`` (init 0)."""

    def __init__(self):
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)[0]

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output and the (B, C, C) attention matrix (C x C is small: always kept)."""
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        # The energy of large feature maps overflows fp16: compute CAM in fp32, autocast or not.
        with torch.autocast(device_type=x.device.type, enabled=False):
            attention = cam_attention(flat.float())
            out = torch.bmm(attention, flat.float())
        out = out.to(x.dtype).reshape(b, c, h, w)
        return self.beta * out + x, attention

    def meta_attend(self, x: torch.Tensor, device: str, element_bytes: int):
        b, c = x.shape[:2]
        fp32_copy = x.numel() * 4 if x.dtype != torch.float32 else 0
        return (torch.empty_like(x), x.new_empty(b, c, c)), 3 * b * c * c * 4 + x.numel() * 4 + fp32_copy, None


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (no bias) + BN + ReLU; indices 0 and 1 match every public layout."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def classifier(in_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Dropout + 1x1 conv; the conv sits at index 1 as in the official and Tramac layouts."""
    return nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(in_channels, num_classes, 1))


# Our head, module by module (relative to ``head.``); each public source renames these.
MODULES = ("pam_in_conv.0", "pam_in_conv.1", "cam_in_conv.0", "cam_in_conv.1",
           "pam.query", "pam.key", "pam.value", "pam.alpha", "cam.beta",
           "pam_out_conv.0", "pam_out_conv.1", "cam_out_conv.0", "cam_out_conv.1",
           "pam_classifier.1", "cam_classifier.1", "fused_classifier.1")


def _table(*foreign: str) -> dict[str, str]:
    """Foreign module names, in the order of ``MODULES``, -> ours."""
    assert len(foreign) == len(MODULES)
    return dict(zip(foreign, MODULES))


_TRAMAC = _table("conv_p1.0", "conv_p1.1", "conv_c1.0", "conv_c1.1", "pam.conv_b", "pam.conv_c", "pam.conv_d",
                 "pam.alpha", "cam.beta", "conv_p2.0", "conv_p2.1", "conv_c2.0", "conv_c2.1", "conv_p3.1",
                 "conv_c3.1", "out.1")

KEYS = {
    "official": HeadKeys("conv5a", _table(
        "conv5a.0", "conv5a.1", "conv5c.0", "conv5c.1", "sa.query_conv", "sa.key_conv", "sa.value_conv",
        "sa.gamma", "sc.gamma", "conv51.0", "conv51.1", "conv52.0", "conv52.1", "conv6.1", "conv7.1", "conv8.1")),
    "mmseg": HeadKeys("pam_in_conv", _table(
        "pam_in_conv.conv", "pam_in_conv.bn", "cam_in_conv.conv", "cam_in_conv.bn", "pam.query_project",
        "pam.key_project", "pam.value_project", "pam.gamma.scale", "cam.gamma.scale", "pam_out_conv.conv",
        "pam_out_conv.bn", "cam_out_conv.conv", "cam_out_conv.bn", "pam_conv_seg", "cam_conv_seg", "conv_seg")),
    # trained with --aux off (the script's default) the PAM/CAM-only classifiers are absent
    "tramac": HeadKeys("conv_p1", _TRAMAC, optional=("pam_classifier.1", "cam_classifier.1")),
    "blog": HeadKeys("conv_p1", _TRAMAC),
    "danet-lens": HeadKeys("pam_in_conv", {m: m for m in MODULES}),
}


def da_maps(kept, grid: Grid) -> dict:
    """PAM's map: rows softmax(q_p . K) with no 1/sqrt(d) scale (CAM's C x C matrix is not spatial)."""
    if "pam_query" not in kept or "pam_key" not in kept:
        return {}
    return {"pam": DotSoftmaxMap(grid, kept["pam_query"], kept["pam_key"], scale=1.0,
                                 title="PAM: softmax(q . K), no 1/sqrt(d)")}


@register_head
class DAHead(AttentionHead):
    """DANet head with module names that say what each piece does."""

    name = "da"
    title = "DANet dual attention (PAM + CAM; Fu et al., CVPR 2019)"
    outputs = ("fused", "pam", "cam")
    output_titles = {"fused": "fused (PAM + CAM)", "pam": "PAM branch only", "cam": "CAM branch only"}
    terms = (Term("pam", "position attention (PAM)", "pam.alpha", "alpha"),
             Term("cam", "channel attention (CAM)", "cam.beta", "beta"))
    keys = KEYS
    option_names = ("head_channels", "key_channels", "dropout")

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

    @classmethod
    def build(cls, in_channels: int, num_classes: int, options: dict) -> DAHead:
        return cls(in_channels, num_classes, options.get("head_channels"), options.get("key_channels"),
                   options.get("dropout", 0.1))

    @classmethod
    def options_from_shapes(cls, shape) -> dict:
        return {"num_classes": int(shape("fused_classifier.1.weight")[0]),
                "head_channels": int(shape("pam_in_conv.0.weight")[0]),
                "key_channels": int(shape("pam.query.weight")[0])}

    def inspect(self, x: torch.Tensor) -> HeadState:
        pam_in = self.pam_in_conv(x)
        pam_out, query, key, value = self.pam.attend(pam_in)
        pam_feat = self.pam_out_conv(pam_out)
        cam_in = self.cam_in_conv(x)
        cam_out, cam_attn = self.cam.attend(cam_in)
        cam_feat = self.cam_out_conv(cam_out)
        logits = {"fused": self.fused_classifier(pam_feat + cam_feat), "pam": self.pam_classifier(pam_feat),
                  "cam": self.cam_classifier(cam_feat)}
        kept = {"pam_query": query, "pam_key": key, "pam_value": value, "pam_input": pam_in,
                "cam_attention": cam_attn, "cam_input": cam_in, "cam_output": cam_out}
        return HeadState(logits, kept)

    def maps(self, kept, grid: Grid) -> dict:
        return da_maps(kept, grid)

    def recompute(self, kept, off: frozenset[str]) -> dict[str, torch.Tensor]:
        """(K, h, w) logits from one image's ``kept``. alpha = 0 makes PAM the identity (E = A), beta = 0 does the same for CAM: the rest of
        the head runs again from the kept branch inputs, never the backbone."""
        parameter = next(self.parameters())

        def on_device(t):             # one image's kept tensor -> a batch of one on the head's device
            return torch.as_tensor(t)[None].to(parameter.device, parameter.dtype)

        pam_in = on_device(kept["pam_input"])
        if "pam" not in off and float(self.pam.alpha) != 0:
            q, k, v = (on_device(kept[name]) for name in ("pam_query", "pam_key", "pam_value"))
            context = aggregate(q, k, v).transpose(1, 2).reshape(pam_in.shape)
            pam_in = self.pam.alpha * context + pam_in
        cam_in = on_device(kept["cam_input"] if "cam" in off else kept["cam_output"])
        pam_feat, cam_feat = self.pam_out_conv(pam_in), self.cam_out_conv(cam_in)
        logits = {"fused": self.fused_classifier(pam_feat + cam_feat), "pam": self.pam_classifier(pam_feat),
                  "cam": self.cam_classifier(cam_feat)}
        return {name: t[0].float().cpu() for name, t in logits.items()}
