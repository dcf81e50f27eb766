"""An attention-statistics run written to a folder (what ``danet attention-stats`` does): how much
PAM attends to same-class pixels, how spread and how far its attention is, per class, and what
switching PAM or CAM off costs in mIoU and changed pixels; plus the per-image measures of
``danet.analysis`` (query specificity, contribution, CAM saturation) per query, per image and overall.

The measures are defined in ``danet.analysis.attention_stats`` and docs/measures.md. Files are written under temporary names
and renamed; ``summary.json`` comes last and marks a complete run. Under ``torchrun`` the images are shared
across the processes, merged on every rank, and rank 0 alone writes the folder.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from danet.runtime import distributed
from danet.analysis.contribution import percent
from danet.analysis.attention_stats import (IMAGE_COLUMNS, QUERY_COLUMNS, AttentionStats, compute_attention_stats, rows_to_csv,
                              select_evenly)
from danet.jobs.inputs import describe_model
from danet.safety.outputs import prepare_output_dir, save_json, save_text
from danet.checkpoints.meta import LoadedModel
from danet.data.camvid import list_pairs
from danet.errors import InputError
from danet.render.figures import attention_stats_figure, save as save_figure

SUMMARY = "summary.json"
SUMMARY_COLUMNS = ("class", "queries", "same_class_mass_gt", "same_class_mass_gt_median", "same_class_mass_gt_q25",
                   "same_class_mass_gt_q75", "chance_gt", "lift_gt", "lift_gt_median", "same_class_mass_pred",
                   "chance_pred", "entropy", "entropy_normalised", "distance_cells", "distance_pixels",
                   "uniform_distance_cells", "uniform_distance_pixels", "js_from_mean", "mean_row_share",
                   "pam_contribution")
FILES = ("attention_stats.csv", "queries.csv", "ablation.csv", "images.csv", "attention_stats.png")


@dataclass
class AttentionStatsReport:
    stats: AttentionStats
    summary: dict           # what summary.json holds
    out: Path


def write_attention_stats(loaded: LoadedModel, data: str | Path, out: str | Path, *, split: str = "val",
                          points_per_image: int = 20, max_images: int | None = None, seed: int = 0,
                          ablation: bool = True, ignore_index: int | None = None,
                          progress: bool = False) -> AttentionStatsReport:
    """Statistics of ``loaded`` on the labelled folder ``data`` (CamVid layout), into ``out``.

    ``max_images`` images are spread evenly over the split; ``ignore_index`` defaults to the
    model's dataset's void label. Inside a process group (``torchrun``) every rank must call this
    with the same arguments: each computes its share of the images, and only rank 0 writes ``out``
    (the others return the same statistics with nothing written).
    """
    pairs = select_evenly(list_pairs(data, split), max_images)
    main = distributed.is_main()
    model_info = describe_model(loaded) if main else None     # hash now: the file may be replaced later
    if main:
        out = prepare_output_dir(out)
    start = time.perf_counter()
    stats = compute_attention_stats(loaded.model, loaded.meta, pairs, points_per_image, seed, ablation, ignore_index,
                                    progress=lambda items: tqdm(items, desc="attention-stats", unit="image",
                                                                disable=not (progress and main)))
    if not stats.summary:
        raise InputError(f"no non-void query cells in {len(pairs)} image(s); check the ignore index and the labels")
    seconds = time.perf_counter() - start
    if not main:
        return AttentionStatsReport(stats, {"images": len(pairs), "settings": stats.settings}, Path(out))

    (out / SUMMARY).unlink(missing_ok=True)
    save_text(out / "attention_stats.csv", rows_to_csv(stats.summary, SUMMARY_COLUMNS))
    save_text(out / "queries.csv", rows_to_csv(stats.query_rows(), QUERY_COLUMNS))
    save_text(out / "ablation.csv", rows_to_csv(stats.ablation))
    save_text(out / "images.csv", rows_to_csv(stats.per_image, IMAGE_COLUMNS))
    save_figure(attention_stats_figure(stats), out / "attention_stats.png", dpi=150)
    summary = {"model": model_info, "data": str(data), "split": split, "images": len(pairs),
               "settings": stats.settings, "seconds": round(seconds, 1), "per_class": stats.summary,
               "ablation": stats.ablation, "overall": stats.overall, "per_image": stats.per_image,
               "files": list(FILES)}
    save_json(out / SUMMARY, summary)
    return AttentionStatsReport(stats, summary, out)


def overall_sentences(overall: dict) -> list[str]:
    """The per-image measures' means over the images (``AttentionStats.overall``) in words; an
    empty list when they were not measured."""
    def number(key):
        value = overall.get(key, float("nan"))
        return float(value) if value is not None else float("nan")

    if not overall or all(number(k) != number(k) for k in overall):
        return []
    changed = " / ".join(percent(number(k)) for k in ("changed_pam_off", "changed_cam_off", "changed_both_off"))
    return [f"PAM changes the features by {percent(number('pam_contribution_mean'))} on average, "
            f"CAM by {percent(number('cam_contribution_mean'))} (means over the images).",
            f"Query rows differ from their image's mean row by {number('js_mean'):.3f} bits of JS divergence; "
            f"the mean row explains {percent(number('mean_row_share'))} of a row; the strongest sink receives "
            f"{number('sink_peak'):.3g} x uniform.",
            f"CAM rows mix {number('cam_effective_channels_mean'):.2f} effective channels "
            f"({percent(number('cam_one_hot_rows'))} of rows one-hot).",
            f"Pixels whose class changes with PAM off / CAM off / both off: {changed}."]
