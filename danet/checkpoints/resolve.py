"""Choosing what a file cannot say, and checking what it does say before anything is built.

Given the architecture the shapes imply, the layout's hints and the caller's options, this
stage settles the dataset (classes, palette), the dilation pattern and ``align_corners``, and
validates our own metadata (as untrusted as the weights) against sane bounds.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from danet.models.heads import list_heads
from danet.data.palettes import DatasetInfo, dataset_for_classes, get_dataset
from danet.errors import CheckpointError, UnknownNameError
from danet.models import DANetConfig
from danet.models.backbones import RESNET_LAYERS, STEMS
from danet.checkpoints.layouts import parse_dilation
from danet.checkpoints.meta import ModelMeta
from danet.checkpoints.read import MAX_DIM, MAX_JSON_DEPTH, bounded_json, json_depth

MAX_CLASSES = 10_000
"""Above any real label set (ADE20K-full has 3,688) and checked before a model is built: each
class costs 12 bytes per pixel of logits in a forward (3 maps, fp32), and a palette entry and a
legend row in the app."""
MAX_CLASS_NAME = 200        # characters; a class name is a legend label
MAX_META_VALUE_BYTES = 4 << 20     # one metadata string (10,000 class names fit in ~2 MB)
JSON_KEYS = ("config", "classes", "palette", "ignore_index", "mean", "std", "extra")   # parsed as JSON


def check_class_count(num_classes: int, name: str = "the checkpoint") -> None:
    """Refuse a classifier wider than ``MAX_CLASSES`` before anything is built for it."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise CheckpointError(f"{name} declares {num_classes:,} classes; danet-lens accepts 1 to {MAX_CLASSES:,} "
                              "(each class costs 12 bytes of logits per pixel in a forward)")


def resolve_dataset(requested, num_classes: int, from_meta: DatasetInfo | None = None) -> tuple[DatasetInfo, str]:
    """The label set to show, and where it came from; a requested one must fit the classifier."""
    check_class_count(num_classes)
    if requested is not None:
        if isinstance(requested, DatasetInfo):
            dataset = requested
        else:
            try:
                dataset = get_dataset(str(requested))
            except UnknownNameError as error:
                raise CheckpointError(str(error)) from None
        if dataset.num_classes != num_classes:
            raise CheckpointError(f"dataset {dataset.name!r} has {dataset.num_classes} classes, but the checkpoint's "
                                  f"classifier predicts {num_classes}")
        return dataset, "requested"
    if from_meta is not None:
        return from_meta, "checkpoint meta"
    return dataset_for_classes(num_classes), f"guessed from the class count ({num_classes})"


def resolve_dilation(value: str | None, default: str) -> tuple[int, bool]:
    try:
        return parse_dilation(value or default)
    except ValueError as error:
        raise CheckpointError(str(error)) from None


def _whole(value, low: int = 1, high: int = MAX_DIM) -> bool:
    return type(value) is int and low <= value <= high


def _config_problem(config: DANetConfig) -> str | None:
    """What makes a config read from metadata unbuildable, or None.

    Metadata is as untrusted as the weights: a timm name like ``hf-hub:x/y`` or ``local-dir:/p``
    would make timm fetch or read files, a huge class count would allocate a palette, and wrong
    types fail deep inside torch (or only later, in the forward).
    """
    backbone = config.backbone
    if not isinstance(backbone, str):
        return f"backbone {backbone!r}"
    if config.is_resnet:
        if int(backbone[6:]) not in RESNET_LAYERS:
            return f"backbone {backbone!r} (ResNet depths: {sorted(RESNET_LAYERS)})"
    else:
        import timm

        if ":" in backbone or "/" in backbone or not timm.is_model(backbone):
            return f"backbone {backbone!r} (not a timm architecture name)"
    if not _whole(config.num_classes, high=MAX_CLASSES):
        return f"num_classes {config.num_classes!r}"
    if not isinstance(config.head, str) or config.head not in list_heads():
        return f"head {str(config.head)[:40]!r} (known heads: {', '.join(list_heads())})"
    for key, value in config.head_options:
        if not isinstance(key, str) or not (value is None or type(value) in (bool, int, float, str)) \
                or (isinstance(value, str) and len(value) > 200):
            return f"head option {str(key)[:40]!r}"
    for name in ("head_channels", "key_channels"):
        if getattr(config, name) is not None and not _whole(getattr(config, name)):
            return f"{name} {getattr(config, name)!r}"
    if config.output_stride not in (8, 16, 32) or type(config.output_stride) is not int:
        return f"output_stride {config.output_stride!r}"
    if config.is_resnet and config.stem not in STEMS:
        return f"stem {config.stem!r}"
    for name in ("multi_grid", "align_corners"):
        if not isinstance(getattr(config, name), bool):
            return f"{name} {getattr(config, name)!r}"
    if type(config.dropout) not in (int, float) or not 0 <= config.dropout <= 1:
        return f"dropout {config.dropout!r}"
    return None


def _meta_problem(meta: ModelMeta) -> str | None:
    """Labels and normalisation the app can use: one name and colour per class, 3 mean/std values."""
    classes, palette = meta.dataset.classes, meta.dataset.palette
    if len(classes) != meta.config.num_classes or not all(isinstance(c, str) for c in classes):
        return f"{len(classes)} class names for {meta.config.num_classes} classes"
    if any(len(c) > MAX_CLASS_NAME for c in classes):
        return f"a class name longer than {MAX_CLASS_NAME} characters"
    if len(palette) != len(classes) or not all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in palette):
        return "a palette that is not one RGB colour (0-255) per class"
    ignore = meta.dataset.ignore_index
    if ignore is not None and type(ignore) is not int:
        return f"ignore_index {ignore!r}"
    for name in ("mean", "std"):
        values = getattr(meta, name)
        if len(values) != 3 or not all(type(v) in (int, float) and abs(v) < 1e300 and np.isfinite(v) for v in values):
            return f"{name} is not three finite numbers ({str(list(values))[:60]})"
    if not all(v > 0 for v in meta.std):
        return f"std {list(meta.std)!r}"
    if not isinstance(meta.extra, dict):
        return "extra is not a mapping"
    return None


def _check_strings(header: dict[str, str]) -> None:
    """Every value ``from_strings`` parses as JSON: bounded size and nesting (``ValueError`` if not)."""
    for key in JSON_KEYS:
        value = header.get(key)
        if isinstance(value, str):
            if len(value) > MAX_META_VALUE_BYTES:
                raise ValueError(f"{key} is {len(value):,} characters, more than the {MAX_META_VALUE_BYTES:,} allowed")
            if json_depth(value) > MAX_JSON_DEPTH:
                raise ValueError(f"{key} nests more than {MAX_JSON_DEPTH} levels deep")


def read_own_meta(header: dict[str, str], name: str) -> ModelMeta:
    def refuse(reason) -> CheckpointError:
        return CheckpointError(f"{name} has danet-lens metadata that cannot be read ({reason})")

    try:   # the config is checked before from_strings, which builds a palette per class
        _check_strings(header)
        problem = _config_problem(DANetConfig.from_dict(bounded_json(header["config"], "config")))
        if problem is None:
            meta = ModelMeta.from_strings(header)
            problem = _meta_problem(meta)
    except (KeyError, ValueError, TypeError, AttributeError, OverflowError, RecursionError) as error:
        raise refuse(str(error).splitlines()[0][:200] if str(error) else type(error).__name__) from None
    if problem is not None:
        raise refuse(problem)
    return meta


def apply_overrides(meta: ModelMeta, dilation, dataset, align_corners) -> ModelMeta:
    """Our own file's config with the caller's dilation / align_corners / dataset applied."""
    config = meta.config
    if dilation is not None:
        output_stride, multi_grid = resolve_dilation(dilation, "")
        config = dataclasses.replace(config, output_stride=output_stride, multi_grid=multi_grid and config.is_resnet)
    if align_corners is not None:
        config = dataclasses.replace(config, align_corners=bool(align_corners))
    if dataset is not None:
        meta.dataset, _ = resolve_dataset(dataset, config.num_classes)
    meta.config = config
    return meta
