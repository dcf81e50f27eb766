"""``danet predict``: colour masks and overlays of the fused, PAM and CAM outputs for many images.

Resumable: each image's outputs go to ``OUT/<name>/`` and its ``prediction.json`` is written last,
recording the image and model hashes; a rerun skips every image whose record matches and whose
files are all present. Consecutive images of one size are batched through ``model`` itself
(``--batch-size``); on the CPU batch 1 is the default, as batching measured no faster there (the
convolutions already use every core) while memory grows with the batch.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

OUTPUTS = ("fused", "pam", "cam")
RECORD = "prediction.json"


def expected_files(save_logits: bool) -> list[str]:
    names = [f"{which}_{kind}.png" for which in OUTPUTS for kind in ("mask", "overlay")]
    return names + (["logits.npz"] if save_logits else []) + [RECORD]


def is_complete(folder: Path, image_sha: str, model_sha: str, logits_dtype: str | None) -> bool:
    """True when an earlier run left every output of this image, for this image and model
    (and logits of the requested dtype, when ``logits_dtype`` is set)."""
    from ..batch import read_json

    record = read_json(folder / RECORD)
    if not record or record.get("image_sha256") != image_sha or record.get("model_sha256") != model_sha:
        return False
    save_logits = logits_dtype is not None
    if save_logits and record.get("logits_dtype") != logits_dtype:
        return False
    return all((folder / name).is_file() for name in expected_files(save_logits))


def write_outputs(folder: Path, image: np.ndarray, logits: np.ndarray, palette: np.ndarray,
                  opacity: float, logits_dtype: str | None, record: dict) -> None:
    """Masks, overlays (and logits) of one image; the record last, as the completion mark.

    ``logits`` is (3, K, H, W) in the order fused, PAM, CAM; with ``logits_dtype`` ("float16" or
    "float32") they are saved, with their softmax probabilities, in ``logits.npz``.
    """
    import torch

    from ..batch import save_json, save_npz, save_png
    from ..viz import colorize, mask_overlay

    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECORD).unlink(missing_ok=True)          # the old record must not vouch for new files
    predictions = logits.argmax(1)
    for which, prediction in zip(OUTPUTS, predictions):
        save_png(folder / f"{which}_mask.png", colorize(prediction, palette))
        save_png(folder / f"{which}_overlay.png", mask_overlay(image, prediction, palette, opacity))
    if logits_dtype is not None:
        probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
        save_npz(folder / "logits.npz", logits=logits.astype(logits_dtype),
                 probabilities=probabilities.astype(logits_dtype), outputs=np.array(OUTPUTS))
        record["logits_dtype"] = logits_dtype
    counts = [np.bincount(p.ravel(), minlength=len(palette)) / p.size for p in predictions]
    record["class_fractions"] = {which: [round(float(v), 6) for v in c] for which, c in zip(OUTPUTS, counts)}
    save_json(folder / RECORD, record)


def batches(items: list, size: int):
    """Consecutive runs of ``items`` with the same image shape, at most ``size`` long."""
    run: list = []
    for item in items:
        if run and (len(run) == size or run[0]["image"].shape != item["image"].shape):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def predict(
    inputs: List[Path] = typer.Argument(..., metavar="IMAGES_OR_DIRS...", help="image files and/or folders"),
    out: Path = typer.Option(..., "--out", help="output folder (one sub-folder per image)"),
    checkpoint: Optional[Path] = typer.Option(None, help="checkpoint file; default: the embedded model"),
    dilation: Optional[str] = typer.Option(
        None, help="layer4 dilation (2-4-4, multi-grid, os16, ...) for checkpoints that do not record it"),
    dataset: Optional[str] = typer.Option(None, help="label set (e.g. camvid), for checkpoints without one"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    batch_size: Optional[int] = typer.Option(
        None, min=1, help="images of one size per forward pass; default 1 on the CPU (no gain measured), "
                          "8 on a GPU"),
    save_logits: bool = typer.Option(False, help="also write logits.npz (logits and probabilities)"),
    logits_dtype: str = typer.Option("float16", help="float16 (23 MB per 480x360 CamVid frame) or float32"),
    opacity: float = typer.Option(0.5, min=0.0, max=1.0, help="mask opacity in the overlays"),
    recursive: bool = typer.Option(False, help="also look in sub-folders"),
    force: bool = typer.Option(False, help="redo images that already have all their outputs"),
):
    """Colour masks and overlays of the fused, PAM and CAM predictions; resumable."""
    import torch
    from tqdm import tqdm

    from ..batch import (BatchInputError, collect_images, describe_model, file_sha256, load_model,
                         one_line, output_names, prepare_output_dir, save_json, save_png)
    from ..data.images import ImageLoadError, load_image
    from ..inspection import to_tensor
    from ..viz import legend

    def fail(message: str):
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1)

    if logits_dtype not in ("float16", "float32"):
        fail(f"--logits-dtype must be float16 or float32, not {logits_dtype!r}")
    wanted_dtype = logits_dtype if save_logits else None
    try:
        images = collect_images(inputs, recursive)
        loaded = load_model(checkpoint, device, dilation, dataset, warn=_warn)
        prepare_output_dir(out)
    except BatchInputError as error:
        fail(one_line(error))
    meta, model = loaded.meta, loaded.model
    model_info = describe_model(loaded)
    palette = meta.palette
    save_png(out / "legend.png", legend(meta.classes, palette))

    names = output_names(images)
    pending, skipped, failed = [], [], []
    for path, name in zip(images, names):
        try:
            sha = file_sha256(path)
        except OSError as error:
            failed.append((path, one_line(error)))
            continue
        if not force and is_complete(out / name, sha, model_info["sha256"], wanted_dtype):
            skipped.append(name)
        else:
            pending.append({"path": path, "name": name, "sha": sha})

    device_obj = next(model.parameters()).device
    if batch_size is None:
        batch_size = 8 if device_obj.type == "cuda" else 1
    done = []
    with tqdm(total=len(pending), desc="predict", unit="image") as bar:
        # Decode lazily, one batch at a time, so memory stays bounded for long lists.
        def decoded():
            for item in pending:
                try:
                    picture = load_image(item["path"])
                except (ImageLoadError, OSError) as error:
                    failed.append((item["path"], one_line(error)))
                    bar.update(1)
                    continue
                yield {**item, "image": picture.array, "notices": picture.notices,
                       "original_size": picture.original_size}

        for group in batches(decoded(), batch_size):
            x = torch.cat([to_tensor(item["image"], meta.mean, meta.std) for item in group]).to(device_obj)
            start = time.perf_counter()
            with torch.inference_mode():
                fused, pam, cam = model(x)
            logits = torch.stack([fused, pam, cam], 1).float().cpu().numpy()   # (B, 3, K, H, W)
            seconds = (time.perf_counter() - start) / len(group)
            for item, image_logits in zip(group, logits):
                height, width = item["image"].shape[:2]
                record = {"image": str(item["path"]), "image_sha256": item["sha"],
                          "model_sha256": model_info["sha256"], "model_source": model_info["source"],
                          "size": [width, height], "original_size": list(item["original_size"]),
                          "notices": item["notices"], "classes": list(meta.classes),
                          "forward_seconds": round(seconds, 4), "batch": len(group)}
                write_outputs(out / item["name"], item["image"], image_logits, palette, opacity,
                              wanted_dtype, record)
                done.append(item["name"])
                bar.update(1)

    save_json(out / "manifest.json", {
        "model": model_info, "device": str(device_obj), "save_logits": save_logits, "opacity": opacity,
        "images": {name: str(path) for path, name in zip(images, names)},
        "processed": done, "skipped": skipped, "failed": {str(p): m for p, m in failed}})
    typer.echo(f"{len(done)} predicted, {len(skipped)} already done, {len(failed)} failed -> {out}")
    if failed:
        listing = "; ".join(m if p.name in m else f"{p.name}: {m}" for p, m in failed[:3])
        listing += " ..." if len(failed) > 3 else ""
        fail(f"{len(failed)} of {len(images)} images could not be read ({listing})")


def _warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def register(app: typer.Typer) -> None:
    app.command()(predict)
