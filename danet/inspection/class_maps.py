"""Class ids at input size without holding every class's score at input size.

A prediction needs one id per pixel, but ``model(x)`` returns each output's logits upsampled
to the input: (K, H, W) floats, three times. With 3,000 classes a 480x360 frame is 2.07 GB per
output, and ``danet predict`` peaked at 18.6 GB and died under a 4 GB address-space limit
(``DefaultCPUAllocator: can't allocate memory``). Here the head runs at grid resolution and
each output is upsampled a few classes at a time (``chunk`` classes: at most ``CHUNK_BYTES``
of scores at input size), keeping a running maximum and its class. Only classes that can win
some pixel are upsampled (``candidate_classes``: a bilinear score lies between its 2x2 grid
cells' min and max). Bilinear interpolation is per channel, so every chunk's scores are
exactly those of the full upsampling, and a class replaces the running one only when strictly
larger: the ids equal ``argmax`` of the full tensor, first maximum on ties included
(``tests/test_hostile.py`` compares them).

``plan_class_maps`` estimates what that costs for a (config, size) and checks it against what
this process may still allocate (``danet.runtime.memory``: free RAM, ``RLIMIT_AS``, the
cgroup's limit; the least of them), shrinking the chunk down to one class before it refuses
with one ``InputError`` line.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from danet.errors import InputError
from danet.inspection.memory import (
    ALLOCATOR_SLACK,
    available_bytes,
    available_text,
    estimate_forward,
)
from danet.models import DANetConfig

CHUNK_BYTES = 64 << 20
"""Scores at input size held at once per output: 64 MiB is 97 classes of a 480x360 frame."""
HEADROOM = 0.8
"""Share of what the process may still allocate that a plan may use."""
PIXEL_WORK_BYTES = 25
"""Per pixel beside the chunk: running max (4) and class (8), the chunk's max (4) and argmax (8), a mask (1)."""
WRITE_BYTES = 48
"""Per pixel while the masks and overlays are drawn (uint8 RGB images and their float blend)."""
DEFAULT_OUTPUTS = ("fused", "pam", "cam")


@dataclass(frozen=True)
class ClassMapPlan:
    """What predicting one ``height`` x ``width`` image costs, and how many classes a chunk holds."""

    height: int
    width: int
    num_classes: int
    outputs: int
    chunk: int                  # classes upsampled at once
    need: int                   # bytes the process needs on top of the loaded model
    logits: int                 # bytes of the full (O, K, H, W) logits when they are saved, else 0
    available: int


def grid_logits(model, x: torch.Tensor, names: tuple[str, ...] = DEFAULT_OUTPUTS) -> dict[str, torch.Tensor]:
    """``{output: (B, K, h, w) logits}`` at the head's grid resolution: the forward before upsampling."""
    out = model.head(model.backbone(x))
    return dict(out) if isinstance(out, dict) else dict(zip(names, out))


def candidate_classes(logits: torch.Tensor, block: int = 1 << 24) -> torch.Tensor:
    """Indices of the classes that can be the argmax of ``logits`` (1, K, h, w) upsampled anywhere.

    A bilinear score is a convex combination of the (at most) 2x2 grid cells around the pixel,
    so it lies between those cells' min and max. In each 2x2 block, a class whose max is below
    the largest min of any class can win no pixel there; the classes left anywhere are a
    superset of the winners (usually the few classes in the image, not all K).
    """
    x = logits[0]
    num_classes, height, width = x.shape
    kernel = (min(2, height), min(2, width))
    step = max(1, block // max(1, height * width))
    bound = None
    for start in range(0, num_classes, step):                   # pass 1: the largest min per block
        low = -torch.nn.functional.max_pool2d(-x[start:start + step].float(), kernel, stride=1)
        chunk_bound = low.max(0).values
        bound = chunk_bound if bound is None else torch.maximum(bound, chunk_bound)
    keep = []
    for start in range(0, num_classes, step):                   # pass 2: classes whose max reaches it
        high = torch.nn.functional.max_pool2d(x[start:start + step].float(), kernel, stride=1)
        keep.append((high >= bound).flatten(1).any(1))
    chosen = torch.cat(keep).nonzero()[:, 0]
    return chosen if chosen.numel() else torch.arange(num_classes, device=x.device)   # NaN scores: all


def class_map(model, logits: torch.Tensor, size: tuple[int, int], chunk: int) -> np.ndarray:
    """(H, W) int64 class ids of one image's grid logits (1, K, h, w) upsampled to ``size`` (H, W),
    ``chunk`` classes at a time and only the ``candidate_classes``; equal to
    ``model.upsample(logits, size).argmax(1)``, ties to the first class included."""
    candidates = candidate_classes(logits)
    if candidates.numel() < logits.shape[1]:
        logits = logits.index_select(1, candidates)
    count = logits.shape[1]
    chunk = max(1, min(int(chunk), count))
    best = best_class = None
    for start in range(0, count, chunk):
        scores = model.upsample(logits[:, start:start + chunk], size)[0]       # (c, H, W)
        value, index = scores.max(0)                                            # first maximum in the chunk
        del scores
        if best is None:
            best, best_class = value, index
            continue
        better = value > best                                                   # strictly: earlier classes win ties
        best = torch.where(better, value, best)
        best_class = torch.where(better, index + start, best_class)
        del value, index, better
    return candidates[best_class].to("cpu", torch.int64).numpy()


def plan_class_maps(config: DANetConfig, height: int, width: int, *, outputs: int = 3, device: str = "cpu",
                    save_logits: bool = False, logits_bytes: int = 2, chunk_bytes: int = CHUNK_BYTES,
                    what: str = "the image") -> ClassMapPlan:
    """The plan for predicting a ``height`` x ``width`` image with ``config`` (``outputs`` outputs),
    or an ``InputError`` naming what it needs and what limits it when even one class at a time
    does not fit. ``save_logits`` adds the full logits and probabilities (``logits_bytes`` each)."""
    height, width, classes = int(height), int(width), int(config.num_classes)
    pixels = height * width
    device = torch.device(device).type
    slack = ALLOCATOR_SLACK.get(device, 1.2)
    small = estimate_forward(dataclasses.replace(config, num_classes=1), height, width, device)
    grid = outputs * classes * small.positions * 4                         # the grid logits, kept throughout
    forward = small.peak + 2 * grid                                        # + the classifiers' outputs being made
    kept = outputs * pixels * 8                                            # the class maps made so far
    logits = outputs * classes * pixels * (4 + 4 + 2 * logits_bytes) if save_logits else 0

    def need(chunk: int) -> int:
        argmax = grid + kept + chunk * pixels * 4 + PIXEL_WORK_BYTES * pixels
        return int(slack * (max(forward, argmax, grid + kept + pixels * WRITE_BYTES) + logits))

    available = int(HEADROOM * available_bytes(device))
    chunk = max(1, min(classes, chunk_bytes // (4 * pixels)))
    while chunk > 1 and need(chunk) > available:
        chunk = max(1, chunk // 2)
    plan = ClassMapPlan(height, width, classes, outputs, chunk, need(chunk), logits, available)
    if plan.need > available:
        scores = f", {logits / 2**30:.1f} GiB of it the saved logits" if save_logits else ""
        raise InputError(f"{what}: predicting {width}x{height} pixels with {classes:,} classes needs about "
                         f"{plan.need / 2**30:.1f} GiB{scores}, but only "
                         f"{available_text(available_bytes(device), device)}; use a smaller image"
                         + (" or leave out --save-logits" if save_logits else ""))
    return plan


def out_of_memory_line(plan: ClassMapPlan) -> str:
    """One line for an allocation that failed although the plan said it would fit."""
    return (f"ran out of memory predicting {plan.width}x{plan.height} pixels with {plan.num_classes:,} classes "
            f"(planned {plan.need / 2**30:.1f} GiB of {plan.available / 2**30:.1f} GiB); use a smaller image")
