"""The maths of the interactive attention view, in numpy: what the browser component computes.

``danet_app/static/attention_view.js`` does the same sums in JavaScript at the cursor; this
module is the reference it is tested against (``tests/test_display_modes.py`` on hand-made
rows, ``tests/test_browser_attention.py`` in chromium). Nothing here imports Streamlit.

Maps are flat float arrays over the N feature-grid cells, row-major. A *row* is one query's
softmax(q_i . K) (no 1/sqrt(d), exactly like ``InspectionResult.rows``); a *column* is every
query's weight on one key cell, exp(q_i . k_j - lse_i), which needs each row's log-sum-exp
``lse_i``; a *region* is the mean of the rows of the cells inside a box.
"""
from __future__ import annotations

import base64

import numpy as np

from danet.errors import InputError
from danet.maps import DotSoftmaxMap, Grid

MODES = {
    "raw": "Raw weight",
    "relative": "Relative to uniform (N x weight)",
    "specific": "Query-specific (minus the mean map)",
    "mass": "Smallest set holding x% of the mass",
    "log": "Log scale (log10 weight)",
}
UNITS = {                          # what a map's colour bar measures, per mode and view
    ("raw", "row"): "attention weight (a row sums to 1)",
    ("raw", "column"): "weight each query gives this cell (a column does not sum to 1)",
    ("relative", "row"): "x uniform (1 = 1/N)",
    ("relative", "column"): "x uniform (1 = 1/N; a column does not sum to 1)",
    ("specific", "row"): "weight minus the mean map",
    ("specific", "column"): "weight minus 1/N (the mean over the queries)",
    ("mass", "row"): "weight, cells in the set only",
    ("mass", "column"): "weight on this cell, queries in the set only",
    ("log", "row"): "log10 attention weight",
    ("log", "column"): "log10 weight each query gives this cell",
}
DIVERGING_CMAP = "RdBu_r"          # query-specific maps are signed: blue below, red above the mean
TWO_SIDED = {"specific"}           # modes whose colours scale each sign on its own (0 at the centre)
SIGN_PERCENTILE = 99.0             # a two-sided map's ends: this percentile of each sign's magnitudes
FADE_BINS = 24                     # colours fade in over this many of the 256 bins from the neutral one
LOG_DECADES = 4.0                  # a log map shows at most this many decades below its peak
LOG_FLOOR = 1e-30                  # weights are clamped here before the log (a softmax can underflow)
CHUNK = 256                        # queries per chunk when sweeping all rows: O(CHUNK * N) memory


# ---- rows, columns, regions: the one Python kernel is danet.maps (DotSoftmaxMap for PAM) ----------
def _pam(query: np.ndarray, key: np.ndarray) -> DotSoftmaxMap:
    n = len(query)
    return DotSoftmaxMap(Grid((n, 1), (n, 1)), query, key, title="PAM")


def attention_row(query: np.ndarray, key: np.ndarray, cell: int) -> np.ndarray:
    """softmax(q_cell . K) over the N cells, as ``InspectionResult.rows`` computes it."""
    return _pam(query, key).rows_of_cells([cell]).ravel().astype(np.float64)


def row_statistics(query: np.ndarray, key: np.ndarray, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(lse, mean_row) over all N queries in one sweep (``DotSoftmaxMap.statistics``).

    ``lse[i]`` = log sum_j exp(q_i . k_j), what a column needs to normalise each of its entries;
    ``mean_row`` = the mean of all N softmax rows (what every pixel sees), what the
    query-specific mode subtracts.
    """
    return _pam(query, key).statistics()


def attention_column(query: np.ndarray, key: np.ndarray, lse: np.ndarray, cell: int) -> np.ndarray:
    """Every query's weight on key ``cell``: exp(q_i . k_cell - lse_i), "who looks here"."""
    energy = query.astype(np.float64) @ key[cell].astype(np.float64)
    return np.exp(energy - lse)


def region_cells(box: tuple[int, int, int, int], grid_size: tuple[int, int]) -> np.ndarray:
    """Flat indices of the cells in ``box`` = (row0, col0, row1, col1), inclusive corners in any order."""
    r0, c0, r1, c1 = box
    rows = np.arange(min(r0, r1), max(r0, r1) + 1)
    cols = np.arange(min(c0, c1), max(c0, c1) + 1)
    gh, gw = grid_size
    if rows[0] < 0 or cols[0] < 0 or rows[-1] >= gh or cols[-1] >= gw:
        raise InputError(f"box {box} reaches outside the {gh}x{gw} grid")
    return (rows[:, None] * gw + cols[None, :]).ravel()


def region_mean(query: np.ndarray, key: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Mean attention row of ``cells``: where the region looks, on average."""
    return _pam(query, key).region_mean(cells)


# ---- display modes ------------------------------------------------------------------------------
def mass_set(values: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the smallest set of cells holding ``fraction`` of the map's total mass.

    Cells are taken in decreasing weight (ties: lower index first, a stable sort) until the
    running sum reaches ``fraction`` of the total, as DINO's attention figures do.
    """
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"mass fraction must be in (0, 1], got {fraction}")
    values = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(-values, kind="stable")
    running = np.cumsum(values[order])
    count = min(int(np.searchsorted(running, fraction * running[-1], side="left")) + 1, values.size)
    mask = np.zeros(values.size, bool)
    mask[order[:count]] = True
    return mask


def display(values: np.ndarray, mode: str, *, baseline: np.ndarray | float | None = None,
            fraction: float = 0.9) -> tuple[np.ndarray, float, float]:
    """(shown values, vmin, vmax) of one attention map in ``mode``; NaN cells are left unpainted.

    Every map gets its own scale (its own colour bar), so a weak map is as readable as a peaked one.
    ``baseline`` is what "query-specific" subtracts: the image's mean row for a row or a region,
    1/N for a column (a column's mean over the other index). Its scale is two-sided and robust:
    ``vmax`` is the ``SIGN_PERCENTILE`` th percentile of the positive values, ``vmin`` minus that
    of the negative values' magnitudes, each sign coloured on its own range
    (``colour_index(..., two_sided=True)``; the top 1% of either sign is drawn at full colour).
    On the default model a symmetric scale was set by the deficit at an attention sink (-0.039)
    while what a query sees beyond the mean peaks at +0.005 to +0.016: 99.6% of the cells were
    drawn faded (0.4% at full colour); each sign at its own extreme: 2.5%; at its 99th
    percentile: 12.6% (40 random queries of the first sample).
    """
    raw = np.asarray(values, dtype=np.float64).ravel()
    if mode == "raw":
        shown, lo, hi = raw, 0.0, float(raw.max())
    elif mode == "relative":
        shown = raw * raw.size
        lo, hi = 0.0, float(shown.max())
    elif mode == "specific":
        if baseline is None:
            raise InputError("the query-specific mode needs the mean map to subtract")
        shown = raw - np.asarray(baseline, dtype=np.float64).ravel()
        lo, hi = sign_ranges(shown)
    elif mode == "mass":
        shown = np.where(mass_set(raw, fraction), raw, np.nan)
        lo, hi = 0.0, float(raw.max())
    elif mode == "log":
        shown = np.log10(np.maximum(raw, LOG_FLOOR))
        hi = float(shown.max())
        lo = max(float(shown.min()), hi - LOG_DECADES)
    else:
        raise InputError(f"unknown display mode {mode!r}; choose from {', '.join(MODES)}")
    return shown, lo, hi


def unit(mode: str, view: str = "row") -> str:
    """The colour bar's label: a row is a distribution over where one query looks (it sums to
    1); a column is every query's weight on one cell, which does not (1.41 on a typical cell of
    the default model, 106.8 on its strongest sink)."""
    return UNITS[(mode, "column" if view == "column" else "row")]


def sign_ranges(shown: np.ndarray, percentile: float = SIGN_PERCENTILE) -> tuple[float, float]:
    """(vmin <= 0, vmax >= 0) of a two-sided map: ``percentile`` of each sign's magnitudes
    (numpy's linear interpolation, as the view computes it); 0 for a sign with no values."""
    positive, negative = shown[shown > 0], -shown[shown < 0]
    hi = float(np.percentile(positive, percentile)) if positive.size else 0.0
    lo = -float(np.percentile(negative, percentile)) if negative.size else 0.0
    return lo, hi


def colour_index(shown: np.ndarray, vmin: float, vmax: float, levels: int = 256, *,
                 two_sided: bool = False) -> np.ndarray:
    """Index into a ``levels``-colour lookup table, as ``danet.render.overlays.heatmap`` picks colours; -1 = NaN.

    ``two_sided``: 0 maps to the centre of the table, ``vmin`` (<= 0) to its first colour and
    ``vmax`` (>= 0) to its last, each sign on its own linear scale (the query-specific mode).
    """
    shown = np.asarray(shown, dtype=np.float64)
    if two_sided:
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = np.where(shown >= 0, 0.5 + 0.5 * np.clip(shown / vmax if vmax > 0 else 0 * shown, 0, 1),
                              0.5 - 0.5 * np.clip(shown / vmin if vmin < 0 else 0 * shown, 0, 1))
    else:
        scaled = np.clip((shown - vmin) / (vmax - vmin), 0, 1) if vmax > vmin else np.zeros_like(shown)
    index = np.minimum((np.nan_to_num(scaled) * levels).astype(np.int64), levels - 1)
    return np.where(np.isnan(shown), -1, index)


def neutral_bin(mode: str, levels: int = 256) -> float:
    """The colour-table bin that means "nothing here": the low end, or the centre of a two-sided map."""
    return (levels - 1) / 2 if mode in TWO_SIDED else 0.0


def fade_alpha(index: np.ndarray, neutral: float) -> np.ndarray:
    """Opacity (0-1) of each colour index, as the view paints it: colours fade in over
    ``FADE_BINS`` bins away from the neutral one, so cells with (next to) no attention leave the
    image untinted; quantised to 1/255 like the view's RGBA lookup table. -1 (NaN): 0."""
    index = np.asarray(index)
    alpha = np.round(255 * np.minimum(1.0, np.abs(index - neutral) / FADE_BINS)) / 255
    return np.where(index < 0, 0.0, alpha)


def opaque_share(shown: np.ndarray, vmin: float, vmax: float, mode: str) -> float:
    """Share of the finite cells drawn at full colour (past the fade-in): what a map shows at all."""
    finite = np.isfinite(np.asarray(shown, dtype=np.float64))
    index = colour_index(shown, vmin, vmax, two_sided=mode in TWO_SIDED)[finite]
    return float((fade_alpha(index, neutral_bin(mode)) >= 1.0).mean()) if index.size else 0.0


def colour_lut(cmap: str) -> np.ndarray:
    """(256, 3) uint8 colours of a matplotlib colour map, exactly those ``danet.render.overlays.heatmap`` uses."""
    from matplotlib import colormaps

    try:
        colours = colormaps[cmap].resampled(256)
    except KeyError:
        raise InputError(f"unknown colour map {cmap!r}") from None
    return (colours(np.arange(256))[:, :3] * 255 + 0.5).astype(np.uint8)


def checksum(values: np.ndarray) -> float:
    """A position-sensitive sum the browser reports for what it drew: sum_j v_j * w_j over finite v.

    ``w_j = 0.5 + ((j * 7919) mod 1009) / 1009``: a permuted or shifted map changes it, float
    rounding barely does.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    weights = 0.5 + ((np.arange(values.size, dtype=np.int64) * 7919) % 1009) / 1009
    finite = np.isfinite(values)
    return float((values[finite] * weights[finite]).sum())


# ---- what the browser receives ------------------------------------------------------------------
def b64(array: np.ndarray, dtype) -> str:
    """Little-endian bytes of ``array`` as ``dtype``, base64 (what the component decodes)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()
