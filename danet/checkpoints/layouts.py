"""The public checkpoint layouts, as data: key prefixes, name maps and defaults.

A layout is a public *source* (a code base: its backbone and head prefixes, dilation and
``align_corners`` defaults, ignored keys, ``meta`` reader) combined with how that source names one
head's modules, which the head itself states (``AttentionHead.keys``; DANet's tables are in
``danet/models/heads/da.py``, ``docs/checkpoint-formats.md`` §4 gives each with its sources).
A head registered later brings its own tables: ``layouts()`` reads the registry each time. Backbone keys
keep their torchvision names (``layerX.Y.convZ``...) everywhere; only the stem is spelled three
ways, which ``STEM_STYLES`` maps to our ``stem.N`` Sequential. What differs beyond names (mmseg's
``meta`` with classes, palette and config text) is a per-layout hook, ``read_meta``, in the
manner of timm's per-model checkpoint filters. Nothing here touches tensors.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from danet.data.palettes import DATASETS, DatasetInfo, generic_dataset
from danet.models.heads import get_head, list_heads
from danet.models.heads.da import MODULES as DA_MODULES

@dataclass(frozen=True)
class Layout:
    """One public way of naming DANet's weights, and what its training code implies.

    ``marker`` is a head module (relative to ``head_prefix``) that only this layout has;
    ``head_map`` renames the source's head modules to ours (None: the source uses our names);
    together with ``backbone_prefix`` it identifies the layout. ``dilation`` and
    ``align_corners`` are the defaults of the code that writes such files.
    """

    name: str
    title: str
    backbone_prefix: str
    head_prefix: str
    marker: str
    head_map: dict[str, str] | None
    dilation: str
    align_corners: bool
    ignored_prefixes: tuple[str, ...] = ()      # whole keys dropped on purpose (fc, aux head)
    optional_head: tuple[str, ...] = ()         # our head modules the layout may omit
    read_meta: Callable[[dict, int], "MetaHints"] | None = None   # what the file's non-tensor entries say
    head: str = "da"                            # the registered head whose tables these are

    def is_ignored(self, key: str) -> bool:
        return key.endswith("num_batches_tracked") or key.startswith(self.ignored_prefixes)


@dataclass(frozen=True)
class MetaHints:
    """What a layout's non-tensor ``meta`` says about labels and upsampling (None: nothing)."""

    dataset: DatasetInfo | None = None
    align_corners: bool | None = None
    extra: dict = field(default_factory=dict)


def _palette(value, count: int):
    try:
        array = np.asarray(value, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        return None
    if array.shape != (count, 3) or array.min() < 0 or array.max() > 255:
        return None
    return tuple(tuple(int(v) for v in row) for row in array)


def _mmseg_dataset(meta: dict, num_classes: int) -> DatasetInfo | None:
    """mmseg writes CLASSES/PALETTE (0.x) or dataset_meta.classes/palette (1.x) into ``meta``."""
    inner = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    classes = meta.get("CLASSES") or inner.get("classes")
    if not isinstance(classes, (list, tuple)) or len(classes) != num_classes:
        return None
    if not all(isinstance(c, str) and len(c) <= 200 for c in classes):
        return None
    names = tuple(c.strip() for c in classes)
    for known in DATASETS.values():
        if known.classes == names:
            return known
    palette = _palette(meta.get("PALETTE") or inner.get("palette"), num_classes)
    return DatasetInfo("checkpoint", names, palette or generic_dataset(num_classes).palette, 255)


def _mmseg_align_corners(meta: dict) -> bool | None:
    """mmseg stores its config as text; the 769x769 Cityscapes configs say align_corners=True."""
    for key in ("config", "cfg"):
        text = meta.get(key)
        if isinstance(text, str):
            values = set(re.findall(r"align_corners\s*=\s*(True|False)", text[:1_000_000]))
            if len(values) == 1:
                return values.pop() == "True"
    return None


def read_mmseg_meta(meta: dict, num_classes: int) -> MetaHints:
    version = meta.get("mmseg_version")
    extra = {"mmseg_version": version[:40]} if isinstance(version, str) and version else {}
    return MetaHints(_mmseg_dataset(meta, num_classes), _mmseg_align_corners(meta), extra)


@dataclass(frozen=True)
class Source:
    """One public code base that writes checkpoints, whatever head it trained."""

    name: str
    title: str
    backbone_prefix: str
    head_prefix: str
    dilation: str
    align_corners: bool
    ignored_prefixes: tuple[str, ...] = ()
    read_meta: Callable[[dict, int], MetaHints] | None = None


SOURCES: dict[str, Source] = {source.name: source for source in (
    Source("official", "junfu1115/DANet (CASIA-IVA-Lab), e.g. DANet101.pth.tar", "pretrained.", "head.",
           "4-8-16", True, ("pretrained.fc.",)),   # a 2018-era file may still carry the ImageNet fc
    Source("mmseg", "open-mmlab/mmsegmentation, e.g. danet_r50-d8_512x1024_40k_cityscapes_*.pth", "backbone.",
           "decode_head.", "2-4-4", False, ("auxiliary_head.", "data_preprocessor."), read_mmseg_meta),
    Source("tramac", "Tramac/awesome-semantic-segmentation-pytorch, e.g. danet_resnet101_citys.pth", "pretrained.",
           "head.", "2-4-4", True, ("pretrained.fc.",)),
    Source("blog", "the tutorial DANet on a plain torchvision ResNet (keys model.* + head.conv_p1)", "model.",
           "head.", "1-1-1", True, ("model.fc.",)),
    # ``danet train`` trains with align_corners=False; a bare state dict of ours means that
    Source("danet-lens", "danet-lens, this project's own models (.safetensors exports, training last.pt)",
           "backbone.", "head.", "2-4-4", False),
)}


def layout_of(source: Source, head) -> Layout:
    """``source`` naming the modules of ``head`` (a registered head class)."""
    keys = head.keys[source.name]
    return Layout(name=source.name, title=source.title, backbone_prefix=source.backbone_prefix,
                  head_prefix=source.head_prefix, marker=keys.marker, head_map=keys.table, dilation=source.dilation,
                  align_corners=source.align_corners, ignored_prefixes=source.ignored_prefixes,
                  optional_head=keys.optional, read_meta=source.read_meta, head=head.name)


def layouts() -> tuple[Layout, ...]:
    """Every (source, head) pair a registered head states, DANet's first."""
    heads = [get_head(name) for name in ["da"] + [n for n in list_heads() if n != "da"]]
    return tuple(layout_of(source, head) for head in heads for name, source in SOURCES.items()
                 if name in head.keys)


def find_layout(name: str, head: str = "da") -> Layout | None:
    """The layout of source ``name`` for ``head``, if that head states one."""
    return next((layout for layout in layouts() if layout.name == name and layout.head == head), None)


# DANet's layouts, by name (the 0.2 API and the docs' tables).
LAYOUTS: tuple[Layout, ...] = tuple(layout for layout in layouts() if layout.head == "da")
LAYOUTS_BY_NAME = {layout.name: layout for layout in LAYOUTS}
OFFICIAL, MMSEG, TRAMAC, BLOG, DANET_LENS = (LAYOUTS_BY_NAME[name] for name in SOURCES)
OUR_HEAD_MODULES = DA_MODULES

# How the stem is spelled (relative to the backbone prefix) -> our ``stem.N``.
STEM_STYLES: dict[str, dict[str, str]] = {
    # torchvision / official --no-deepstem / blog: one 7x7 conv + BN
    "conv1+bn1": {"conv1": "stem.0", "bn1": "stem.1"},
    # PyTorch-Encoding "s" and Tramac v1s: three convs in conv1, the third's BN outside
    "conv1.N+bn1": {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4",
                    "conv1.6": "stem.6", "bn1": "stem.7"},
    # mmseg ResNetV1c and ours: one Sequential already called stem
    "stem.N": {f"stem.{i}": f"stem.{i}" for i in (0, 1, 3, 4, 6, 7)},
}

# Dilation patterns a user may ask for: name -> (output stride, multi-grid).
# Layer4's dilations per block: 2-4-4 / 4-8-16 at stride 8, 1-2-2 / 2-4-8 at 16, none at 32.
DILATIONS: dict[str, tuple[int, bool]] = {
    "2-4-4": (8, False), "4-8-16": (8, True), "1-2-2": (16, False), "2-4-8": (16, True),
    "1-1-1": (32, False),
}
DILATION_ALIASES = {"multi-grid": "4-8-16", "multigrid": "4-8-16", "os8": "2-4-4", "os16": "1-2-2",
                    "os16-multi-grid": "2-4-8", "os32": "1-1-1", "none": "1-1-1"}


def dilation_name(output_stride: int, multi_grid: bool) -> str:
    for name, value in DILATIONS.items():
        if value == (output_stride, multi_grid):
            return name
    return f"os{output_stride}"


def parse_dilation(value: str) -> tuple[int, bool]:
    """``"2-4-4"``, ``"multi-grid"``, ``"os16"``... -> (output stride, multi-grid)."""
    key = value.strip().lower().replace("_", "-").replace(",", "-").replace(" ", "")
    key = DILATION_ALIASES.get(key, key)
    if key not in DILATIONS:
        known = ", ".join(list(DILATIONS) + list(DILATION_ALIASES))
        raise ValueError(f"unknown dilation {value!r}; use one of: {known}")
    return DILATIONS[key]


def _rename(name: str, table: dict[str, str] | None) -> str | None:
    """Rename ``name`` by the longest table entry that is it or a module prefix of it (None: as is)."""
    if table is None:
        return name
    best = None
    for old in table:
        if (name == old or name.startswith(old + ".")) and (best is None or len(old) > len(best)):
            best = old
    return None if best is None else table[best] + name[len(best):]


def stem_style(backbone_keys: list[str]) -> str | None:
    """Which ``STEM_STYLES`` entry names these (prefix-free) backbone keys, if any."""
    keys = set(backbone_keys)
    if "stem.0.weight" in keys:
        return "stem.N"
    if "conv1.0.weight" in keys:
        return "conv1.N+bn1"
    if "conv1.weight" in keys:
        return "conv1+bn1"
    return None


def to_ours(layout: Layout, style: str | None, key: str) -> str | None:
    """Our name for a foreign key, or None when it has no place in our model."""
    if key.startswith(layout.backbone_prefix):
        rest = key[len(layout.backbone_prefix):]
        if rest.startswith("layer"):
            return "backbone." + rest
        if rest.startswith("body."):          # our timm backbones
            return "backbone." + rest if layout.name == "danet-lens" else None
        mapped = _rename(rest, STEM_STYLES[style]) if style else None
        return None if mapped is None else "backbone." + mapped
    if key.startswith(layout.head_prefix):
        mapped = _rename(key[len(layout.head_prefix):], layout.head_map)
        return None if mapped is None else "head." + mapped
    return None


def to_foreign(layout: Layout, style: str | None, key: str) -> str:
    """The name ``layout`` gives our ``key`` (for messages); ``key`` itself if unknown."""
    if key.startswith("backbone."):
        rest = key[len("backbone."):]
        if not rest.startswith(("layer", "body.")) and style:
            rest = _rename(rest, {v: k for k, v in STEM_STYLES[style].items()}) or rest
        return layout.backbone_prefix + rest
    if key.startswith("head."):
        table = None if layout.head_map is None else {v: k for k, v in layout.head_map.items()}
        rest = _rename(key[len("head."):], table)
        return layout.head_prefix + (rest or key[len("head."):])
    return key
