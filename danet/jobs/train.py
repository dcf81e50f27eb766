"""Training loop: CE on fused + PAM + CAM outputs, poly LR, resumable checkpoints, JSON log.

Resume checkpoints are our own ``torch.save`` dicts of tensors, read back with
``weights_only=True``; the best model is exported as ``.safetensors`` with metadata.

Under ``torchrun`` the same loop runs data-parallel (``docs/distributed.md``): DDP averages the
gradients, a ``DistributedSampler`` gives each process its share of every epoch's permutation,
validation is sharded and its confusion matrices summed, and rank 0 alone logs and writes files.
``batch_size`` is per process and the learning rate is not scaled, so N processes with batch b
train as one process with batch N*b at the same ``lr``.
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

from danet.checkpoints.meta import ModelMeta
from danet.checkpoints.meta import OWN_META_KEY
from danet.checkpoints.save import save_model
from danet.data.camvid import IGNORE_INDEX, SegmentationAugment, SegmentationDataset
from danet.data.palettes import CAMVID
from danet.runtime import distributed
from danet.analysis.common import check_seed
from danet.errors import CheckpointError, InputError
from danet.safety.paths import regular_file
from danet.jobs.evaluate import evaluate_model
from danet.models import Segmentor, DANetConfig
from danet.models.registry import normalisation


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
    dropout: float = 0.1                   # before each classifier (DANetConfig.dropout)
    freeze_bn: bool = False                # BatchNorm keeps its running statistics (small batches)
    sync_bn: bool = False                  # SyncBatchNorm across processes (CUDA, torchrun only)
    init: str | None = None                # start from this checkpoint's weights (same architecture)
    init_parts: str = "all"                # all | backbone (a new head on a trained backbone)
    freeze_backbone: bool = False          # train the head only; the backbone stays as initialised
    key_channels: int | None = None        # PAM query/key width d; None: head_channels // 8
    attention_lr_scale: float = 1.0        # alpha and beta learn at lr * this, without weight decay
    ohem_thresh: float | None = None       # online hard example mining: keep pixels whose true-class
    ohem_min_kept: int = 100_000           # probability < thresh, and at least min_kept per batch
    command: str = ""                      # the command line that started the run (for the card)


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


def hard_pixels(logits: torch.Tensor, target: torch.Tensor, thresh: float, min_kept: int) -> torch.Tensor:
    """Online hard example mining (Shrivastava et al. 2016, as mmseg's ``OHEMPixelSampler``): a
    mask of the labelled pixels whose predicted probability of their true class is below
    ``thresh``, widened to the ``min_kept`` least confident when fewer are that hard. Thin classes
    (Pole, Pedestrian) are the pixels a converged model still gets wrong, so the loss spends its
    weight there instead of on the sky and road it already knows."""
    with torch.no_grad():
        valid = target != IGNORE_INDEX
        prob = torch.softmax(logits.float(), dim=1)
        safe = torch.where(valid, target, torch.zeros_like(target))
        true_prob = prob.gather(1, safe.unsqueeze(1)).squeeze(1)
        true_prob = torch.where(valid, true_prob, torch.full_like(true_prob, float("inf")))
        count = int(valid.sum())
        if count == 0:
            return valid
        cutoff = true_prob.flatten().kthvalue(min(count, max(min_kept, 1))).values
        return valid & ((true_prob < thresh) | (true_prob <= cutoff))


def seg_loss(outputs, target, weight, aux_weight, ohem_thresh: float | None = None, ohem_min_kept: int = 100_000):
    """Cross-entropy on the main output plus ``aux_weight`` times that of each other output (DANet:
    fused, then the PAM and CAM branch outputs, as the paper trains it); with ``ohem_thresh`` each output's loss is the weighted mean over
    its own hard pixels (``hard_pixels``)."""
    main, *auxiliary = outputs.values() if isinstance(outputs, dict) else outputs

    def ce(logits):
        if ohem_thresh is None:
            return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX)
        kept = torch.where(hard_pixels(logits, target, ohem_thresh, ohem_min_kept), target, IGNORE_INDEX)
        if not bool((kept != IGNORE_INDEX).any()):
            return logits.float().sum() * 0.0
        return F.cross_entropy(logits.float(), kept, weight=weight, ignore_index=IGNORE_INDEX)

    return ce(main) + aux_weight * sum(ce(logits) for logits in auxiliary)


def poly_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return (1 - min(step, total - 1) / total) ** 0.9


def build(cfg: TrainConfig) -> Segmentor:
    config = DANetConfig(num_classes=CAMVID.num_classes, backbone=cfg.backbone,
                         head_channels=cfg.head_channels, key_channels=cfg.key_channels,
                         output_stride=cfg.output_stride, align_corners=False,
                         stem="7x7" if cfg.backbone.startswith("resnet") else None, dropout=cfg.dropout)
    model = Segmentor(config)
    if cfg.init:
        initialise_from(model, cfg.init, parts=cfg.init_parts)
    elif cfg.imagenet and not config.is_resnet:
        from danet.models.pretrained import load_imagenet_backbone
        load_imagenet_backbone(model)
    return model


def initialise_from(model: Segmentor, source: str, parts: str = "all") -> None:
    """Copy the weights of ``source`` (any layout ``danet.load`` reads) into ``model``: fine-tuning
    a trained model (``parts="all"``: backbone, widths and classes must agree), or a new head on
    its trained backbone (``"backbone"``: the head keeps its fresh initialisation, alpha = beta = 0,
    and may be of another width). The run's own settings (dropout, schedule, crops) stay the run's."""
    from danet.loader import load
    if parts not in ("all", "backbone"):
        raise InputError(f"--init-parts must be all or backbone, got {parts!r}")
    loaded = load(source, device="cpu")
    mine, theirs = model.config, loaded.model.config
    target, copied = (model.backbone, loaded.model.backbone) if parts == "backbone" else (model, loaded.model)
    for field in ("backbone", "output_stride") + (("num_classes",) if parts == "all" else ()):
        if getattr(mine, field) != getattr(theirs, field):
            raise InputError(f"--init {source}: its {field} is {getattr(theirs, field)!r}, "
                             f"this run's is {getattr(mine, field)!r}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in copied.state_dict().items()}
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as error:      # widths differ: name the first mismatch
        detail = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        raise InputError(f"--init {source} does not fit this run's architecture: {detail}") from None


def param_groups(model: Segmentor, cfg: TrainConfig) -> list[dict]:
    """Backbone at ``lr * backbone_lr_scale``; head at ``lr``; the two attention gains (alpha,
    beta) in a group of their own at ``lr * attention_lr_scale`` and without weight decay, which
    would otherwise pull the scalars that switch attention on back towards zero."""
    gains = [model.head.get_parameter(term.gain) for term in model.head.terms]
    ids = {id(p) for p in gains}
    head = [p for p in model.head.parameters() if id(p) not in ids]
    groups = [{"params": head, "lr": cfg.lr},
              {"params": gains, "lr": cfg.lr * cfg.attention_lr_scale, "weight_decay": 0.0}]
    if cfg.freeze_backbone:
        return groups
    return [{"params": list(model.backbone.parameters()), "lr": cfg.lr * cfg.backbone_lr_scale}] + groups


class EpochSeeded(torch.utils.data.Dataset):
    """A ``SegmentationDataset`` whose item ``i`` in epoch ``e`` is augmented with a generator
    seeded by (seed, e, i): the crops then depend neither on how many processes share the data
    nor on the order they are read in, and a resumed run sees the same ones."""

    def __init__(self, base: SegmentationDataset, seed: int):
        self.base, self.seed, self.epoch = base, seed, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        self.base.rng.seed(f"{self.seed}-{self.epoch}-{index}")
        return self.base[index]


def set_train_mode(model: torch.nn.Module, freeze_bn: bool, freeze_backbone: bool = False) -> None:
    """``model.train()``; with ``freeze_bn`` every BatchNorm stays in eval mode (running statistics
    used and kept), the usual choice when per-process batches are too small for batch statistics;
    with ``freeze_backbone`` the whole backbone does (it is not trained, so its statistics stay)."""
    model.train()
    if freeze_backbone:
        getattr(model, "module", model).backbone.eval()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def train(cfg: TrainConfig, log=print) -> dict:
    """Train (or resume from ``out/last.pt``); returns the best validation record.

    Launched by ``torchrun`` with more than one process it joins the process group and trains
    with DistributedDataParallel; ``log`` is then called on rank 0 only.
    """
    with distributed.process_group(cfg.device) as ctx:
        return _train(cfg, ctx, distributed.main_only(log))


def _train(cfg: TrainConfig, ctx: distributed.Context, log) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.sync_bn and cfg.freeze_bn:
        raise InputError("--sync-bn and --freeze-bn exclude each other: frozen BatchNorm has no statistics to sync")
    device = ctx.device
    if cfg.sync_bn and device.type != "cuda":
        raise InputError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm syncs GPU tensors only "
                         "(on the CPU use --freeze-bn or larger per-process batches)")
    if cfg.init:                     # a FIFO or /dev/zero link is refused before the dataset is read
        regular_file(cfg.init, "a checkpoint", CheckpointError)
    check_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    mean, std = normalisation(cfg.backbone)
    dataset = SegmentationDataset(cfg.data, "train", SegmentationAugment(tuple(cfg.crop), tuple(cfg.scale)),
                                  seed=cfg.seed, mean=mean, std=std)
    seeded = EpochSeeded(dataset, cfg.seed)
    # One sampler for one process and many: the epoch's permutation depends on (seed, epoch) only,
    # and rank r reads positions r, r + N, ... of it, so N processes with batch b read, step by
    # step, the same images as one process with batch N*b.
    sampler = torch.utils.data.DistributedSampler(seeded, num_replicas=ctx.world_size, rank=ctx.rank,
                                                  shuffle=True, seed=cfg.seed, drop_last=True)
    loader = torch.utils.data.DataLoader(seeded, batch_size=cfg.batch_size, sampler=sampler, drop_last=True)
    if len(loader) == 0:
        raise InputError(f"{len(dataset)} training images are too few for batch size {cfg.batch_size} "
                         f"on {ctx.world_size} process(es)")
    weight = class_weights(dataset, CAMVID.num_classes, cfg.class_weights)
    weight = weight.to(device) if weight is not None else None
    model = build(cfg).to(device)
    if cfg.freeze_backbone:
        model.backbone.requires_grad_(False)      # no gradients computed, none applied
    optimizer = torch.optim.AdamW(param_groups(model, cfg), weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    total = cfg.epochs * len(loader)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    log(f"{ctx.world_size} process(es) on {device.type}: batch {cfg.batch_size} per process, effective batch "
        f"{cfg.batch_size * ctx.world_size}; lr {cfg.lr:g} head, {cfg.lr * cfg.backbone_lr_scale:g} backbone "
        f"(not scaled with the number of processes); {len(loader)} steps per epoch")

    step, epoch, best = 0, 0, {"miou": -1.0}
    last = out / "last.pt"
    # rank 0 reads the checkpoint and hands it to the others: only its --out needs to be readable
    state = None
    if ctx.is_main and last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)
    state = distributed.broadcast(state)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch = int(state["step"]), int(state["epoch"])
        best = json.loads(state["best"])
        torch.set_rng_state(state["torch_rng"])
        log(f"resumed from {last} at epoch {epoch}, step {step}")
        del state
    if ctx.distributed:
        torch.manual_seed(cfg.seed + 1000 * epoch + ctx.rank)     # own dropout masks per process
    net = model                                                   # the plain module: saving, evaluating
    if ctx.distributed:
        if cfg.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            net = model
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    history = out / "log.jsonl"
    while epoch < cfg.epochs and step < total:
        set_train_mode(model, cfg.freeze_bn, cfg.freeze_backbone)
        sampler.set_epoch(epoch)
        seeded.epoch = epoch
        started, losses = time.time(), []
        for images, labels in loader:
            if step >= total:
                break
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * poly_lr(step, total, cfg.warmup_steps)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                loss = seg_loss(model(images), labels, weight, cfg.aux_weight, cfg.ohem_thresh, cfg.ohem_min_kept)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            # the mean over processes is the loss of the global batch (when the batches hold as many
            # labelled pixels), and every rank sees the same value, so all stop together on NaN
            losses.append(float(distributed.mean_over_ranks(loss.detach().float())))
            step += 1
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"loss became {losses[-1]} at step {step}")
        epoch += 1
        record = {"epoch": epoch, "step": step, "loss": float(np.mean(losses)) if losses else None,
                  "seconds": round(time.time() - started, 1),
                  **{term.gain_title or term.name: gain for term, gain in zip(net.head.terms, net.head.gains().values())}}
        if epoch % cfg.val_every == 0 or epoch == cfg.epochs or step >= total:
            net.eval()
            # sharded over the processes; the summed confusion matrix gives every rank the same scores
            result = evaluate_model(net, cfg.data, "val", device=device, mean=mean, std=std)
            record.update(val_miou=result["miou"], val_pixel_accuracy=result["pixel_accuracy"],
                          val_iou=[None if np.isnan(v) else round(float(v), 4) for v in result["iou"]])
            if result["miou"] > best["miou"]:
                best = {"miou": result["miou"], "epoch": epoch, "step": step,
                        "pixel_accuracy": result["pixel_accuracy"], "iou": record["val_iou"]}
                if ctx.is_main:
                    export_best(net, cfg, best, out, processes=ctx.world_size,
                                history=val_history(history) + [(epoch, result["miou"])])
        log(json.dumps(record))
        if ctx.is_main:
            with history.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            # the metadata makes last.pt load through danet.load with the config it was trained with
            torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "epoch": epoch, "best": json.dumps(best), "torch_rng": torch.get_rng_state(),
                        OWN_META_KEY: run_meta(net, cfg).to_strings()},
                       out / "last.tmp")
            (out / "last.tmp").replace(last)
        distributed.barrier()        # no rank runs ahead of the checkpoint it could be resumed from
    return best


def run_meta(model: Segmentor, cfg: TrainConfig, **extra) -> ModelMeta:
    """What a run's checkpoints say about themselves: config, labels, normalisation."""
    mean, std = normalisation(cfg.backbone)
    return ModelMeta(config=model.config, dataset=CAMVID, mean=mean, std=std, layout="danet-lens", extra=extra)


def val_history(log: Path) -> list[tuple[int, float]]:
    """(epoch, val mIoU) of the epochs a run's ``log.jsonl`` records so far."""
    if not log.exists():
        return []
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [(r["epoch"], r["val_miou"]) for r in records if r.get("val_miou") is not None]


def export_best(model: Segmentor, cfg: TrainConfig, best: dict, out: Path, processes: int = 1,
                history: list[tuple[int, float]] = ()) -> Path:
    """Write the best model as fp16 ``.safetensors`` with its measured accuracy, the command that
    trained it and its val curve (the card's rows)."""
    card = {}
    if cfg.command:
        card["training_command"] = cfg.command
    if history:
        card["training_history"] = ", ".join(f"{epoch}: {100 * miou:.1f}" for epoch, miou in history)
    meta = run_meta(model, cfg, **card, val_miou=round(best["miou"] * 100, 2), val_pixel_accuracy=round(best["pixel_accuracy"] * 100, 2), val_iou=dict(zip(CAMVID.classes, [None if v is None else round(v * 100, 2) for v in best["iou"]])), epoch=best["epoch"], step=best["step"], training={k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()
                     if k not in ("data", "out", "export", "device", "threads", "init", "command")}
                    | ({"init": Path(cfg.init).name} if cfg.init else {})
                    | {"processes": processes, "effective_batch_size": cfg.batch_size * processes}, training_data="CamVid train split (367 frames, SegNet 11-class version)", input_size=[360, 480], license="Weights trained on CamVid: research and personal use only (CC BY-NC 4.0), "
                   "inheriting the dataset's non-commercial terms.")
    path = Path(cfg.export) if cfg.export else out / "best.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_model(model, meta, tmp, dtype=torch.float16)
    tmp.replace(path)
    return path
