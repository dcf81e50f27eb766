"""What the "Does attention matter?" page says and draws, as pure functions (no Streamlit).

The numbers come from ``danet.analysis``; this module turns them into plain-language readings,
Plotly figures and image overlays, so each rule (what counts as "the same cells") is testable
without a browser. Thresholds follow the readings in docs/measures.md.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from danet.render import overlays as viz
from danet.analysis import Ablation, CamSaturation, Knockout, Specificity

from danet_app.literal import md, plain

# Specificity readings: the mean row explains >= SAME_SHARE of a row -> "the same cells";
# below SPECIFIC_SHARE -> query-specific; in between, partly.
SAME_SHARE, SPECIFIC_SHARE = 0.8, 0.4
SINK_COUNT = 5
CHANGED_COLOUR = np.array([255, 0, 200], dtype=np.float32)       # magenta: a pixel whose class changed
CURVE_COLOURS = {"top": "#d62728", "random": "#7f7f7f", "least": "#1f77b4"}
CURVE_NAMES = {"top": "top-k (most attended)", "random": "random k (mean of draws)", "least": "least-k"}


# ---- readings -------------------------------------------------------------------------------------
def specificity_reading(spec: Specificity) -> str:
    """One or two sentences on whether PAM's rows depend on the query."""
    share, js = spec.share_mean, spec.js_mean
    if share >= SAME_SHARE:
        head = (f"Most queries attend to the same cells: the image's mean row explains {share:.0%} of each "
                f"row (JS {js:.2f} bits), so a point's map says little about that point.")
    elif share >= SPECIFIC_SHARE:
        head = (f"Queries are only partly specific: {share:.0%} of each row is the attention every query "
                f"shares (the mean row), the other {1 - share:.0%} depends on the query (JS {js:.2f} bits).")
    else:
        head = (f"Queries attend to different cells: the mean row explains only {share:.0%} of a row "
                f"(JS {js:.2f} bits).")
    return f"{head} {sink_reading(spec)}"


def sink_reading(spec: Specificity, count: int = SINK_COUNT) -> str:
    """How much of the mean attention the few most attended cells (sinks) receive."""
    n = spec.sinks.size
    count = min(count, n)
    held = sum(weight for _, _, weight in spec.top_sinks(count))
    return (f"The {count} most attended cells (sinks) receive {held:.0%} of all attention "
            f"(uniform would be {count / n:.1%}); the strongest gets {spec.sink_peak:.0f} times its uniform share.")


def contribution_reading(pam_mean: float, cam_mean: float, alpha: float, beta: float) -> str:
    """What the contribution sizes bound, in words."""
    small = [name for name, value in (("PAM", pam_mean), ("CAM", cam_mean)) if value == value and value < 0.05]
    note = (f" {' and '.join(small)} add{'s' if len(small) == 1 else ''} less than 5% of the features: "
            "small, but a small term can still tip a close decision (see the ablation).") if small else ""
    return f"Learned scales: alpha = {alpha:.4f} (PAM), beta = {beta:.4f} (CAM).{note}"


def ablation_reading(ablation: Ablation, total_pixels: int) -> str:
    """'123 of 12,288 pixels (1.00%) change class with PAM off' (+ the mIoU change)."""
    changed = int(ablation.changed.sum())
    text = (f"With **{ablation.name}**, **{changed:,} of {total_pixels:,} pixels "
            f"({ablation.changed_fraction:.2%})** change class.")
    if ablation.miou_before is not None:
        text += (f" Fused mIoU against the label map: {100 * ablation.miou_before:.2f}% -> "
                 f"{100 * ablation.miou_after:.2f}% ({100 * ablation.miou_change:+.2f} points).")
    return text


def knockout_reading(knockout: Knockout, classes: tuple[str, ...]) -> str:
    """The verdict with the numbers it rests on."""
    auc = knockout.auc
    name = classes[knockout.predicted_class] if knockout.predicted_class < len(classes) else str(
        knockout.predicted_class)
    flip = (f"removing the top {knockout.flip_k} cells changes the class" if knockout.flip_k is not None
            else "no top-k removal changes the class")
    return (f"Verdict: **{knockout.verdict}**. Predicted class **{md(name)}** at cell {knockout.cell}; AUC of the "
            f"logit drop: top {auc['top']:+.4f}, random {auc['random']:+.4f}, least {auc['least']:+.4f}; "
            f"{flip}. For scale, removing PAM's whole term at the cell drops the logit by "
            f"{knockout.pam_off_drop:+.4f}.")


def saturation_note(cam: CamSaturation) -> str | None:
    """What a one-hot or saturated CAM matrix means; None when rows mix many channels."""
    if not (cam.one_hot or cam.saturated):
        return None
    return ("The weights are softmax(rowmax(E) - E) with E = A Aᵀ, the Gram matrix of the channel maps. "
            "Its entries are sums over every cell, so differences between them are large and the softmax "
            "saturates into an argmax: each channel copies mostly **one** other channel (the one least "
            "correlated with it), scaled by beta, instead of averaging many. A \"top-k mixed-in channels\" "
            "view then shows one channel near 1 and the rest near 0, which is why channels below the "
            "threshold are hidden below.")


def hidden_note(shown: int, below: int, beyond: int, threshold: float) -> str:
    """Caption of the mixed-in channel list: what it leaves out and why."""
    parts = [f"{shown} channel{'s' if shown != 1 else ''} shown"]
    if below:
        parts.append(f"{below} channel{'s' if below != 1 else ''} with weight below {threshold:g} hidden")
    if beyond:
        parts.append(f"{beyond} more above the threshold beyond the top-k")
    return "; ".join(parts) + "."


# ---- pictures -----------------------------------------------------------------------------------------
def changed_overlay(image: np.ndarray, changed: np.ndarray, dim: float = 0.45) -> np.ndarray:
    """The image dimmed, with the pixels whose class changed painted magenta."""
    out = image.astype(np.float32) * dim + 255 * (1 - dim) * 0.5
    out[changed] = CHANGED_COLOUR
    return out.clip(0, 255).astype(np.uint8)


def grid_overlay(image: np.ndarray, result, grid_map: np.ndarray, opacity: float = 0.6,
                 cmap: str = "inferno") -> np.ndarray:
    """An (h, w) feature-grid map upsampled and laid over the image, its colours spanning the map's
    own range (so a map that is 5-18% everywhere is not one flat colour); NaN cells take the minimum."""
    values = np.asarray(grid_map, dtype=np.float32)
    finite = values[np.isfinite(values)]
    low = float(finite.min()) if finite.size else 0.0
    full = result.upsample_maps(np.where(np.isfinite(values), values, low)[None], "bilinear")[0]
    high = float(full.max())
    return viz.heatmap_overlay(image, full, opacity, cmap, vmin=low, vmax=high if high > low else low + 1.0)


def js_histogram(spec: Specificity, bins: int = 40) -> go.Figure:
    """Distribution of the per-query JS divergence from the mean row, with its mean marked."""
    figure = go.Figure(go.Histogram(x=spec.js_bits, nbinsx=bins, marker_color="#4c78a8",
                                    hovertemplate="JS %{x}<br>%{y} queries<extra></extra>"))
    figure.add_vline(x=spec.js_mean, line_dash="dash", annotation_text=f"mean {spec.js_mean:.3f}",
                     annotation_position="top right")
    figure.update_layout(height=300, margin={"l": 40, "r": 20, "t": 30, "b": 40}, bargap=0.05,
                         xaxis={"title": "JS divergence from the mean row (bits)", "range": [0, 1]},
                         yaxis={"title": "queries"})
    return figure


def knockout_figure(knockout: Knockout) -> go.Figure:
    """The three deletion curves (logit drop against k) with their AUCs; random with its spread."""
    figure = go.Figure()
    ks = knockout.ks
    spread = knockout.random_std
    upper, lower = knockout.drops["random"] + spread, knockout.drops["random"] - spread
    figure.add_trace(go.Scatter(x=np.concatenate([ks, ks[::-1]]), y=np.concatenate([upper, lower[::-1]]),
                                fill="toself", fillcolor="rgba(127,127,127,0.2)", line={"width": 0},
                                hoverinfo="skip", showlegend=False))
    for name in ("top", "random", "least"):
        figure.add_trace(go.Scatter(
            x=ks, y=knockout.drops[name], mode="lines", line={"color": CURVE_COLOURS[name]},
            name=f"{CURVE_NAMES[name]}: AUC {knockout.auc[name]:+.4f}",
            customdata=knockout.removed_mass[name],
            hovertemplate="k=%{x}<br>drop %{y:.4f}<br>mass removed %{customdata:.1%}<extra></extra>"))
    figure.add_hline(y=knockout.effect_tol, line_dash="dot", line_color="#999",
                     annotation_text=f"effect tolerance {knockout.effect_tol:g}", annotation_position="top left")
    figure.update_layout(height=340, margin={"l": 50, "r": 20, "t": 30, "b": 40},
                         xaxis={"title": "k (cells removed from the row)"},
                         yaxis={"title": "drop of the predicted class's logit"},
                         legend={"orientation": "h", "y": -0.25})
    return figure


def class_transitions(before: np.ndarray, after: np.ndarray, classes: tuple[str, ...],
                      top: int = 6) -> list[tuple[str, str, int]]:
    """The most frequent (from class, to class, pixels) among pixels whose class changed."""
    changed = before != after
    if not changed.any():
        return []
    k = max(len(classes), int(before.max()) + 1, int(after.max()) + 1)
    counts = np.bincount(before[changed] * k + after[changed], minlength=k * k)
    order = np.argsort(-counts, kind="stable")[:top]

    def name(i: int) -> str:
        return plain(classes[i], 80) if i < len(classes) else str(i)

    return [(name(int(i // k)), name(int(i % k)), int(counts[i])) for i in order if counts[i] > 0]
