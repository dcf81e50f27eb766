"""Every measure of ``danet.analysis`` for one image and its query points, as one report
(``measure_query``) and written to a folder (``write_measures``): what ``danet measures`` does.

The report answers "does attention matter here, and is it specific?" for the image: query
specificity, PAM/CAM contribution and CAM saturation (``measure_image``), the pixels that change
class with PAM, CAM or both switched off (and the fused mIoU change against a label map, when one
is given), and for each point the knockout verdict of its PAM row. One forward: the ablations and
knockouts recompute the head from what the ``InspectionResult`` keeps. Definitions:
docs/measures.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from danet.analysis import Ablation, ImageMeasures, Knockout, ablate, knockout_curve, measure_image
from danet.analysis.contribution import percent
from danet.analysis.knockout import DRAWS, MAX_K, check_knockout_settings
from danet.analysis.specificity import MAX_QUERIES
from danet.jobs.attention import Query
from danet.jobs.inputs import describe_model
from danet.safety.outputs import OutputError, output_lock, prepare_output_dir, save_json
from danet.safety.paths import file_sha256, regular_file
from danet.checkpoints.meta import LoadedModel
from danet.data.labels import load_label_map
from danet.errors import InputError, LabelMapError
from danet.render.figures import contribution_figure, deletion_curve_figure, save as save_figure, sinks_figure
from danet.inspection import InspectionResult, inspect_image

RECORD = "measures.json"
VARIANTS = ((True, False), (False, True), (True, True))     # (pam_off, cam_off): PAM off, CAM off, both
FALLBACK_IGNORE = 255        # void id for label maps of datasets that have none (as the app does)
TOP_SINKS = 5


@dataclass
class LabelMap:
    """A label map read for the image: (H, W) ids at the image's size, its void id and notices."""

    path: Path
    ids: np.ndarray
    ignore_index: int
    notices: list[str] = field(default_factory=list)


def read_labels(path: str | Path, query: Query, loaded: LoadedModel) -> LabelMap:
    """Read the label map ``path`` for ``query``'s image (resized with it when it was downscaled);
    ids or the dataset's colours. Ids outside the classes are void."""
    path = regular_file(path, "a label map", LabelMapError)
    ignore = loaded.meta.dataset.ignore_index
    ignore = FALLBACK_IGNORE if ignore is None else int(ignore)
    ids, notices = load_label_map(path, query.picture.size, loaded.meta.config.num_classes, ignore,
                                  palette=loaded.meta.palette)
    if (ids == ignore).all():
        raise LabelMapError(f"{path.name}: every pixel is void ({ignore}); no mIoU can be computed")
    return LabelMap(path, ids, ignore, list(notices))


@dataclass
class MeasuresReport:
    """The measures of one image and its points; ``record()`` is what ``measures.json`` holds."""

    loaded: LoadedModel
    query: Query
    result: InspectionResult
    measures: ImageMeasures
    ablations: list[Ablation]
    knockouts: list[Knockout]
    labels: LabelMap | None = None
    settings: dict = field(default_factory=dict)

    def ablation_sentence(self) -> str:
        parts = [f"{a.name} {percent(a.changed_fraction)}" for a in self.ablations]
        sentence = f"Pixels whose class changes with {', '.join(parts)}."
        if self.labels is not None:
            changes = ", ".join(f"{a.name} {100 * a.miou_change:+.2f}" for a in self.ablations)
            sentence += (f" Fused mIoU {100 * self.ablations[0].miou_before:.2f}% against the label map; "
                         f"change in points: {changes}.")
        return sentence

    def sentences(self) -> list[str]:
        return [*self.measures.sentences(), self.ablation_sentence()]

    def point_lines(self) -> list[str]:
        """One line per point: its cell, predicted class, knockout verdict and AUCs."""
        classes = self.loaded.meta.classes
        lines = []
        for index, ((x, y), knockout) in enumerate(zip(self.query.given, self.knockouts), start=1):
            auc = knockout.auc
            name = classes[knockout.predicted_class] if knockout.predicted_class < len(classes) else "?"
            lines.append(f"point {index} ({x:g}, {y:g}), cell {knockout.cell}, predicted {name}: {knockout.verdict}; "
                         f"drop AUC top {auc['top']:.3g}, random {auc['random']:.3g}, least {auc['least']:.3g} "
                         f"logits (PAM's whole term: {knockout.pam_off_drop:.3g})")
        return lines

    def record(self) -> dict:
        """Plain values for JSON (NaN as null)."""
        measures, picture = self.measures, self.query.picture
        spec = measures.specificity
        sinks = [{"row": r, "col": c, "received": v, "times_uniform": v * spec.sinks.size}
                 for r, c, v in spec.top_sinks(TOP_SINKS)]
        points = []
        for index, ((gx, gy), (x, y), knockout) in enumerate(zip(self.query.given, self.query.used,
                                                               self.knockouts), start=1):
            points.append({"index": index, "x": gx, "y": gy, "x_used": x, "y_used": y,
                           "cell": list(knockout.cell), **knockout.summary(), "rule": knockout.rule,
                           "ks": knockout.ks, "drops": knockout.drops, "random_std": knockout.random_std,
                           "removed_mass": knockout.removed_mass})
        record = {
            "model": describe_model(self.loaded),
            "image": {"path": str(self.query.path), "sha256": file_sha256(self.query.path),
                      "size": list(picture.size), "original_size": list(picture.original_size),
                      "notices": picture.notices},
            "grid_size": list(self.result.grid_size), "alpha": self.result.alpha, "beta": self.result.beta,
            "settings": self.settings,
            "sentences": self.sentences(),
            "specificity": {**spec.summary(), "sampled": spec.sampled, "top_sinks": sinks},
            "contribution": measures.contribution.summary(),
            "cam": measures.cam.summary(),
            "ablation": [a.summary() for a in self.ablations],
            "labels": None if self.labels is None else {"path": str(self.labels.path),
                                                        "ignore_index": self.labels.ignore_index,
                                                        "notices": self.labels.notices},
            "points": points,
        }
        return plain(record)


def plain(value):
    """``value`` with numpy values as Python ones and NaN/inf as None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def measure_query(loaded: LoadedModel, query: Query, *, labels: str | Path | None = None, max_k: int = MAX_K,
                  draws: int = DRAWS, seed: int = 0, max_queries: int = MAX_QUERIES) -> MeasuresReport:
    """Inspect ``query``'s image once and take every measure: ``measure_image``, ``ablate`` for PAM
    off, CAM off and both (with the label map ``labels``: the fused mIoU change too), and
    ``knockout_curve`` for each point (``max_k``, ``draws`` and ``seed`` as there)."""
    check_knockout_settings(max_k, draws, seed)             # before the forward, not after it
    label_map = read_labels(labels, query, loaded) if labels is not None else None
    model = loaded.model
    result = inspect_image(model, query.picture.array, loaded.meta.mean, loaded.meta.std)
    measures = measure_image(result, max_queries=max_queries, seed=seed)
    ablations = [ablate(model, result, pam_off=pam_off, cam_off=cam_off,
                        label=None if label_map is None else label_map.ids,
                        ignore_index=None if label_map is None else label_map.ignore_index)
                 for pam_off, cam_off in VARIANTS]
    knockouts = [knockout_curve(model, result, point, max_k=max_k, draws=draws, seed=seed) for point in query.used]
    settings = {"max_k": max_k, "draws": draws, "seed": seed, "max_queries": max_queries}
    return MeasuresReport(loaded, query, result, measures, ablations, knockouts, label_map, settings)


def write_measures(report: MeasuresReport, out: str | Path, *, dpi: int = 150) -> dict:
    """Write ``report`` into the folder ``out``: ``sinks.png`` (mean attention received per cell, the
    strongest outlined), ``pam_contribution.png``, ``deletion_pointN.png`` per point, and last
    ``measures.json`` (the record, with the file list). Returns the record."""
    out = prepare_output_dir(out)
    with output_lock(out):
        return _write_measures(report, out, dpi)


def _write_measures(report: MeasuresReport, out: Path, dpi: int) -> dict:
    try:
        (out / RECORD).unlink(missing_ok=True)    # an old record must not vouch for new files
    except OSError as error:
        raise OutputError(f"cannot replace {out / RECORD}: {error.strerror or error}") from None
    image, result, measures = report.query.picture.array, report.result, report.measures
    files = []

    def keep(name):
        files.append(name)
        return out / name

    boxes = [result.cell_to_pixel_box(r, c) for r, c, _ in measures.specificity.top_sinks(TOP_SINKS)]
    save_figure(sinks_figure(image, measures.specificity.sinks, boxes), keep("sinks.png"), dpi=dpi)
    save_figure(contribution_figure(image, measures.contribution.pam), keep("pam_contribution.png"), dpi=dpi)
    for index, ((x, y), knockout) in enumerate(zip(report.query.given, report.knockouts), start=1):
        title = f"Point {index} ({x:g}, {y:g}), cell {knockout.cell}: {knockout.verdict}"
        save_figure(deletion_curve_figure(knockout, title), keep(f"deletion_point{index}.png"), dpi=dpi)
    record = {**report.record(), "files": files}
    save_json(out / RECORD, record)
    return record
