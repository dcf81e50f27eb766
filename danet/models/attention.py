"""Position (PAM) and channel (CAM) attention modules with the reference DANet maths.

PAM: energy[p, q] = Q_p . K_q (no 1/sqrt(d) scale), softmax over q, E = alpha * attn V + A.
CAM: energy = A A^T, attn = softmax(rowmax(energy) - energy), E = beta * attn A + A.

PAM never has to materialise the N x N matrix. Small grids use the explicit product (the
reference maths, fastest there). Large grids go through ``scaled_dot_product_attention``
(``scale=1``) on a GPU, and through the same explicit product taken a block of queries at a
time on the CPU: there SDPA's fused kernel needs q/k padded to v's width (8x the Q K^T work)
and measured 12-50% slower than explicit, while the query-chunked product does the
reference's arithmetic in O(block * N) memory (benchmarks/results.md, section 4b).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Grids with at most this many positions use the explicit N x N product (64 MiB at 4096);
# above it, SDPA on CUDA and the query-chunked product on the CPU.
EXPLICIT_MAX_POSITIONS = 4096
# The chunked path takes as many queries at a time as keep one energy block at this many
# elements (16 MiB in fp32), whatever N is.
CHUNK_ELEMENTS = 1 << 22
METHODS = ("auto", "explicit", "chunked", "sdpa")


def pam_method_for(positions: int, device: torch.device | str) -> str:
    """The path ``method="auto"`` takes for ``positions`` grid cells on ``device``."""
    if positions <= EXPLICIT_MAX_POSITIONS:
        return "explicit"
    return "sdpa" if torch.device(device).type == "cuda" else "chunked"


def pam_attention_explicit(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Full PAM softmax matrix, (B, N, N), for query/key of shape (B, N, d). Reference maths."""
    energy = torch.bmm(query, key.transpose(1, 2))
    return torch.softmax(energy, dim=-1)


def pam_aggregate(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  method: str = "auto") -> torch.Tensor:
    """sum_q softmax(Q K^T)[p, q] V_q for (B, N, d) query/key and (B, N, C) value.

    ``method`` is one of ``METHODS``; ``"auto"`` picks with ``pam_method_for``.
    """
    n = query.shape[1]
    if method == "auto":
        method = pam_method_for(n, query.device)
    if method == "explicit":
        return torch.bmm(pam_attention_explicit(query, key), value)
    if method == "chunked":
        return _pam_chunked(query, key, value)
    if method == "sdpa":
        # SDPA wants matching dtypes; under autocast q/k/v already share one.
        # The fused kernels need a unit stride on the channel axis (projections arrive
        # transposed) and, on the CPU, one head size for q, k and v; otherwise SDPA falls back
        # to its math path, which builds the N x N matrix. Zero channels leave Q K^T unchanged.
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
        extra = value.shape[-1] - query.shape[-1]
        if query.device.type == "cpu" and extra > 0:
            query, key = F.pad(query, (0, extra)), F.pad(key, (0, extra))
        return F.scaled_dot_product_attention(
            query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1), scale=1.0
        ).squeeze(1)
    raise ValueError(f"unknown PAM method {method!r}; use one of {', '.join(METHODS)}")


def _pam_chunked(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The explicit product a block of queries at a time, in O(block * N) memory.

    Inference reuses one energy buffer and writes into a preallocated output: fresh 16 MiB
    blocks per step made glibc page-fault and fragment its heap (4 GiB RSS at N = 32768).
    """
    n = query.shape[1]
    block = max(1, min(n, CHUNK_ELEMENTS // n))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        return torch.cat([torch.bmm(torch.softmax(torch.bmm(query[:, i:i + block], key.transpose(1, 2)), -1), value)
                          for i in range(0, n, block)], dim=1)
    out = value.new_empty(value.shape)
    energy = query.new_empty(block, n)
    for b in range(query.shape[0]):
        key_t, values = key[b].t(), value[b]
        for start in range(0, n, block):
            stop = min(start + block, n)
            scores = energy[: stop - start]
            torch.mm(query[b, start:stop], key_t, out=scores)
            scores.sub_(scores.amax(dim=1, keepdim=True)).exp_()     # softmax over keys, in place
            scores.div_(scores.sum(dim=1, keepdim=True))
            torch.mm(scores, values, out=out[b, start:stop])
    return out


def cam_attention(features: torch.Tensor) -> torch.Tensor:
    """CAM C x C softmax matrix for (B, C, N) features, with the reference max-minus-energy."""
    energy = torch.bmm(features, features.transpose(1, 2))
    energy_new = energy.amax(dim=-1, keepdim=True) - energy
    return torch.softmax(energy_new, dim=-1)


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

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Output plus the query and key, so callers can rebuild any attention row later."""
        b, c, h, w = x.shape
        query, key, value = self.project(x)
        context = pam_aggregate(query, key, value, self.method)
        context = context.transpose(1, 2).reshape(b, c, h, w)
        return self.alpha * context + x, query, key


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
