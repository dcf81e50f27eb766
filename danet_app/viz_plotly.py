"""Interactive Plotly figures of channel attention (CAM): the C x C matrix and channel maps.

Pure functions from arrays to ``go.Figure``; the app only displays them.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def cluster_order(matrix: np.ndarray, method: str = "average") -> np.ndarray:
    """A channel order that puts channels with similar attention rows next to each other.

    Hierarchical clustering (scipy) of the rows of the C x C matrix; the same order is applied to
    rows and columns, so the diagonal stays the diagonal.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage

    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape[0] < 3:
        return np.arange(matrix.shape[0])
    return leaves_list(linkage(matrix, method=method, metric="euclidean"))


def cam_matrix_figure(matrix: np.ndarray, order: np.ndarray | None = None, colorscale: str = "Viridis",
                      log_scale: bool = False, height: int = 620) -> go.Figure:
    """Heatmap of the CAM attention matrix; hover shows the original channel ids i, j and the weight.

    ``order`` reorders rows and columns (e.g. from ``cluster_order``); tick labels keep the
    original channel numbers.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    channels = matrix.shape[0]
    order = np.arange(channels) if order is None else np.asarray(order)
    shown = matrix[np.ix_(order, order)]
    values = np.log10(np.maximum(shown, 1e-12)) if log_scale else shown
    labels = [str(int(i)) for i in order]
    figure = go.Figure(go.Heatmap(
        z=values, x=labels, y=labels, colorscale=colorscale,
        customdata=shown,
        hovertemplate="row i=%{y} (output channel)<br>column j=%{x} (mixed in)<br>"
                      "weight=%{customdata:.5f}<extra></extra>",
        colorbar={"title": "log10 weight" if log_scale else "weight"},
    ))
    axis = {"type": "category", "showticklabels": channels <= 64, "showgrid": False, "constrain": "domain"}
    figure.update_layout(
        height=height, margin={"l": 50, "r": 20, "t": 30, "b": 50},
        xaxis={**axis, "title": "channel j (source)"},
        yaxis={**axis, "title": "channel i (output)", "autorange": "reversed", "scaleanchor": "x"},
    )
    return figure


def channel_maps_figure(before: np.ndarray, after: np.ndarray, channel: int,
                        colorscale: str = "Viridis", shared_scale: bool = True) -> go.Figure:
    """One channel's (h, w) feature map before and after CAM, side by side with hover values."""
    before = np.asarray(before, dtype=np.float64)
    after = np.asarray(after, dtype=np.float64)
    low = min(before.min(), after.min()) if shared_scale else None
    high = max(before.max(), after.max()) if shared_scale else None
    figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.06,
                           subplot_titles=(f"channel {channel} before CAM", f"channel {channel} after CAM"))
    for col, values in enumerate((before, after), start=1):
        figure.add_trace(go.Heatmap(
            z=values, colorscale=colorscale, zmin=low, zmax=high, showscale=col == 2,
            hovertemplate="row %{y}, col %{x}<br>value %{z:.4f}<extra></extra>"), row=1, col=col)
        figure.update_yaxes(autorange="reversed", scaleanchor=f"x{col if col > 1 else ''}",
                            constrain="domain", showgrid=False, row=1, col=col)
        figure.update_xaxes(constrain="domain", showgrid=False, row=1, col=col)
    figure.update_layout(height=330, margin={"l": 20, "r": 20, "t": 40, "b": 20})
    return figure


def channel_mix_figure(mix: list[tuple[int, float]], channel: int, uniform: float | None = None) -> go.Figure:
    """Bar chart of the channels CAM mixes most strongly into ``channel`` (with 1/C for reference)."""
    figure = go.Figure(go.Bar(
        x=[f"ch {i}" for i, _ in mix], y=[w for _, w in mix],
        hovertemplate="%{x}: weight %{y:.5f}<extra></extra>"))
    if uniform is not None:
        figure.add_hline(y=uniform, line_dash="dot", annotation_text="uniform 1/C",
                         annotation_position="top left")
    figure.update_layout(height=300, margin={"l": 40, "r": 20, "t": 40, "b": 40},
                         title=f"top {len(mix)} channels mixed into channel {channel}",
                         yaxis_title="attention weight")
    return figure
