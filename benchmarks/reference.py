"""The way every public DANet implementation computes PAM, to measure the package against.

Official DANet, PyTorch-Encoding, mmsegmentation and awesome-semantic-segmentation-pytorch
all build the full N x N energy with ``bmm``, softmax it in one piece and multiply the
value by it: two N x N float matrices alive at once. ``ReferencePAM`` does exactly that with
the weights of a package ``PositionAttention`` so outputs can be compared.

``ChunkedPAM`` is *not* in the package: a candidate measured alongside (same maths, the
softmax rows computed a block of queries at a time), to show what a CPU path could cost.
"""
from __future__ import annotations

import torch
from torch import nn

from danet.models import PositionAttention
from danet.models import DAHead


class ReferencePAM(nn.Module):
    """PAM as published: energy = Q^T K (N x N), softmax over keys, out = V attention^T."""

    def __init__(self, pam: PositionAttention):
        super().__init__()
        self.query, self.key, self.value, self.alpha = pam.query, pam.key, pam.value, pam.alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)[0]

    def attend(self, x: torch.Tensor):
        b, c, h, w = x.shape
        proj_query = self.query(x).view(b, -1, h * w).permute(0, 2, 1)      # (B, N, d)
        proj_key = self.key(x).view(b, -1, h * w)                          # (B, d, N)
        energy = torch.bmm(proj_query, proj_key)                           # (B, N, N)
        attention = torch.softmax(energy, dim=-1)
        proj_value = self.value(x).view(b, -1, h * w)                      # (B, C, N)
        out = torch.bmm(proj_value, attention.permute(0, 2, 1)).view(b, c, h, w)
        return self.alpha * out + x, proj_query, proj_key.transpose(1, 2), proj_value.transpose(1, 2)


CHUNK_ROWS = 1024          # queries per block in the benchmark's own chunked candidate


def chunked_aggregate(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rows: int = CHUNK_ROWS) -> torch.Tensor:
    """softmax(Q K^T) V for (B, N, d) query/key and (B, N, C) value, ``rows`` queries at a time.

    Same products and softmax as the reference, in O(rows x N) memory instead of O(N^2).
    """
    b, n, _ = query.shape
    key_t = key.transpose(1, 2)
    out = torch.empty(b, n, value.shape[-1], dtype=value.dtype, device=value.device)
    for start in range(0, n, rows):
        block = torch.softmax(torch.bmm(query[:, start:start + rows], key_t), dim=-1)
        torch.bmm(block, value, out=out[:, start:start + rows])
    return out


class ChunkedPAM(ReferencePAM):
    """Candidate: the reference maths on ``rows`` queries at a time, O(rows x N) memory."""

    def __init__(self, pam: PositionAttention, rows: int = CHUNK_ROWS):
        super().__init__(pam)
        self.rows = rows

    def attend(self, x: torch.Tensor):
        b, c, h, w = x.shape
        query = self.query(x).flatten(2).transpose(1, 2)                  # (B, N, d)
        key = self.key(x).flatten(2).transpose(1, 2)                      # (B, N, d)
        value = self.value(x).flatten(2).transpose(1, 2)                  # (B, N, C)
        out = chunked_aggregate(query, key, value, self.rows)
        out = out.transpose(1, 2).reshape(b, c, h, w)
        return self.alpha * out + x, query, key, value


METHODS = ("ours", "reference", "chunked")
LABELS = {"ours": "danet-lens (package PAM, method auto)",
          "reference": "reference (explicit N x N bmm + softmax)",
          "chunked": "candidate: query-chunked explicit, 1024 rows (cross-check of the package path)"}


def make_head(in_channels: int, inter_channels: int, num_classes: int, method: str, seed: int = 0) -> DAHead:
    """A DA head in eval mode whose PAM computes the ``method`` way; same weights for every method."""
    torch.manual_seed(seed)
    head = DAHead(in_channels, num_classes, inter_channels).eval()
    with torch.no_grad():                       # non-zero residual scales, as after training
        head.pam.alpha.fill_(0.5)
        head.cam.beta.fill_(0.5)
    if method == "reference":
        head.pam = ReferencePAM(head.pam)
    elif method == "chunked":
        head.pam = ChunkedPAM(head.pam)
    elif method != "ours":
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return head
