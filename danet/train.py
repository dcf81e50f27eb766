"""Training loop: CE on fused + PAM + CAM outputs, poly LR, resumable checkpoints, JSON log.

Resume checkpoints are our own ``torch.save`` dicts of tensors, read back with
``weights_only=True``; the best model is exported as ``.safetensors`` with metadata.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints.meta import ModelMeta
from .checkpoints.load import OWN_META_KEY
from .checkpoints.save import save_model
from .data.camvid import IGNORE_INDEX, SegmentationAugment, SegmentationDataset
from .data.palettes import CAMVID
from .device import select_device
from .errors import InputError
from .evaluate import evaluate_model
from .models import DANet, DANetConfig
from .models.registry import normalisation


@dataclass
class TrainConfig:
    data: str
    out: str = "runs/camvid"
    backbone: str = "mobilenetv2_100"
    head_channels: int | None = 128
    output_stride: int = 8
    imagenet: bool = True
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    backbone_lr_scale: float = 0.5
    weight_decay: float = 1e-4
    crop: tuple[int, int] = (288, 384)
    scale: tuple[float, float] = (0.75, 1.5)
    class_weights: str = "sqrt-median"     # none | median | sqrt-median
    aux_weight: float = 0.5                # weight of the PAM and CAM losses
    warmup_steps: int = 50
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    max_steps: int | None = None           # stop early (tests, smoke runs)
    val_every: int = 1
    export: str | None = None              # where the best model's .safetensors goes


def class_weights(dataset: SegmentationDataset, num_classes: int, mode: str) -> torch.Tensor | None:
    """Median-frequency balancing (Eigen & Fergus), or its square root (milder)."""
    if mode == "none":
        return None
    counts = np.zeros(num_classes)
    present = np.zeros(num_classes)
    for _, label in dataset.samples:
        hist = np.bincount(label.ravel(), minlength=num_classes + 1)[:num_classes]
        counts += hist
        present += (hist > 0) * label.size
    freq = counts / np.maximum(present, 1)
    weights = np.median(freq[freq > 0]) / np.maximum(freq, 1e-12)
    weights[freq == 0] = 0
    if mode == "sqrt-median":
        weights = np.sqrt(weights)
    elif mode != "median":
        raise InputError(f"class_weights must be none, median or sqrt-median, got {mode!r}")
    return torch.tensor(weights, dtype=torch.float32)


def seg_loss(outputs, target, weight, aux_weight):
    fused, pam, cam = outputs
    ce = lambda logits: F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX)
    return ce(fused) + aux_weight * (ce(pam) + ce(cam))


def poly_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return (1 - min(step, total - 1) / total) ** 0.9


def build(cfg: TrainConfig) -> DANet:
    config = DANetConfig(num_classes=CAMVID.num_classes, backbone=cfg.backbone,
                         head_channels=cfg.head_channels, output_stride=cfg.output_stride,
                         align_corners=False, stem="7x7" if cfg.backbone.startswith("resnet") else None)
    model = DANet(config)
    if cfg.imagenet and not config.is_resnet:
        from .pretrained import load_imagenet_backbone
        load_imagenet_backbone(model)
    return model


def train(cfg: TrainConfig, log=print) -> dict:
    """Train (or resume from ``out/last.pt``); returns the best validation record."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = select_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    mean, std = normalisation(cfg.backbone)
    dataset = SegmentationDataset(cfg.data, "train", SegmentationAugment(tuple(cfg.crop), tuple(cfg.scale)),
                                  seed=cfg.seed, mean=mean, std=std)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    weight = class_weights(dataset, CAMVID.num_classes, cfg.class_weights)
    weight = weight.to(device) if weight is not None else None
    model = build(cfg).to(device)
    head_params = list(model.head.parameters())
    optimizer = torch.optim.AdamW([
        {"params": model.backbone.parameters(), "lr": cfg.lr * cfg.backbone_lr_scale},
        {"params": head_params, "lr": cfg.lr},
    ], weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    total = cfg.epochs * len(loader)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    step, epoch, best = 0, 0, {"miou": -1.0}
    last = out / "last.pt"
    if last.exists():
        state = torch.load(last, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch = int(state["step"]), int(state["epoch"])
        best = json.loads(state["best"])
        torch.set_rng_state(state["torch_rng"])
        dataset.rng.seed(cfg.seed + epoch)
        log(f"resumed from {last} at epoch {epoch}, step {step}")

    history = out / "log.jsonl"
    while epoch < cfg.epochs and step < total:
        model.train()
        started, losses = time.time(), []
        for images, labels in loader:
            if step >= total:
                break
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * poly_lr(step, total, cfg.warmup_steps)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                loss = seg_loss(model(images), labels, weight, cfg.aux_weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            step += 1
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"loss became {losses[-1]} at step {step}")
        epoch += 1
        record = {"epoch": epoch, "step": step, "loss": float(np.mean(losses)) if losses else None,
                  "seconds": round(time.time() - started, 1),
                  "alpha": float(model.head.pam.alpha.detach()), "beta": float(model.head.cam.beta.detach())}
        if epoch % cfg.val_every == 0 or epoch == cfg.epochs or step >= total:
            model.eval()
            result = evaluate_model(model, cfg.data, "val", device=device, mean=mean, std=std)
            record.update(val_miou=result["miou"], val_pixel_accuracy=result["pixel_accuracy"],
                          val_iou=[None if np.isnan(v) else round(float(v), 4) for v in result["iou"]])
            if result["miou"] > best["miou"]:
                best = {"miou": result["miou"], "epoch": epoch, "step": step,
                        "pixel_accuracy": result["pixel_accuracy"], "iou": record["val_iou"]}
                export_best(model, cfg, best, out)
        log(json.dumps(record))
        with history.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        # the metadata makes last.pt load through danet.load with the config it was trained with
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "epoch": epoch, "best": json.dumps(best), "torch_rng": torch.get_rng_state(),
                    OWN_META_KEY: run_meta(model, cfg).to_strings()},
                   out / "last.tmp")
        (out / "last.tmp").replace(last)
    return best


def run_meta(model: DANet, cfg: TrainConfig, **extra) -> ModelMeta:
    """What a run's checkpoints say about themselves: config, labels, normalisation."""
    mean, std = normalisation(cfg.backbone)
    return ModelMeta(config=model.config, dataset=CAMVID, mean=mean, std=std, layout="danet-lens", extra=extra)


def export_best(model: DANet, cfg: TrainConfig, best: dict, out: Path) -> Path:
    """Write the best model as fp16 ``.safetensors`` with its measured accuracy."""
    meta = run_meta(model, cfg, **{
        "val_miou": round(best["miou"] * 100, 2),
        "val_pixel_accuracy": round(best["pixel_accuracy"] * 100, 2),
        "val_iou": dict(zip(CAMVID.classes, [None if v is None else round(v * 100, 2) for v in best["iou"]])),
        "epoch": best["epoch"], "step": best["step"],
        "training": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()
                     if k not in ("data", "out", "export", "device", "threads")},
        "training_data": "CamVid train split (367 frames, SegNet 11-class version)",
        "input_size": [360, 480],
        "license": "Weights trained on CamVid: research and personal use only (CC BY-NC 4.0), "
                   "inheriting the dataset's non-commercial terms.",
    })
    path = Path(cfg.export) if cfg.export else out / "best.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_model(model, meta, tmp, dtype=torch.float16)
    tmp.replace(path)
    return path
