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
cells, and m is the sample's mean row. Two passes over the rows, O(block * N) memory each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .common import as_tensor, require, row_blocks

MAX_QUERIES = 4096


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
    """JS divergence in bits and sum(min) overlap of each of ``rows`` (B, N) with ``mean_row`` (N,)."""
    m = mean_row.unsqueeze(0)
    mix = (rows + m) / 2
    # xlogy(x, x / mix) is 0 where x = 0; mix is 0 only where x is 0 too.
    safe_mix = mix.clamp_min(torch.finfo(mix.dtype).tiny)
    kl_row = torch.xlogy(rows, rows / safe_mix).sum(1)
    kl_mean = torch.xlogy(m, m / safe_mix).sum(1)
    js = (0.5 * (kl_row + kl_mean) / math.log(2)).clamp(0.0, 1.0)
    share = torch.minimum(rows, m).sum(1).clamp(0.0, 1.0)
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
    for _, _, rows in row_blocks(query, key, index):
        total += rows.sum(0, dtype=torch.float64)
    mean_row = (total / len(chosen)).float()
    js = torch.empty(len(chosen))
    share = torch.empty(len(chosen))
    for start, stop, rows in row_blocks(query, key, index):
        js[start:stop], share[start:stop] = js_and_share(rows, mean_row)
    return Specificity(queries=chosen, js_bits=js.numpy(), mean_row_share=share.numpy(),
                       sinks=mean_row.reshape(grid_size).numpy(), sampled=sampled)


def query_specificity(result, *, max_queries: int = MAX_QUERIES, seed: int = 0) -> Specificity:
    """``Specificity`` of an ``InspectionResult``'s PAM (from its kept query/key)."""
    require(result, "pam_query", "pam_key")
    return specificity_from_qk(result.pam_query, result.pam_key, result.grid_size,
                               max_queries=max_queries, seed=seed)
