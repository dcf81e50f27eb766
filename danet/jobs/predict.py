"""Batch prediction: colour masks and overlays of the fused, PAM and CAM outputs for many images.

``predict_images`` is what ``danet predict`` runs. It is resumable: each image's folder gets a
``prediction.json`` written last (after every other file is fsynced in place), naming the image's
sha256 and every setting that changes an output (``output_settings``: model sha256 and resolved
config, opacity, size limits, package version; the logits dtype when logits are asked for). An
image whose record matches and whose files are all present is skipped; one whose settings differ
is redone and the summary says how many and why. The output folder is locked for the run
(``danet.safety.outputs.output_lock``) and every per-image folder is a real folder directly inside it. Consecutive images of one size are batched through
the model (``batch_size``); on the CPU batch 1 is the default, as batching measured no faster
there (the convolutions already use every core) while memory grows with the batch.

Under ``torchrun`` each process predicts its share of the images (``danet.runtime.distributed.shard``),
so each image is written once, by one rank; rank 0 gathers the reports and writes the one
``manifest.json`` and the legend. Every rank returns the merged report.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from danet.runtime import distributed
from danet.errors import DanetError, one_line
from danet.jobs.inputs import collect_images, describe_model, output_names
from danet.safety.outputs import OutputBusyError, OutputError, child_folder, output_lock, prepare_output_dir, read_json, save_json, save_npz, save_png
from danet.safety.paths import file_sha256
from danet.checkpoints.meta import LoadedModel
from danet.data.images import DEFAULT_MAX_PIXELS, MIN_SIDE, ImageLoadError, load_image
from danet.errors import InputError
from danet.inspection import to_tensor
from danet.render.overlays import colorize, legend, mask_overlay

OUTPUTS = ("fused", "pam", "cam")      # DANet's; a model's own come from ``model.outputs``
RECORD = "prediction.json"
LOGITS_DTYPES = ("float16", "float32")


@dataclass
class PredictReport:
    """What one run did: output names processed now, already complete, and files that failed."""

    out: Path
    images: list[Path]
    device: str
    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    redone: dict[str, str] = field(default_factory=dict)     # output name -> why it was redone

    def summary(self) -> str:
        line = f"{len(self.processed)} predicted, {len(self.skipped)} already done, {len(self.failed)} failed -> {self.out}"
        return line + ("\n" + self.redo_line() if self.redone else "")

    def redo_line(self) -> str:
        """``redid 3 of 10 images: --opacity changed`` (reasons with counts when they differ)."""
        counts: dict[str, int] = {}
        for reason in self.redone.values():
            counts[reason] = counts.get(reason, 0) + 1
        reasons = (next(iter(counts)) if len(counts) == 1 else
                   "; ".join(f"{reason} ({count})" for reason, count in counts.items()))
        return f"redid {len(self.redone)} of {len(self.images)} images: {reasons}"

    def failure(self) -> str | None:
        """One line naming the unreadable images (the first three), or None when there were none."""
        if not self.failed:
            return None
        listing = "; ".join(m if p.name in m else f"{p.name}: {m}" for p, m in self.failed[:3])
        listing += " ..." if len(self.failed) > 3 else ""
        return f"{len(self.failed)} of {len(self.images)} images could not be read ({listing})"


def expected_files(save_logits: bool, outputs: tuple[str, ...] = OUTPUTS) -> list[str]:
    names = [f"{which}_{kind}.png" for which in outputs for kind in ("mask", "overlay")]
    return names + (["logits.npz"] if save_logits else []) + [RECORD]


def output_settings(loaded: LoadedModel, model_sha: str, opacity: float) -> dict:
    """Every setting besides the image that changes an output: a rerun redoes images whose
    record holds other values (the logits dtype is compared separately, only when asked for)."""
    from danet import __version__  # at call time: the package finishes importing first

    meta = loaded.meta
    return {"model_sha256": model_sha, "config": meta.config.to_dict(), "dataset": meta.dataset.name,
            "classes": list(meta.classes), "mean": [float(v) for v in meta.mean],
            "std": [float(v) for v in meta.std], "opacity": float(opacity),
            "max_pixels": DEFAULT_MAX_PIXELS, "min_side": MIN_SIDE, "version": __version__}


_CONFIG_REASONS = {"output_stride": "--dilation changed", "multi_grid": "--dilation changed",
                   "align_corners": "--align-corners changed"}
_SETTING_REASONS = {"model_sha256": "the model file changed", "dataset": "--dataset changed",
                    "classes": "the model's classes changed", "mean": "the model's normalisation changed",
                    "std": "the model's normalisation changed", "opacity": "--opacity changed",
                    "max_pixels": "the image size limits changed", "min_side": "the image size limits changed"}


def _differences(old: dict, new: dict) -> list[str]:
    reasons: list[str] = []
    for key, value in new.items():
        if old.get(key) == value:
            continue
        if key == "config":
            before = old.get("config") if isinstance(old.get("config"), dict) else {}
            for name, setting in value.items():
                if before.get(name) != setting:
                    reasons.append(_CONFIG_REASONS.get(name, f"the model's {name} changed"))
        elif key == "version":
            reasons.append(f"danet-lens {old.get('version')} made it, this is {value}")
        else:
            reasons.append(_SETTING_REASONS.get(key, f"{key} changed"))
    return list(dict.fromkeys(reasons))


def redo_reason(folder: Path, image_sha: str, settings: dict, logits_dtype: str | None) -> str | None:
    """Why the outputs in ``folder`` cannot be reused (None: they can, or there are none yet to redo:
    see ``is_new``). ``logits_dtype`` is the dtype asked for, or None when no logits are."""
    record = read_json(folder / RECORD)
    if not record:
        return "an earlier run did not finish"
    reasons = []
    if record.get("image_sha256") != image_sha:
        reasons.append("the image changed")
    if not isinstance(record.get("settings"), dict):
        reasons.append("an older danet-lens made it")
    else:
        reasons += _differences(record["settings"], settings)
    if logits_dtype is not None and record.get("logits_dtype") != logits_dtype:
        reasons.append("--logits-dtype changed" if record.get("logits_dtype") else "--save-logits asked for logits")
    if not reasons and not all((folder / name).is_file() for name in expected_files(
            logits_dtype is not None, tuple(record.get("class_fractions") or OUTPUTS))):
        reasons.append("outputs were missing")
    return " and ".join(reasons) or None


def is_new(folder: Path) -> bool:
    """No earlier run wrote anything for this image (its folder is absent or empty)."""
    try:
        return not folder.is_dir() or folder.is_symlink() or not any(folder.iterdir())
    except OSError:
        return True


def write_outputs(folder: Path, image: np.ndarray, logits: np.ndarray, palette: np.ndarray,
                  opacity: float, logits_dtype: str | None, record: dict, outputs: tuple[str, ...] = OUTPUTS) -> None:
    """Masks, overlays (and logits) of one image; the record last, as the completion mark.

    ``logits`` is (O, K, H, W) in the order of ``outputs`` (the model's, main first); with ``logits_dtype`` ("float16" or
    "float32") they are saved, with their softmax probabilities, in ``logits.npz``.
    """
    try:
        (folder / RECORD).unlink(missing_ok=True)      # the old record must not vouch for new files
    except OSError as error:
        raise OutputError(f"cannot replace {folder / RECORD}: {one_line(error)}") from None
    predictions = logits.argmax(1)
    for which, prediction in zip(outputs, predictions):
        save_png(folder / f"{which}_mask.png", colorize(prediction, palette))
        save_png(folder / f"{which}_overlay.png", mask_overlay(image, prediction, palette, opacity))
    if logits_dtype is not None:
        probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
        save_npz(folder / "logits.npz", logits=logits.astype(logits_dtype),
                 probabilities=probabilities.astype(logits_dtype), outputs=np.array(outputs))
        record["logits_dtype"] = logits_dtype
    counts = [np.bincount(p.ravel(), minlength=len(palette)) / p.size for p in predictions]
    record["class_fractions"] = {which: [round(float(v), 6) for v in c] for which, c in zip(outputs, counts)}
    save_json(folder / RECORD, record)


def batches(items: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Consecutive runs of ``items`` with the same image shape, at most ``size`` long."""
    run: list = []
    for item in items:
        if run and (len(run) == size or run[0]["image"].shape != item["image"].shape):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def predict_images(loaded: LoadedModel, images: list[str | Path], out: str | Path, *, recursive: bool = False,
                   batch_size: int | None = None, save_logits: bool = False, logits_dtype: str = "float16",
                   opacity: float = 0.5, force: bool = False, progress: bool = False,
                   shard: bool | None = None) -> PredictReport:
    """Predict every image in ``images`` (files and/or folders) into ``out/<name>/``.

    Unreadable images are listed in the report (and ``out/manifest.json``) while the rest are
    processed; bad arguments (no images, ``out`` a file, an unknown ``logits_dtype``) raise
    ``InputError`` before any work. ``shard`` (default: inside a process group of several ranks)
    splits the images across ranks; every rank must then call this with the same arguments.
    """
    if logits_dtype not in LOGITS_DTYPES:
        raise InputError(f"logits dtype must be float16 or float32, not {logits_dtype!r}")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch size must be at least 1, not {batch_size}")
    files = collect_images(images, recursive)
    out = prepare_output_dir(out)
    sharded = distributed.is_active() if shard is None else shard and distributed.is_active()
    main = distributed.is_main() or not sharded
    with _run_lock(out, sharded, main):
        return _predict_locked(loaded, files, out, batch_size=batch_size, save_logits=save_logits,
                               logits_dtype=logits_dtype, opacity=opacity, force=force, progress=progress,
                               sharded=sharded, main=main)


class _run_lock:
    """``output_lock`` taken by one process of the run (rank 0 under torchrun; its outcome is
    shared so every rank stops when the folder is busy)."""

    def __init__(self, out: Path, sharded: bool, main: bool):
        self.out, self.sharded, self.main, self.held = out, sharded, main, None

    def __enter__(self):
        error = None
        if self.main:
            held = output_lock(self.out)
            try:
                held.__enter__()
                self.held = held
            except OutputError as exc:
                error = str(exc)
        if self.sharded:
            error = distributed.broadcast(error)
        if error is not None:
            raise OutputBusyError(error) if "in use by another danet run" in error else OutputError(error)
        return self

    def __exit__(self, *exc_info):
        if self.sharded and exc_info[0] is None:
            distributed.barrier()                 # rank 0 keeps the lock until every rank is done
        if self.held is not None:
            self.held.__exit__(*exc_info)
        return False


def _predict_locked(loaded: LoadedModel, files: list[Path], out: Path, *, batch_size, save_logits, logits_dtype,
                    opacity, force, progress, sharded, main) -> PredictReport:
    wanted_dtype = logits_dtype if save_logits else None
    meta, model = loaded.meta, loaded.model
    model_info = describe_model(loaded)
    settings = output_settings(loaded, model_info["sha256"], opacity)
    palette = meta.palette
    if main:
        save_png(out / "legend.png", legend(meta.classes, palette))

    device = next(model.parameters()).device
    report = PredictReport(out=out, images=files, device=str(device))
    names = output_names(files)                       # from the whole list: the same on every rank
    mine = list(zip(files, names))
    mine = distributed.shard(mine) if sharded else mine
    pending = []
    for path, name in mine:
        try:
            sha = file_sha256(path)               # refuses a FIFO or device swapped in since the listing
        except (OSError, DanetError) as error:
            report.failed.append((path, one_line(error)))
            continue
        folder = out / name
        reason = "--force" if force else redo_reason(folder, sha, settings, wanted_dtype)
        if reason is None:
            report.skipped.append(name)
            continue
        if not is_new(folder):
            report.redone[name] = reason
        pending.append({"path": path, "name": name, "sha": sha})

    batch_size = batch_size or (8 if device.type == "cuda" else 1)
    with tqdm(total=len(pending), desc="predict", unit="image", disable=not progress or not main) as bar:
        # Decode lazily, one batch at a time, so memory stays bounded for long lists.
        def decoded():
            for item in pending:
                try:
                    picture = load_image(item["path"])
                except (ImageLoadError, OSError) as error:
                    report.failed.append((item["path"], one_line(error)))
                    bar.update(1)
                    continue
                yield {**item, "image": picture.array, "notices": picture.notices,
                       "original_size": picture.original_size}

        for group in batches(decoded(), batch_size):
            x = torch.cat([to_tensor(item["image"], meta.mean, meta.std) for item in group]).to(device)
            start = time.perf_counter()
            with torch.inference_mode():
                outputs = model(x)
            logits = torch.stack(list(outputs.values()), 1).float().cpu().numpy()   # (B, O, K, H, W)
            seconds = (time.perf_counter() - start) / len(group)
            for item, image_logits in zip(group, logits):
                height, width = item["image"].shape[:2]
                record = {"image": str(item["path"]), "image_sha256": item["sha"], "settings": settings,
                          "model_sha256": model_info["sha256"], "model_source": model_info["source"],
                          "size": [width, height], "original_size": list(item["original_size"]),
                          "notices": item["notices"], "classes": list(meta.classes),
                          "forward_seconds": round(seconds, 4), "batch": len(group)}
                if sharded:
                    record["rank"] = distributed.rank()
                write_outputs(child_folder(out, item["name"]), item["image"], image_logits, palette, opacity,
                              wanted_dtype, record, tuple(outputs))
                report.processed.append(item["name"])
                bar.update(1)

    if sharded:
        report = merge_reports(report, distributed.all_gather(report), names)
    if not main:
        return report
    save_json(out / "manifest.json", {
        "model": model_info, "device": report.device, "save_logits": save_logits, "opacity": opacity,
        "settings": settings, "logits_dtype": wanted_dtype,
        "images": {name: str(path) for path, name in zip(files, names)},
        "processed": report.processed, "skipped": report.skipped, "redone": report.redone,
        "failed": {str(p): m for p, m in report.failed}})
    return report


def merge_reports(own: PredictReport, reports: list[PredictReport], names: list[str]) -> PredictReport:
    """The ranks' reports as one, in the order of the image list (each image is in one report)."""
    order = {name: i for i, name in enumerate(names)}
    position = {path: i for i, path in enumerate(own.images)}
    processed = sorted((n for r in reports for n in r.processed), key=order.__getitem__)
    skipped = sorted((n for r in reports for n in r.skipped), key=order.__getitem__)
    failed = sorted((f for r in reports for f in r.failed), key=lambda f: position.get(f[0], len(position)))
    redone = {n: why for r in reports for n, why in getattr(r, "redone", {}).items()}
    redone = {n: redone[n] for n in sorted(redone, key=order.__getitem__)}
    return PredictReport(out=own.out, images=own.images, device=",".join(dict.fromkeys(r.device for r in reports)),
                         processed=processed, skipped=skipped, failed=failed, redone=redone)
