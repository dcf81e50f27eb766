"""Publication figures with matplotlib: the paper-style attention figure, the CAM matrix and the
attention statistics. Builds ``matplotlib.figure.Figure`` objects directly (no pyplot), so nothing
touches global backend state and it works headless; saving goes through the Agg/PDF/SVG canvases.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from danet.render.overlays import colorize, point_colour

# Editable text in PDF/SVG (TrueType, not paths) and a compact sans font.
PUBLICATION_RC = {"font.size": 9, "axes.titlesize": 9, "font.family": "DejaVu Sans",
                  "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",
                  "axes.spines.top": False, "axes.spines.right": False}
FIGURE_FORMATS = ("png", "pdf", "svg")
PANEL_WIDTH = 2.6   # inches per image panel


def save(figure: Figure, path: str | Path, dpi: int = 300) -> None:
    """Write ``figure`` atomically in the format of ``path``'s suffix (png, pdf or svg)."""
    from danet.safety.outputs import save_figure

    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix not in FIGURE_FORMATS:
        raise ValueError(f"unsupported figure format {suffix or '(none)'!r}; use .png, .pdf or .svg")
    with rc_context(PUBLICATION_RC):
        save_figure(figure, path, dpi=dpi)


def _rgb(colour) -> tuple[float, float, float]:
    return tuple(float(c) / 255 for c in colour)


def _image_axis(ax, title: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, pad=3)


def attention_figure(image: np.ndarray, points: list[tuple[float, float]], maps: np.ndarray,
                     predictions: dict[str, np.ndarray], classes, palette, all_classes: bool = False,
                     title: str | None = None, columns: int = 4) -> Figure:
    """The DANet paper's qualitative figure: the image with its query points, one PAM attention map
    per point (each scaled to its own maximum), the fused, PAM and CAM predictions and a legend.

    ``maps`` is (P, H, W) at image size; ``predictions`` maps "fused"/"pam"/"cam" to (H, W) ids.
    """
    with rc_context(PUBLICATION_RC):
        height, width = image.shape[:2]
        panel_h = PANEL_WIDTH * height / width
        map_rows = max(1, math.ceil(len(points) / columns))
        legend_ids = (range(len(classes)) if all_classes else
                      sorted(set(np.unique(np.concatenate([p.ravel() for p in predictions.values()])).tolist())))
        legend_ids = [i for i in legend_ids if 0 <= i < len(classes)]
        legend_rows = math.ceil(len(legend_ids) / 6) if legend_ids else 0
        fig_h = (1 + map_rows) * (panel_h + 0.35) + 0.3 * legend_rows + (0.35 if title else 0.1)
        fig = Figure(figsize=(columns * PANEL_WIDTH, fig_h), layout="constrained")
        grid = fig.add_gridspec(1 + map_rows, columns)

        ax = fig.add_subplot(grid[0, 0])
        ax.imshow(image, interpolation="antialiased")
        for index, (x, y) in enumerate(points):
            _mark(ax, x, y, index, width)
        _image_axis(ax, "Image and query points")
        names = {"fused": "Fused (DANet)", "pam": "PAM branch", "cam": "CAM branch"}
        for column, key in enumerate(predictions, start=1):        # the head's outputs, main first
            if column >= columns:
                break
            ax = fig.add_subplot(grid[0, column])
            ax.imshow(colorize(predictions[key], palette), interpolation="nearest")
            _image_axis(ax, names.get(key, key))

        for index, ((x, y), values) in enumerate(zip(points, maps)):
            ax = fig.add_subplot(grid[1 + index // columns, index % columns])
            ax.imshow(image, interpolation="antialiased")
            ax.imshow(values, cmap="jet", alpha=0.55, vmin=0.0, vmax=float(values.max()) or 1.0,
                      interpolation="bilinear")
            _mark(ax, x, y, index, width)
            _image_axis(ax, f"Point {index + 1} ({x:g}, {y:g})")

        if legend_ids:
            handles = [Patch(facecolor=_rgb(palette[i]), edgecolor="black", linewidth=0.5, label=classes[i])
                       for i in legend_ids]
            fig.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)),
                       frameon=False, handlelength=1.2, columnspacing=1.2)
        if title:
            fig.suptitle(title)
    return fig


def _mark(ax, x: float, y: float, index: int, width: int) -> None:
    size = max(30.0, 60.0 * width / 480)
    ax.scatter([x], [y], s=size, color=_rgb(point_colour(index)), edgecolors="black", linewidths=0.8, zorder=3)
    ax.annotate(str(index + 1), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8,
                fontweight="bold", color=_rgb(point_colour(index)), zorder=4,
                path_effects=_outline())


def _outline():
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=2, foreground="black")]


def cam_matrix_figure(matrix: np.ndarray, title: str = "CAM channel attention") -> Figure:
    """Heatmap of the (C, C) channel-attention matrix: row = output channel, column = source."""
    with rc_context(PUBLICATION_RC):
        fig = Figure(figsize=(4.6, 4.0), layout="constrained")
        ax = fig.add_subplot()
        image = ax.imshow(matrix, cmap="viridis", interpolation="nearest")
        ax.set_xlabel("source channel j")
        ax.set_ylabel("output channel i")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, label="attention weight (rows sum to 1)", shrink=0.85)
    return fig


def attention_stats_figure(stats) -> Figure:
    """Nine panels over the per-class table of ``AttentionStats``: same-class mass vs chance, its
    distribution, normalised entropy, attended distance vs uniform, the module ablation (with the
    pixels each variant changes), all queries' mass, lift over chance, specificity and PAM's
    contribution per class."""
    summary = [row for row in stats.summary if row["class"] != "all"]
    names = [row["class"] for row in summary]
    queries = stats.queries
    with rc_context(PUBLICATION_RC):
        fig = Figure(figsize=(13, 10.8), layout="constrained")
        axes = fig.subplots(3, 3)
        positions = np.arange(len(names))

        ax = axes[0, 0]
        width = 0.27
        for offset, column, label in ((-width, "same_class_mass_gt", "same class (ground truth)"),
                                      (0.0, "same_class_mass_pred", "same class (prediction)"),
                                      (width, "chance_gt", "uniform attention (chance)")):
            ax.bar(positions + offset, [row[column] for row in summary], width, label=label)
        _class_axis(ax, names, "mean attention mass", "PAM attention on the query's class")
        ax.set_ylim(0, 1)
        ax.legend(frameon=False, fontsize=7)

        ax = axes[0, 1]
        groups = [np.asarray(queries["same_class_mass_gt"], float)[np.asarray(queries["gt_class"]) == i]
                  for i in _class_ids(stats, names)]
        if names:
            ax.boxplot([g[~np.isnan(g)] for g in groups], positions=positions, widths=0.6, showfliers=False)
            ax.scatter(positions, [row["chance_gt"] for row in summary], marker="_", s=200, color="red",
                       label="chance", zorder=3)
            ax.legend(frameon=False, fontsize=7)
        _class_axis(ax, names, "same-class mass per query", "Distribution over queries")
        ax.set_ylim(0, 1)

        ax = axes[0, 2]
        entropy = [np.asarray(queries["entropy_normalised"], float)[np.asarray(queries["gt_class"]) == i]
                   for i in _class_ids(stats, names)]
        if names:
            ax.boxplot(entropy, positions=positions, widths=0.6, showfliers=False)
        _class_axis(ax, names, "entropy / log N", "Attention entropy (1 = uniform)")
        ax.set_ylim(0, 1.02)

        ax = axes[1, 0]
        ax.bar(positions - 0.2, [row["distance_pixels"] for row in summary], 0.4, label="attention")
        ax.bar(positions + 0.2, [row["uniform_distance_pixels"] for row in summary], 0.4, label="uniform")
        _class_axis(ax, names, "mean attended distance (input px)", "How far PAM looks")
        ax.legend(frameon=False, fontsize=7)

        ax = axes[1, 1]
        variants = [row["variant"] for row in stats.ablation]
        spots = np.arange(len(variants))
        for offset, column, label in ((-0.27, "miou_fused", "fused output"), (0.0, "miou_pam_output", "PAM output"),
                                      (0.27, "miou_cam_output", "CAM output")):
            ax.bar(spots + offset, [row[column] * 100 for row in stats.ablation], 0.27, label=label)
        ticks = [row["variant"].replace(" (", "\n(") + _changed_note(row) for row in stats.ablation]
        ax.set_xticks(spots, ticks, fontsize=7)
        ax.set_ylabel("mIoU %")
        ax.set_title("Switching modules off (head recomputed)")
        top = max((row[c] * 100 for row in stats.ablation for c in ("miou_fused", "miou_pam_output",
                                                                      "miou_cam_output")), default=1.0)
        ax.set_ylim(0, (top if np.isfinite(top) and top > 0 else 1.0) * 1.25)   # room for the legend
        ax.legend(frameon=False, fontsize=7, ncols=3, loc="upper center")

        ax = axes[1, 2]
        mass = np.asarray(queries["same_class_mass_gt"], float)
        chance = np.asarray(queries["chance_gt"], float)
        bins = np.linspace(0, 1, 21)
        ax.hist(mass[~np.isnan(mass)], bins=bins, alpha=0.7, label="attention")
        ax.hist(chance, bins=bins, alpha=0.5, label="uniform (chance)")
        ax.set_xlabel("same-class mass (ground truth)")
        ax.set_ylabel("queries")
        ax.set_title(f"All {mass.size} queries")
        ax.legend(frameon=False, fontsize=7)

        ax = axes[2, 0]
        lifts = np.array([row.get("lift_gt", np.nan) for row in summary], float)
        shown = np.where(np.isfinite(lifts) & (lifts > 0), lifts, np.nan)
        ax.bar(positions, shown, 0.6, label="mean mass / chance")
        ax.axhline(1.0, color="red", linewidth=0.8, linestyle="--", label="no preference (1)")
        if np.any(np.isfinite(shown)):
            ax.set_yscale("log")
        _class_axis(ax, names, "lift (log scale)", "Same-class mass over the class's area share")
        ax.legend(frameon=False, fontsize=7)

        ax = axes[2, 1]
        for offset, column, label in ((-0.2, "js_from_mean", "JS from the mean row (bits)"),
                                      (0.2, "mean_row_share", "share explained by the mean row")):
            ax.bar(positions + offset, [row.get(column, np.nan) for row in summary], 0.4, label=label)
        _class_axis(ax, names, "mean over queries", "Query specificity (JS 0 = every row alike)")
        ax.set_ylim(0, 1.25)                                               # room for the legend
        ax.legend(frameon=False, fontsize=7, ncols=2, loc="upper center")

        ax = axes[2, 2]
        ax.bar(positions, [100 * row.get("pam_contribution", np.nan) for row in summary], 0.6)
        overall = getattr(stats, "overall", {}) or {}
        cam = overall.get("cam_contribution_mean", np.nan)
        note = f" (CAM: {100 * cam:.2g}% per channel)" if np.isfinite(cam) else ""
        _class_axis(ax, names, "|alpha| ||a V|| / ||A|| (%)", f"PAM contribution at the query{note}")
    return fig


def _changed_note(row: dict) -> str:
    changed = row.get("changed_fraction_fused", np.nan)
    if row["variant"] == "full model" or not np.isfinite(changed):
        return ""
    return f"\n{100 * changed:.2g}% changed"


def sinks_figure(image: np.ndarray, sinks: np.ndarray, cell_boxes: list[tuple[float, float, float, float]] = (),
                 title: str = "Attention sinks: mean attention each cell receives") -> Figure:
    """The image under the (h, w) sink map (mean attention received, in multiples of uniform 1/N,
    drawn per cell; cells below uniform are left clear so the photo shows), with the strongest
    cells outlined (``cell_boxes``: (x0, y0, x1, y1) in pixels)."""
    from matplotlib.patches import Rectangle

    values = np.asarray(sinks, float) * sinks.size
    return _grid_overlay(image, np.where(values >= 1.0, values, np.nan), title, "x uniform (1/N)", "magma",
                         vmin=1.0, extra=lambda ax: [ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                                                  edgecolor="cyan", linewidth=1.2))
                                           for x0, y0, x1, y1 in cell_boxes])


def contribution_figure(image: np.ndarray, pam: np.ndarray, title: str = "PAM contribution per cell") -> Figure:
    """The image under PAM's per-cell contribution |alpha| ||a_i V|| / ||A_i|| (in %, NaN cells blank)."""
    return _grid_overlay(image, 100 * np.asarray(pam, float), title, "PAM term / input norm (%)", "viridis")


def _grid_overlay(image, values, title, label, cmap, vmin: float = 0.0, extra=None) -> Figure:
    height, width = image.shape[:2]
    with rc_context(PUBLICATION_RC):
        fig = Figure(figsize=(5.2, 5.2 * height / width + 0.6), layout="constrained")
        ax = fig.add_subplot()
        ax.imshow(image, interpolation="antialiased")
        finite = values[np.isfinite(values)]
        top = float(finite.max()) if finite.size and finite.max() > vmin else vmin + 1.0
        shown = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, alpha=0.6, vmin=vmin, vmax=top,
                          extent=(0, width, height, 0), interpolation="nearest")
        if extra:
            extra(ax)
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        _image_axis(ax, title)
        fig.colorbar(shown, ax=ax, label=label, shrink=0.8)
    return fig


def deletion_curve_figure(knockout, title: str | None = None) -> Figure:
    """Drop of the predicted class's logit against k for removing the top-, random- and least-attended
    k cells of one query's PAM row (``danet.analysis.Knockout``), with the AUCs and the verdict."""
    ks = np.asarray(knockout.ks)
    auc = knockout.auc
    with rc_context(PUBLICATION_RC):
        fig = Figure(figsize=(5.0, 3.4), layout="constrained")
        ax = fig.add_subplot()
        for name, label in (("top", "top-k attended"), ("random", "random k"), ("least", "least-k attended")):
            ax.plot(ks, knockout.drops[name], label=f"{label} (AUC {auc[name]:.3g})",
                    linewidth=1.4 if name == "top" else 1.0)
        spread = np.asarray(knockout.random_std)
        ax.fill_between(ks, knockout.drops["random"] - spread, knockout.drops["random"] + spread,
                        alpha=0.2, color="C1", linewidth=0)
        if np.isfinite(knockout.pam_off_drop):
            ax.axhline(knockout.pam_off_drop, color="grey", linestyle="--", linewidth=0.8,
                       label=f"PAM term removed ({knockout.pam_off_drop:.3g})")
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_xlabel("k (cells removed from the row)")
        ax.set_ylabel("drop of the predicted logit")
        ax.set_title(title or f"Cell {tuple(knockout.cell)}: {knockout.verdict}")
        ax.legend(frameon=False, fontsize=7)
    return fig


def _class_ids(stats, names) -> list[int]:
    classes = list(stats.settings.get("classes", names))
    return [classes.index(name) for name in names]


def _class_axis(ax, names, ylabel: str, title: str) -> None:
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
