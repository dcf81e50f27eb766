"""Pure helpers behind the Streamlit app: clicked points, cache keys, label maps, per-point stats.

Nothing here imports Streamlit, so every rule the app follows (how a click becomes a point,
when a forward pass is needed, how a label map is checked) is testable without a browser.
"""
from __future__ import annotations

import hashlib
import threading
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from danet.maps.base import entropy_bits
from danet.maps.grid import grid_labels, same_class_mass
from danet.analysis.metrics import confusion_matrix, scores
from danet.checkpoints.meta import LoadedModel
from danet.data.labels import load_label_map
from danet.errors import InputError, LabelMapError
from danet.safety.records import read_points_record
from danet.inspection import InspectionResult

__all__ = [
    "FORWARDS",
    "MAX_POINTS",
    "LabelMap",
    "LabelMapError",
    "PointStats",
    "RecordedScores",
    "Selection",
    "add_point",
    "apply_click",
    "attention_entropy",
    "branch_disagreement",
    "click_to_pixel",
    "dataset_guess",
    "dataset_label",
    "drop_point",
    "file_sha256",
    "model_facts",
    "model_id",
    "point_statistics",
    "points_from_param",
    "points_from_record",
    "points_to_param",
    "prepare_label_map",
    "read_points_param",
    "recorded_scores",
    "remove_point",
    "result_key",
    "score_outputs",
    "sha256_bytes",
    "switch_image_points",
]

MAX_POINTS = 8                     # clicked points kept per image (the paper figure shows 2-6)
FALLBACK_IGNORE = 255              # ignore id for label maps when the dataset has none


# ---- forward-pass bookkeeping -----------------------------------------------------------------
class ForwardCounter:
    """Counts forward passes per process, so tests and the diagnostics panel can check caching."""

    def __init__(self):
        self._lock = threading.Lock()
        self._total = 0
        self._seconds: list[float] = []

    def record(self, seconds: float) -> int:
        with self._lock:
            self._total += 1
            self._seconds.append(float(seconds))
            return self._total

    @property
    def total(self) -> int:
        return self._total

    @property
    def last_seconds(self) -> float | None:
        return self._seconds[-1] if self._seconds else None


FORWARDS = ForwardCounter()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes: what identifies weights in cache keys and records.

    Hashed again only when ``stat`` says the file was touched (size, mtime, ctime, inode: ctime
    moves on every write and cannot be set back), so a rerun costs a ``stat``; the identity is
    always the content, never the stamp.
    """
    stat = Path(path).stat()
    return _hash_file(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


@lru_cache(maxsize=16)
def _hash_file(path: str, *stamp: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_id(weights_sha256: str, dilation: str | None = None, dataset: str | None = None) -> str:
    """The identity of a loaded model: its weights' sha256 plus what the user chose on top
    (the same file at another dilation or with other classes is another model)."""
    options = "".join(f"|{name}={value}" for name, value in (("dilation", dilation), ("dataset", dataset))
                      if value is not None)
    return f"sha256:{weights_sha256}{options}"


def result_key(model_id: str, image_sha256: str, device: str) -> str:
    """The one key a forward pass is cached under: same image + model + device -> no new forward."""
    return f"{model_id}|{image_sha256}|{device}"


@dataclass
class Selection:
    """What every page of the app works on: one model, one image, its cached forward result."""

    loaded: LoadedModel
    model_id: str                          # ``model_id(...)``: weights sha256 + load options
    model_sha256: str                      # of the weights file's bytes
    is_default: bool                       # the weights shipped with the package
    image: np.ndarray                      # (H, W, 3) uint8, after any downscale
    image_name: str
    image_sha256: str                      # of the uploaded/sample file bytes
    original_size: tuple[int, int]         # (W, H) before downscaling
    result: InspectionResult
    result_key: str
    labels: LabelMap | None = None
    device: str = "cpu"
    computed_now: bool = False             # this run did the forward (else it came from the cache)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.loaded.meta.classes

    @property
    def palette(self) -> np.ndarray:
        return self.loaded.meta.palette


# ---- clicked points ---------------------------------------------------------------------------
def click_to_pixel(value: dict | None, image_size: tuple[int, int]) -> tuple[int, int] | None:
    """A click value -> image pixel (x, y) clamped to the image, or None when it is no click.

    The attention view's ``pin`` trigger gives image pixels ``{x, y}``; a value that also carries
    the displayed ``width``/``height`` is scaled from displayed to image pixels.
    """
    if not isinstance(value, dict) or "x" not in value or "y" not in value:
        return None
    height, width = image_size
    try:
        shown_w = float(value.get("width") or width)
        shown_h = float(value.get("height") or height)
        x = int(float(value["x"]) * width / shown_w)
        y = int(float(value["y"]) * height / shown_h)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return min(max(x, 0), width - 1), min(max(y, 0), height - 1)


def add_point(points: list[tuple[int, int]], point: tuple[int, int],
              max_points: int = MAX_POINTS) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    """Append ``point`` (a repeat of an existing point is ignored); beyond ``max_points`` the
    oldest is dropped and returned so the UI can say so."""
    point = (int(point[0]), int(point[1]))
    if point in points:
        return list(points), None
    updated = list(points) + [point]
    dropped = updated.pop(0) if len(updated) > max_points else None
    return updated, dropped


def remove_point(points: list[tuple[int, int]], index: int) -> list[tuple[int, int]]:
    return [p for i, p in enumerate(points) if i != index]


def drop_point(state: MutableMapping, point: tuple[int, int]) -> None:
    """A "Remove" button's callback: take ``point`` out of ``state["points"]``.

    Defined here, not in the page script, on purpose: Streamlit keeps every button's metadata
    (callback included) for the whole session, and a callback defined in the script holds that
    run's entire namespace (image, overlays, heatmaps). With one button per clicked point, that
    kept about one run's worth of arrays alive per click.
    """
    state["points"] = [p for p in state.get("points", []) if tuple(p) != tuple(point)]


def apply_click(state: MutableMapping, value: dict | None, image_size: tuple[int, int] | None,
                max_points: int = MAX_POINTS) -> tuple[int, int] | None:
    """What one click (the view's ``pin`` trigger) does to a session's state (``st.session_state``
    or any dict): the one rule the inspector and the tests share.

    Adds the clicked pixel to ``state["points"]``; when the oldest point is dropped, leaves a
    message in ``state["point_notice"]``. Returns the pixel, or None if the value was no click.
    """
    if image_size is None:
        return None
    point = click_to_pixel(value, image_size)
    if point is None:
        return None
    points, dropped = add_point(list(state.get("points", [])), point, max_points)
    state["points"] = points
    if dropped is not None:
        state["point_notice"] = (f"At most {max_points} points are kept: the oldest "
                                 f"({dropped[0]}, {dropped[1]}) was removed.")
    return point


# ---- points per image, in the URL, from a record -------------------------------------------------
def switch_image_points(state: MutableMapping, digest: str) -> None:
    """Make ``state["points"]`` the points of image ``digest``: the outgoing image's points are
    kept under ``state["points_by_image"]`` and come back when that image is chosen again."""
    by_image = state.setdefault("points_by_image", {})
    current = state.get("points_image")
    if current == digest:
        return
    if current is not None:
        by_image[current] = list(state.get("points", []))
    state["points"] = list(by_image.get(digest, []))
    state["points_image"] = digest


def points_to_param(points: list[tuple[int, int]]) -> str:
    """Points as one URL query value: ``"x,y;x,y"`` (short, readable, shareable)."""
    return ";".join(f"{int(x)},{int(y)}" for x, y in points)


def _kept_notice(given: int, kept: int, where: str, max_points: int) -> str | None:
    """What was kept of a source holding more points than the inspector keeps, and why."""
    if given <= kept:
        return None
    return (f"{where} holds {given:,} points; the first {kept} are used (the inspector keeps at most "
            f"{max_points} points per image)")


def read_points_param(text: str, image_size: tuple[int, int],
                      max_points: int = MAX_POINTS) -> tuple[list[tuple[int, int]], str | None]:
    """``points_to_param``'s text back to points inside an image of ``image_size`` (H, W), and a
    notice when it held more than ``max_points``: the first ``max_points`` distinct points are
    kept (a link with 100,000 points keeps its first 8, and says so), the rest is not parsed.

    A hand-edited or stale URL must not break the page: raises ``InputError`` naming what is wrong.
    """
    height, width = image_size
    parts = [p for p in (part.strip() for part in str(text).split(";")) if p]
    points: list[tuple[int, int]] = []
    used = 0
    for part in parts:
        if len(points) == max_points:
            break
        used += 1
        try:
            x, y = (int(v) for v in part.split(","))
        except ValueError:
            raise InputError(f"bad point {part!r} in the URL (expected x,y)") from None
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(f"point ({x}, {y}) in the URL lies outside the {width}x{height} image")
        points, _ = add_point(points, (x, y), max_points)
    return points, _kept_notice(len(parts), len(points), "The URL", max_points) if used < len(parts) else None


def points_from_param(text: str, image_size: tuple[int, int], max_points: int = MAX_POINTS) -> list[tuple[int, int]]:
    """``read_points_param`` without its notice."""
    return read_points_param(text, image_size, max_points)[0]


def points_from_record(data: bytes | str, image_sha256: str, image_size: tuple[int, int],
                       max_points: int = MAX_POINTS) -> list[tuple[int, int]]:
    """The points of a downloaded JSON record, if it is a record of this image (same sha256 and size).

    The record is a stranger's file: ``danet.safety.records`` bounds its size, nesting, values
    and numbers before parsing and checks each field; any problem is one ``InputError`` line.
    """
    return read_points_record(data, image_sha256, image_size, max_points).points


# ---- per-point attention statistics -----------------------------------------------------------
def attention_entropy(row: np.ndarray) -> float:
    """Shannon entropy (bits) of one attention map that sums to 1 (``danet.maps.base.entropy_bits``)."""
    return float(entropy_bits(np.asarray(row).ravel()))


@dataclass(frozen=True)
class PointStats:
    """What the app says about one clicked point's PAM attention map."""

    index: int
    x: int
    y: int
    cell: tuple[int, int]
    class_id: int
    class_name: str
    entropy_bits: float
    entropy_fraction: float        # entropy / log2(N): 1 = uniform over the whole grid
    same_class_share: float        # attention mass on cells predicted as the point's class
    top_class_id: int              # class receiving the most attention mass
    top_class_name: str
    top_class_share: float
    peak_cell: tuple[int, int]     # the most attended cell

    def to_dict(self) -> dict:
        return {"index": self.index + 1, "x": self.x, "y": self.y, "cell": list(self.cell),
                "class_id": self.class_id, "class": self.class_name,
                "entropy_bits": round(self.entropy_bits, 4),
                "entropy_fraction": round(self.entropy_fraction, 4),
                "same_class_share": round(self.same_class_share, 4),
                "top_class": self.top_class_name, "top_class_share": round(self.top_class_share, 4),
                "peak_cell": list(self.peak_cell)}


def point_statistics(result: InspectionResult, points: list[tuple[int, int]], rows: np.ndarray,
                     classes: tuple[str, ...]) -> list[PointStats]:
    """Statistics of each point's attention ``rows`` (P, h, w), judged against the fused prediction."""
    num_classes = len(classes)
    prediction = result.prediction()
    on_grid = grid_labels(prediction, result.grid_size, num_classes)   # majority per cell
    per_class_index = on_grid.ravel()
    max_entropy = np.log2(result.num_positions) if result.num_positions > 1 else 1.0
    stats = []
    for index, ((x, y), row) in enumerate(zip(points, rows)):
        flat = row.ravel().astype(np.float64)
        mass = np.bincount(per_class_index, weights=flat, minlength=num_classes)
        class_id = int(prediction[y, x])
        top = int(mass.argmax())
        entropy = attention_entropy(flat)
        peak = int(flat.argmax())
        stats.append(PointStats(
            index=index, x=int(x), y=int(y), cell=result.pixel_to_cell(x, y),
            class_id=class_id, class_name=classes[class_id] if class_id < num_classes else str(class_id),
            entropy_bits=entropy, entropy_fraction=entropy / max_entropy,
            same_class_share=float(same_class_mass(flat[None], per_class_index, [class_id])[0])
            if class_id < num_classes else 0.0,                     # the one definition (danet.maps.grid)
            top_class_id=top, top_class_name=classes[top], top_class_share=float(mass[top]),
            peak_cell=divmod(peak, result.grid_size[1]),
        ))
    return stats


# ---- label maps -------------------------------------------------------------------------------
@dataclass
class LabelMap:
    labels: np.ndarray                     # (H, W) int64; ignored pixels hold ``ignore_index``
    ignore_index: int
    notices: list[str] = field(default_factory=list)


def prepare_label_map(data: bytes, image_size: tuple[int, int], num_classes: int,
                      ignore_index: int | None, palette: np.ndarray | None = None, *,
                      reader=None) -> LabelMap:
    """Check a label map for an image of ``image_size`` (H, W) with ``danet.data.labels``.

    Datasets without an ignore id use ``FALLBACK_IGNORE`` so stray ids are ignored, not fatal.
    Raises ``LabelMapError`` with a message for the user. ``reader``: ``load_label_map`` or a
    drop-in (``danet.data.isolated.load_label_map_isolated`` decodes uploads in a child).
    """
    ignore = FALLBACK_IGNORE if ignore_index is None else int(ignore_index)
    height, width = image_size
    labels, notices = (reader or load_label_map)(data, (width, height), num_classes, ignore, palette=palette)
    notices = list(notices)
    if (labels == ignore).all():
        notices.append("every pixel of the label map is ignored: no scores can be computed")
    return LabelMap(labels=labels, ignore_index=ignore, notices=notices)


def score_outputs(result: InspectionResult, labels: LabelMap, num_classes: int) -> dict[str, dict]:
    """Per-class IoU, mIoU and pixel accuracy of the fused, PAM and CAM predictions."""
    return {which: scores(confusion_matrix(result.prediction(which), labels.labels, num_classes,
                                           labels.ignore_index))
            for which in result.outputs}


def branch_disagreement(result: InspectionResult) -> dict[str, float]:
    """Share of pixels where the PAM / CAM branch prediction differs from the fused one."""
    fused = result.prediction("fused")
    return {"pam": float((result.prediction("pam") != fused).mean()),
            "cam": float((result.prediction("cam") != fused).mean())}


# ---- the model page ---------------------------------------------------------------------------
def model_facts(described: dict, weights_sha256: str = "", device: str = "") -> dict[str, str]:
    """The model page's table from ``danet.checkpoints.describe``; rows that do not apply to the
    backbone (a ResNet's stem and dilation; timm backbones have neither) are left out, not "None"."""
    d = described
    rows: dict[str, object] = {
        "source": d["source"],
        "weights sha256": weights_sha256 or None,
        "checkpoint layout": layout_label(d["layout"], d.get("layout_title")),
        "container": d.get("container"),
        "backbone": d["backbone"],
        "stem": d.get("stem"),
        "output stride": d["output_stride"],
        "dilation": d.get("dilation"),
        "layer4 dilations": ", ".join(map(str, d["layer4_dilations"])) if d.get("layer4_dilations") else None,
        "head channels (C)": d["head_channels"],
        "PAM query/key channels (d)": d["key_channels"],
        "align_corners": d["align_corners"],
        "classes": d["num_classes"],
        "dataset": dataset_label(d["dataset"], d.get("extra")),
        "mean / std": f"{tuple(round(v, 3) for v in d['mean'])} / {tuple(round(v, 3) for v in d['std'])}",
        "parameters": f"{d['parameters'] / 1e6:.2f} M",
        "PAM alpha (learned)": f"{d['alpha']:.4f}",
        "CAM beta (learned)": f"{d['beta']:.4f}",
        "device": device or None,
    }
    return {name: str(value) for name, value in rows.items() if value is not None}


def dataset_guess(extra: dict | None) -> str | None:
    """"guessed from the class count (19)" when the loader chose the dataset by the class count
    alone (the file names none), else None."""
    source = (extra or {}).get("dataset_from")
    return source[:60] if isinstance(source, str) and source.startswith("guessed from the class count") else None


def dataset_label(name: str, extra: dict | None) -> str:
    """The dataset's name, and where it came from when the file did not say: a 19-class
    checkpoint without labels is shown as "cityscapes (guessed from the class count (19))"."""
    guess = dataset_guess(extra)
    return f"{name} ({guess})" if guess else str(name)


def layout_label(name: str, title: str | None) -> str:
    """"official: junfu1115/DANet ..." but not "danet-lens: danet-lens, this project's ..."."""
    return name if not title else title if title.startswith(name) else f"{name}: {title}"


@dataclass
class RecordedScores:
    """What a set of weights says about its own validation: from the shipped model's card, or
    from the free-form metadata (``extra``) of any other checkpoint. Scores are percentages."""

    miou: float | None = None
    pixel_accuracy: float | None = None
    epoch: int | None = None
    per_class_iou: dict[str, float | None] = field(default_factory=dict)
    training_data: str = ""
    training_command: str = ""
    evaluated_with: str = ""
    history: str = ""
    licence: str = ""

    @property
    def any(self) -> bool:
        return self.miou is not None or self.pixel_accuracy is not None or bool(self.per_class_iou)


def recorded_scores(extra: dict, card=None) -> RecordedScores:
    """``card`` (a ``danet.weights.ModelCard``) wins for the shipped weights; else ``extra``."""
    if card is not None:
        return RecordedScores(card.metrics.get("val_miou"), card.metrics.get("val_pixel_accuracy"),
                              extra.get("epoch"), dict(card.per_class_iou), card.training_data,
                              card.training_command, card.evaluated_with, card.history, card.licence)

    def number(value):
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    per_class = extra.get("val_iou") if isinstance(extra.get("val_iou"), dict) else {}
    epoch = extra.get("epoch")
    return RecordedScores(number(extra.get("val_miou")), number(extra.get("val_pixel_accuracy")),
                          epoch if isinstance(epoch, int) else None,
                          {str(k): number(v) for k, v in per_class.items()},
                          str(extra.get("training_data") or ""), str(extra.get("training_command") or ""),
                          str(extra.get("evaluated_with") or ""), str(extra.get("training_history") or ""),
                          str(extra.get("license") or ""))
