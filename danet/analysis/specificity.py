"""Query specificity: do different query cells attend differently, or all to the same cells?

For query rows a_i (softmax rows of PAM, each summing to 1 over the N cells) and the image's
mean row m = (1/S) sum_i a_i over the S measured queries:

* ``js_bits``: JS(a_i, m) = 1/2 KL(a_i || M_i) + 1/2 KL(m || M_i), M_i = (a_i + m) / 2, in bits
  (0 = the row is the mean row, 1 = disjoint supports).
* ``mean_row_share``: sum_j min(a_ij, m_j) = 1 - total variation(a_i, m), the share of the row
  the mean row already explains (1 = nothing query-specific).
* ``sinks``: m itself as an (h, w) map, the mean attention each cell receives (sums to 1;
  uniform is 1/N everywhere).

All N cells are queries when N <= ``max_queries``; otherwise a seeded sample of ``max_queries``
cells, and m is the sample's mean row. Two passes over the rows, a block of queries at a time:
O(block * N) memory, except that rows totalling at most 64 MiB are kept for the second pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from danet.errors import InputError
from danet.analysis.common import as_tensor, require, row_blocks

MAX_QUERIES = 4096
# The second pass reuses the first pass's rows when they take at most this much (the model's own
# explicit PAM holds an N x N matrix this size); above it the rows are recomputed block by block.
KEEP_BYTES = 64 << 20


@dataclass(frozen=True)
class Specificity:
    """Per-query divergence from the mean row, and the mean row itself as a sink map."""

    queries: np.ndarray          # (S,) flat cells measured, row-major
    js_bits: np.ndarray          # (S,) JS divergence of each row from the mean row, bits
    mean_row_share: np.ndarray   # (S,) sum_j min(a_ij, m_j)
    sinks: np.ndarray            # (h, w) mean row m
    sampled: bool                # True when the queries are a sample of the cells

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.sinks.shape)

    @property
    def js_mean(self) -> float:
        return float(self.js_bits.mean())

    @property
    def share_mean(self) -> float:
        return float(self.mean_row_share.mean())

    @property
    def sink_peak(self) -> float:
        """Largest mean attention a cell receives, in multiples of uniform (1/N)."""
        return float(self.sinks.max() * self.sinks.size)

    def top_sinks(self, count: int = 5) -> list[tuple[int, int, float]]:
        """The ``count`` cells that receive most attention: (row, col, mean attention received)."""
        flat = self.sinks.ravel()
        order = np.argsort(-flat, kind="stable")[:count]
        width = self.sinks.shape[1]
        return [(int(i // width), int(i % width), float(flat[i])) for i in order]

    def summary(self) -> dict[str, float]:
        return {"js_mean": self.js_mean, "js_median": float(np.median(self.js_bits)),
                "mean_row_share": self.share_mean, "sink_peak": self.sink_peak,
                "queries_measured": int(self.queries.size)}


def choose_queries(n: int, max_queries: int = MAX_QUERIES, seed: int = 0) -> tuple[np.ndarray, bool]:
    """All cells when ``n <= max_queries``, else a sorted seeded sample of ``max_queries``."""
    if max_queries < 1:
        raise InputError(f"max_queries must be at least 1, got {max_queries}")
    if n <= max_queries:
        return np.arange(n), False
    return np.sort(np.random.default_rng(seed).choice(n, size=max_queries, replace=False)), True


def js_and_share(rows: torch.Tensor, mean_row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """JS divergence in bits and sum(min) overlap of each of ``rows`` (B, N) with ``mean_row`` (N,).

    JS = H(M) - (H(a) + H(m)) / 2 with M = (a + m) / 2, in one scratch buffer (x log x is taken
    as 0 at x = 0 by clamping to the smallest normal number); ``rows`` is not modified.
    """
    tiny = torch.finfo(rows.dtype).tiny
    mean_row = mean_row.to(rows.dtype)
    m = mean_row.unsqueeze(0)
    m_log_m = float((mean_row * mean_row.clamp_min(tiny).log()).sum())
    scratch = rows.clamp_min(tiny).log_()
    a_log_a = scratch.mul_(rows).sum(1)
    mix = torch.add(rows, m, out=scratch).mul_(0.5).clamp_min_(tiny)
    mix_log_mix = mix.log().mul_(mix).sum(1)
    js = ((0.5 * (a_log_a + m_log_m) - mix_log_mix) / math.log(2)).clamp_(0.0, 1.0)
    share = torch.minimum(rows, m, out=scratch).sum(1).clamp_(0.0, 1.0)
    return js, share


def specificity_from_qk(query, key, grid_size: tuple[int, int], *, max_queries: int = MAX_QUERIES,
                        seed: int = 0) -> Specificity:
    """``Specificity`` of the PAM rows softmax(Q K^T) for (N, d) ``query`` and ``key``."""
    query, key = as_tensor(query), as_tensor(key)
    n = key.shape[0]
    if query.shape != key.shape or n != grid_size[0] * grid_size[1]:
        raise InputError(f"query {tuple(query.shape)} and key {tuple(key.shape)} do not fit a "
                         f"{grid_size[0]}x{grid_size[1]} grid")
    chosen, sampled = choose_queries(n, max_queries, seed)
    index = None if not sampled else torch.from_numpy(chosen)
    total = torch.zeros(n, dtype=torch.float64)
    keep = len(chosen) * n * 4 <= KEEP_BYTES
    kept = []
    for block in row_blocks(query, key, index):
        total += block[2].sum(0).double()
        if keep:
            kept.append(block)
    mean_row = (total / len(chosen)).float()
    js = torch.empty(len(chosen))
    share = torch.empty(len(chosen))
    for start, stop, rows in (kept if keep else row_blocks(query, key, index)):
        js[start:stop], share[start:stop] = js_and_share(rows, mean_row)
    return Specificity(queries=chosen, js_bits=js.numpy(), mean_row_share=share.numpy(),
                       sinks=mean_row.reshape(grid_size).numpy(), sampled=sampled)


def query_specificity(result, *, max_queries: int = MAX_QUERIES, seed: int = 0) -> Specificity:
    """``Specificity`` of an ``InspectionResult``'s PAM (from its kept query/key)."""
    require(result, "pam_query", "pam_key")
    return specificity_from_qk(result.pam_query, result.pam_key, result.grid_size,
                               max_queries=max_queries, seed=seed)
