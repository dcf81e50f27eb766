"""Query specificity: do different query cells attend differently, or all to the same cells?

For query rows a_i (softmax rows of PAM, each summing to 1 over the N cells) and the image's
mean row m = (1/N) sum_i a_i over all N queries:

* ``js_bits``: JS(a_i, m) = 1/2 KL(a_i || M_i) + 1/2 KL(m || M_i), M_i = (a_i + m) / 2, in bits
  (0 = the row is the mean row, 1 = disjoint supports).
* ``mean_row_share``: sum_j min(a_ij, m_j) = 1 - total variation(a_i, m), the share of the row
  the mean row already explains (1 = nothing query-specific).
* ``sinks``: m itself as an (h, w) map, the mean attention each cell receives (sums to 1;
  uniform is 1/N everywhere).

m is always the mean of ALL N rows (``AttentionMap.mean_row``: one definition, shared with the
view). The divergences are measured for all N cells when N <= ``max_queries``, otherwise for a
seeded sample of ``max_queries``; rows come a block at a time: O(block * N) memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from danet.errors import InputError
from danet.analysis.common import as_tensor
from danet.maps import DotSoftmaxMap, Grid

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


def specificity_of_map(the_map, *, max_queries: int = MAX_QUERIES, seed: int = 0) -> Specificity:
    """``Specificity`` of any attention map whose rows are distributions and depend on the query.

    The mean row is the map's own (over all N queries, the one the view subtracts too); the
    divergences are measured for all queries or a seeded sample of ``max_queries``.
    """
    if not the_map.flags.distribution:
        raise InputError(f"{the_map.title}: its rows are not distributions, so their divergence is not defined")
    if not the_map.flags.query_dependent:
        raise InputError(f"{the_map.title}: one map serves every query by construction, so there is "
                         "nothing query-specific to measure")
    n = the_map.cells
    chosen, sampled = choose_queries(n, max_queries, seed)
    index = torch.from_numpy(chosen)
    mean_row = torch.from_numpy(the_map.mean_row()).float()
    js = torch.empty(len(chosen))
    share = torch.empty(len(chosen))
    for start, stop, rows in the_map.row_blocks(index):
        js[start:stop], share[start:stop] = js_and_share(rows, mean_row)
    return Specificity(queries=chosen, js_bits=js.numpy(), mean_row_share=share.numpy(),
                       sinks=mean_row.reshape(the_map.grid.grid_size).numpy(), sampled=sampled)


def specificity_from_qk(query, key, grid_size: tuple[int, int], *, max_queries: int = MAX_QUERIES,
                        seed: int = 0) -> Specificity:
    """``Specificity`` of the PAM rows softmax(Q K^T) for (N, d) ``query`` and ``key``."""
    query, key = as_tensor(query), as_tensor(key)
    n = key.shape[0]
    if query.shape != key.shape or n != grid_size[0] * grid_size[1]:
        raise InputError(f"query {tuple(query.shape)} and key {tuple(key.shape)} do not fit a "
                         f"{grid_size[0]}x{grid_size[1]} grid")
    grid = Grid(tuple(grid_size), tuple(grid_size))
    return specificity_of_map(DotSoftmaxMap(grid, query, key, title="PAM"), max_queries=max_queries, seed=seed)


def query_specificity(result, *, max_queries: int = MAX_QUERIES, seed: int = 0,
                      map_name: str | None = None) -> Specificity:
    """``Specificity`` of one of an ``InspectionResult``'s maps (the default: DANet's PAM)."""
    return specificity_of_map(result.map(map_name), max_queries=max_queries, seed=seed)
