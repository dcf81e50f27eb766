"""Does PAM gather context from same-class pixels? Attention statistics over a labelled dataset.

Definitions (all on the head's feature grid of h x w = N cells, row-major):

* **Grid ground truth.** Each cell takes the majority label of the input pixels it covers (pixel
  (x, y) belongs to cell (floor(y h / H), floor(x w / W)), as in ``InspectionResult.pixel_to_cell``).
  Void pixels (the ignore id, or any id outside 0..K-1) vote too, as one extra candidate; ties go to
  the lower class id, so a cell is void only when void pixels outnumber every single class.
* **Grid prediction.** The fused prediction at input size, reduced to the grid the same way.
* **Queries.** ``points_per_image`` cells drawn without replacement among the non-void cells
  (seeded per image from ``(seed, image index)``). The query pixel is the cell centre.
* **Same-class mass (ground truth).** For the query's softmax row a (sums to 1 over all N cells):
  sum of a over cells with the query's class / sum of a over non-void cells. Void targets are left
  out of numerator and denominator. ``chance_gt`` is the same ratio for uniform attention (the share
  of non-void cells with the query's class): mass above it means attention prefers the class.
* **Same-class mass (prediction).** sum of a over cells whose predicted class equals the query's
  predicted class (no void in a prediction, so the denominator is 1); ``chance_pred`` likewise.
* **Entropy.** -sum a log a in nats, and divided by log N (1 = uniform, 0 = one cell).
* **Attended distance.** sum_j a_j |c_j - c_q| between cell centres, in grid cells and in input
  pixels (cells need not be square); ``uniform_distance_*`` is the same for uniform attention.
* **Lift.** ``lift_gt`` = same-class mass / chance_gt: how many times more mass the query's class gets
  than its area share of the (non-void) grid. Per class, ``lift_gt`` is the ratio of the means and
  ``lift_gt_median`` the median of the per-query lifts.
* **Specificity and contribution** (``danet.analysis``, docs/measures.md). ``js_from_mean``: JS divergence
  in bits of the query's row from the image's mean row (over all cells, or a seeded sample on large
  grids); ``mean_row_share``: sum_j min(a_j, m_j), the share of the row the mean row explains;
  ``pam_contribution``: |alpha| ||sum_j a_j V_j|| / ||A_q|| at the query cell. ``per_image`` adds each
  image's means (PAM and CAM contribution, specificity, CAM effective channels, pixels each ablation
  changes) and ``overall`` their means over the images.
* **Module ablation.** alpha = 0 turns PAM into the identity, beta = 0 does the same for CAM. The head
  is recomputed from the branch inputs kept by ``inspect_image`` (``danet.analysis.ablation``), never
  the backbone again; mIoU of all three outputs over the same images, and the share of pixels whose
  fused class changes.
"""
from __future__ import annotations

import copy
import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from danet.errors import LabelMapError
from danet.analysis.metrics import confusion_matrix, scores
from danet.maps.base import entropy_bits
from danet.maps.grid import VOID, same_class_mass, cell_centres, grid_labels, pixel_cells  # noqa: F401  (re-exported)

QUERY_COLUMNS = ("image", "row", "col", "x", "y", "gt_class", "pred_class", "same_class_mass_gt",
                 "chance_gt", "same_class_mass_pred", "chance_pred", "entropy", "entropy_normalised",
                 "distance_cells", "distance_pixels", "uniform_distance_cells", "uniform_distance_pixels",
                 "lift_gt", "js_from_mean", "mean_row_share", "pam_contribution")
STAT_COLUMNS = QUERY_COLUMNS[7:]
IMAGE_COLUMNS = ("image", "js_mean", "mean_row_share", "sink_peak", "pam_contribution_mean",
                 "cam_contribution_mean", "cam_entropy_bits_mean", "cam_effective_channels_mean",
                 "cam_one_hot_rows", "changed_pam_off", "changed_cam_off", "changed_both_off")


# ---- pure functions ------------------------------------------------------------------------------
def sample_queries(grid_gt: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted flat indices of up to ``count`` distinct non-void cells."""
    candidates = np.flatnonzero(np.asarray(grid_gt).ravel() != VOID)
    take = min(count, candidates.size)
    return np.sort(rng.choice(candidates, size=take, replace=False)) if take else candidates[:0]


def query_statistics(rows: np.ndarray, queries: np.ndarray, grid_gt: np.ndarray, grid_pred: np.ndarray,
                     image_size: tuple[int, int], *, mean_row: np.ndarray | None = None,
                     pam_contribution: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-query statistics for attention ``rows`` (P, N) of the cells ``queries`` (P,).

    ``grid_gt`` and ``grid_pred`` are (h, w) class maps (``VOID`` allowed in the ground truth).
    ``mean_row`` (N,) is the image's mean row and ``pam_contribution`` the (h, w) contribution map
    (``danet.analysis``); without them their columns are NaN. Returns one (P,) array per name in
    ``STAT_COLUMNS``.
    """
    grid_size = np.asarray(grid_gt).shape
    gt, pred = np.asarray(grid_gt).ravel(), np.asarray(grid_pred).ravel()
    rows = np.asarray(rows, dtype=np.float64).reshape(len(queries), -1)
    n = rows.shape[1]
    if n != gt.size:
        raise ValueError(f"attention rows have {n} cells but the grid has {gt.size}")
    rows = rows / rows.sum(1, keepdims=True)
    queries = np.asarray(queries, dtype=np.int64)
    valid = gt != VOID
    same_gt = (gt[None, :] == gt[queries][:, None]) & valid[None, :]
    same_pred = pred[None, :] == pred[queries][:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        mass_gt = same_class_mass(rows, gt, gt[queries])
        chance_gt = same_gt.sum(1) / max(valid.sum(), 1)
    entropy = entropy_bits(rows)
    if mean_row is not None:
        from danet.analysis.specificity import js_and_share

        mean = torch.as_tensor(np.asarray(mean_row, dtype=np.float64).ravel())
        js, share = (t.numpy() for t in js_and_share(torch.from_numpy(rows), mean / mean.sum()))
    else:
        js = share = np.full(len(queries), np.nan)
    contribution = (np.asarray(pam_contribution, dtype=np.float64).ravel()[queries] if pam_contribution is not None
                    else np.full(len(queries), np.nan))
    in_cells, in_pixels = cell_centres(grid_size, image_size)
    d_cells = np.linalg.norm(in_cells[None, :, :] - in_cells[queries][:, None, :], axis=2)
    d_pixels = np.linalg.norm(in_pixels[None, :, :] - in_pixels[queries][:, None, :], axis=2)
    return {
        "same_class_mass_gt": mass_gt,
        "chance_gt": chance_gt,
        "same_class_mass_pred": same_class_mass(rows, pred, pred[queries]),
        "chance_pred": same_pred.mean(1),
        "entropy": entropy,
        "entropy_normalised": entropy / math.log2(n) if n > 1 else np.zeros_like(entropy),
        "distance_cells": (rows * d_cells).sum(1),
        "distance_pixels": (rows * d_pixels).sum(1),
        "uniform_distance_cells": d_cells.mean(1),
        "uniform_distance_pixels": d_pixels.mean(1),
        "lift_gt": mass_gt / chance_gt,
        "js_from_mean": js,
        "mean_row_share": share,
        "pam_contribution": contribution,
    }


def summarise(queries: dict[str, np.ndarray], classes: tuple[str, ...]) -> list[dict]:
    """One row per ground-truth class of the query (means, plus medians of the same-class mass),
    then ``all`` over every query; classes without queries are left out. Columns missing from
    ``queries`` (tables made before a column existed) are left out too."""
    gt = np.asarray(queries["gt_class"])
    groups = [(name, gt == index) for index, name in enumerate(classes)] + [("all", np.ones_like(gt, bool))]
    table = []
    for name, chosen in groups:
        if not chosen.any():
            continue
        row = {"class": name, "queries": int(chosen.sum())}
        for column in STAT_COLUMNS:
            if column in queries and column != "lift_gt":
                row[column] = _nanmean(np.asarray(queries[column], dtype=np.float64)[chosen])
        mass = np.asarray(queries["same_class_mass_gt"], dtype=np.float64)[chosen]
        row["same_class_mass_gt_median"] = float(np.nanmedian(mass))
        row["same_class_mass_gt_q25"] = float(np.nanquantile(mass, 0.25))
        row["same_class_mass_gt_q75"] = float(np.nanquantile(mass, 0.75))
        row["lift_gt"] = row["same_class_mass_gt"] / row["chance_gt"] if row["chance_gt"] > 0 else float("nan")
        if "lift_gt" in queries:
            lifts = np.asarray(queries["lift_gt"], dtype=np.float64)[chosen]
            row["lift_gt_median"] = float(np.nanmedian(lifts)) if np.any(~np.isnan(lifts)) else float("nan")
        table.append(row)
    return table


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def rows_to_csv(rows: list[dict], columns: Iterable[str] | None = None) -> str:
    """CSV text of ``rows`` (floats with 6 significant digits; NaN as an empty field)."""
    rows = list(rows)
    columns = list(columns or (rows[0].keys() if rows else []))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if isinstance(v, float) and math.isnan(v) else f"{v:.6g}" if isinstance(v, float)
                         else v for v in (row[c] for c in columns)])
    return buffer.getvalue()


def select_evenly(items: list, limit: int | None) -> list:
    """At most ``limit`` items spread evenly over ``items`` (CamVid splits are video sequences,
    so the first M frames would all come from one clip)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        return []
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in picks]


def switched_off(model, pam: bool = False, cam: bool = False):
    """A deep copy of ``model`` with alpha (``pam``) and/or beta (``cam``) set to 0; the original
    is untouched, so a model shared with other threads or sessions stays valid."""
    clone = copy.deepcopy(model).eval()
    with torch.no_grad():
        if pam:
            clone.head.pam.alpha.zero_()
        if cam:
            clone.head.cam.beta.zero_()
    return clone


ABLATIONS = (("full model", False, False), ("alpha=0 (PAM off)", True, False),
             ("beta=0 (CAM off)", False, True), ("alpha=beta=0 (both off)", True, True))
_CHANGED = {(True, False): "changed_pam_off", (False, True): "changed_cam_off", (True, True): "changed_both_off"}


# ---- driver --------------------------------------------------------------------------------------
@dataclass
class AttentionStats:
    """Everything ``danet attention-stats`` writes: per query, per class, per ablation, per image."""

    queries: dict[str, np.ndarray]
    summary: list[dict]
    ablation: list[dict]
    images: list[str]
    settings: dict = field(default_factory=dict)
    per_image: list[dict] = field(default_factory=list)    # IMAGE_COLUMNS, one row per image
    overall: dict = field(default_factory=dict)            # means of per_image's numbers over the images

    def query_rows(self) -> list[dict]:
        return [{c: _plain(self.queries[c][i]) for c in QUERY_COLUMNS} for i in range(len(self.queries["row"]))]


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class StatsPart:
    """Statistics of some of the images (one image, or one rank's share under ``torchrun``): the
    counts that add up exactly, and each image's rows under its index in the whole list, so that
    parts merge (``merge_parts``) into exactly what one pass over all the images gives."""

    confusions: dict[str, dict[str, np.ndarray]]     # variant -> output -> (K, K) int64
    changed: dict[str, int]                          # variant -> pixels whose fused class changes
    pixels: int = 0
    images: dict[int, tuple[dict, dict[str, list]]] = field(default_factory=dict)  # index -> (row, query columns)

    @classmethod
    def empty(cls, variants, num_classes: int) -> StatsPart:
        return cls({name: {o: np.zeros((num_classes, num_classes), np.int64) for o in ("fused", "pam", "cam")}
                    for name, _, _ in variants}, {name: 0 for name, _, _ in variants})

    def add(self, other: StatsPart) -> StatsPart:
        """Add ``other``'s counts and images into this part (in place); an image index seen twice is
        a bug in the sharding, so it raises."""
        overlap = self.images.keys() & other.images.keys()
        if overlap:
            raise ValueError(f"image index {min(overlap)} counted twice")
        for name, outputs in other.confusions.items():
            for output, matrix in outputs.items():
                self.confusions[name][output] += matrix
            self.changed[name] += other.changed[name]
        self.pixels += other.pixels
        self.images.update(other.images)
        return self


def _variants(ablation: bool):
    return ABLATIONS if ablation else ABLATIONS[:1]


def image_attention_stats(model, meta, index: int, image_path: Path, label_path: Path, *,
                          points_per_image: int = 20, seed: int = 0, ablation: bool = True,
                          ignore_index: int | None = None, measures: bool = True) -> StatsPart:
    """One image's queries, per-image row, confusion matrices and changed pixels.

    ``index`` is the image's position in the whole list: the query sampling is seeded by
    ``(seed, index)``, so an image gets the same queries whichever process handles it.
    """
    from danet.analysis import head_logits, measure_image
    from danet.data.camvid import read_pair
    from danet.inspection import inspect_image

    num_classes = meta.config.num_classes
    if ignore_index is None:
        ignore_index = meta.dataset.ignore_index
    variants = _variants(ablation)
    part = StatsPart.empty(variants, num_classes)
    columns: dict[str, list] = {c: [] for c in QUERY_COLUMNS}
    image, label = read_pair(image_path, label_path)
    if label.shape != image.shape[:2]:
        raise LabelMapError(f"{label_path.name}: label {label.shape} does not match image {image.shape[:2]}")
    result = inspect_image(model, image, meta.mean, meta.std)
    image_row = {c: float("nan") for c in IMAGE_COLUMNS}
    image_row["image"] = image_path.name
    mean_row = contribution_map = None
    if measures:
        measured = measure_image(result, seed=seed)
        mean_row, contribution_map = measured.specificity.sinks, measured.contribution.pam
        image_row.update({k: v for k, v in measured.summary().items() if k in image_row})
    grid_gt = grid_labels(label, result.grid_size, num_classes, ignore_index)
    grid_pred = grid_labels(result.prediction("fused"), result.grid_size, num_classes)
    queries = sample_queries(grid_gt, points_per_image, np.random.default_rng([seed, index]))
    if queries.size:
        _, in_pixels = cell_centres(result.grid_size, result.image_size)
        points = [tuple(p) for p in in_pixels[queries]]
        stats = query_statistics(result.rows(points).reshape(len(points), -1), queries, grid_gt,
                                 grid_pred, result.image_size, mean_row=mean_row,
                                 pam_contribution=contribution_map)
        gw = result.grid_size[1]
        columns["image"] += [image_path.name] * len(queries)
        columns["row"] += list(queries // gw)
        columns["col"] += list(queries % gw)
        columns["x"] += [float(x) for x, _ in points]
        columns["y"] += [float(y) for _, y in points]
        columns["gt_class"] += list(grid_gt.ravel()[queries])
        columns["pred_class"] += list(grid_pred.ravel()[queries])
        for name, values in stats.items():
            columns[name] += list(values)
    full = result.prediction("fused")
    part.pixels += full.size
    for name, pam_off, cam_off in variants:
        if not (pam_off or cam_off):
            outputs = {o: result.prediction(o) for o in ("fused", "pam", "cam")}
        else:
            grid = head_logits(model, result, pam=not pam_off, cam=not cam_off)
            outputs = {o: model.upsample(t[None], result.image_size)[0].argmax(0).numpy()
                       for o, t in grid.items()}
            count = int((outputs["fused"] != full).sum())
            part.changed[name] += count
            image_row[_CHANGED[pam_off, cam_off]] = count / full.size
        for output, prediction in outputs.items():
            part.confusions[name][output] += confusion_matrix(prediction, label, num_classes, ignore_index)
    part.images[index] = (image_row, columns)
    return part


def merge_parts(parts: Iterable[StatsPart]) -> StatsPart:
    """The parts added up (counts summed in int64, so exactly; images keyed by their index)."""
    parts = list(parts)
    total = StatsPart({n: {o: m.copy() for o, m in outs.items()} for n, outs in parts[0].confusions.items()},
                      dict(parts[0].changed), parts[0].pixels, dict(parts[0].images))
    for part in parts[1:]:
        total.add(part)
    return total


def gather_parts(part: StatsPart) -> StatsPart:
    """Under ``torchrun``: every rank's part merged, on every rank. The confusion matrices and pixel
    counts are summed with an int64 ``all_reduce``; the per-image rows (small) are gathered."""
    from danet.runtime import distributed

    if not distributed.is_active():
        return part
    names = list(part.confusions)
    stacked = np.stack([np.stack([part.confusions[n][o] for o in ("fused", "pam", "cam")]) for n in names])
    stacked = distributed.sum_array(stacked)
    counts = distributed.sum_array(np.array([part.changed[n] for n in names] + [part.pixels], np.int64))
    images: dict[int, tuple[dict, dict[str, list]]] = {}
    for rank_images in distributed.all_gather(part.images):
        overlap = images.keys() & rank_images.keys()
        if overlap:
            raise ValueError(f"image index {min(overlap)} counted by two ranks")
        images.update(rank_images)
    return StatsPart({n: dict(zip(("fused", "pam", "cam"), stacked[i])) for i, n in enumerate(names)},
                     {n: int(counts[i]) for i, n in enumerate(names)}, int(counts[-1]), images)


def finish_attention_stats(part: StatsPart, model, meta, pairs: list[tuple[Path, Path]], *, points_per_image: int,
                           seed: int, ignore_index: int | None, measures: bool) -> AttentionStats:
    """``AttentionStats`` from the merged part of every image: query and per-image rows in image
    order, then the per-class summary, the ablation scores and the overall means."""
    if sorted(part.images) != list(range(len(pairs))):
        raise ValueError(f"statistics of {len(part.images)} images, expected {len(pairs)}")
    if ignore_index is None:
        ignore_index = meta.dataset.ignore_index
    columns: dict[str, list] = {c: [] for c in QUERY_COLUMNS}
    per_image = []
    for index in range(len(pairs)):
        image_row, image_columns = part.images[index]
        per_image.append(image_row)
        for name in QUERY_COLUMNS:
            columns[name] += image_columns[name]
    queries_table = {c: np.asarray(v) for c, v in columns.items()}
    variants = [(name, pam_off, cam_off) for name, pam_off, cam_off in ABLATIONS if name in part.confusions]
    confusions, changed, pixels = part.confusions, part.changed, part.pixels
    full_miou = scores(confusions[variants[0][0]]["fused"])["miou"]
    alpha, beta = model.head.pam.alpha.item(), model.head.cam.beta.item()
    ablation_rows = []
    for name, pam_off, cam_off in variants:
        result_scores = {o: scores(c) for o, c in confusions[name].items()}
        ablation_rows.append({
            "variant": name, "alpha": 0.0 if pam_off else alpha, "beta": 0.0 if cam_off else beta,
            "miou_fused": result_scores["fused"]["miou"], "miou_pam_output": result_scores["pam"]["miou"],
            "miou_cam_output": result_scores["cam"]["miou"],
            "delta_miou_fused": result_scores["fused"]["miou"] - full_miou,
            "pixel_accuracy_fused": result_scores["fused"]["pixel_accuracy"],
            "changed_fraction_fused": changed[name] / pixels if pixels else float("nan")})
    summary = summarise(queries_table, tuple(meta.classes)) if queries_table["row"].size else []
    overall = {column: _nanmean(np.array([row[column] for row in per_image], dtype=np.float64))
               for column in IMAGE_COLUMNS[1:]} if per_image else {}
    return AttentionStats(queries=queries_table, summary=summary, ablation=ablation_rows,
                          images=[str(p) for p, _ in pairs],
                          settings={"points_per_image": points_per_image, "seed": seed,
                                    "ignore_index": ignore_index, "num_classes": meta.config.num_classes,
                                    "classes": list(meta.classes), "measures": measures},
                          per_image=per_image, overall=overall)


def compute_attention_stats(model, meta, pairs: list[tuple[Path, Path]], points_per_image: int = 20,
                            seed: int = 0, ablation: bool = True, ignore_index: int | None = None,
                            progress: Callable[[Iterable], Iterable] | None = None,
                            measures: bool = True, distributed: bool | None = None) -> AttentionStats:
    """Sample queries on every (image, label) pair, gather their statistics, and score the ablations.

    ``model`` must be in eval mode; it is never modified. One backbone forward per image: the
    ablations recompute the head only. ``measures=False`` skips the per-image specificity and
    contribution passes (their columns are then NaN). ``progress`` wraps this process's pairs.

    ``distributed`` (default: inside a process group of several ranks, ``torchrun``) shares the
    images out by ``danet.runtime.distributed.shard`` and merges the parts on every rank; every rank must
    then call this with the same arguments. Queries are seeded by each image's index in ``pairs``,
    so the result equals one process's.
    """
    from danet.runtime import distributed as dist_helpers

    sharded = dist_helpers.is_active() if distributed is None else distributed and dist_helpers.is_active()
    indices = list(range(len(pairs)))
    mine = dist_helpers.shard(indices) if sharded else indices
    part = StatsPart.empty(_variants(ablation), meta.config.num_classes)
    my_pairs = [pairs[i] for i in mine]
    for index, (image_path, label_path) in zip(mine, progress(my_pairs) if progress else my_pairs):
        part.add(image_attention_stats(model, meta, index, image_path, label_path,
                                       points_per_image=points_per_image, seed=seed, ablation=ablation,
                                       ignore_index=ignore_index, measures=measures))
    if sharded:
        part = gather_parts(part)
    return finish_attention_stats(part, model, meta, pairs, points_per_image=points_per_image, seed=seed,
                                  ignore_index=ignore_index, measures=measures)
