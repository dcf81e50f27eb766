"""The public DANet checkpoint layouts, as data: key prefixes, name maps and defaults.

Every layout is a backbone prefix, a head prefix and a table that renames the head's modules
to ours (``docs/checkpoint-formats.md`` §4 gives each table with its sources). Backbone keys
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

# Our head, module by module (relative to ``head.``). Each public layout renames these.
OUR_HEAD_MODULES = (
    "pam_in_conv.0", "pam_in_conv.1", "cam_in_conv.0", "cam_in_conv.1",
    "pam.query", "pam.key", "pam.value", "pam.alpha", "cam.beta",
    "pam_out_conv.0", "pam_out_conv.1", "cam_out_conv.0", "cam_out_conv.1",
    "pam_classifier.1", "cam_classifier.1", "fused_classifier.1",
)


def _head_map(*foreign: str) -> dict[str, str]:
    """Foreign module names, in the order of ``OUR_HEAD_MODULES``, -> ours."""
    assert len(foreign) == len(OUR_HEAD_MODULES)
    return dict(zip(foreign, OUR_HEAD_MODULES))


@dataclass(frozen=True)
class Layout:
    """One public way of naming DANet's weights, and what its training code implies.

    ``marker`` is a head module (relative to ``head_prefix``) that only this layout has;
    together with ``backbone_prefix`` it identifies the layout. ``dilation`` and
    ``align_corners`` are the defaults of the code that writes such files.
    """

    name: str
    title: str
    backbone_prefix: str
    head_prefix: str
    marker: str
    head_map: dict[str, str]
    dilation: str
    align_corners: bool
    ignored_prefixes: tuple[str, ...] = ()      # whole keys dropped on purpose (fc, aux head)
    optional_head: tuple[str, ...] = ()         # our head modules the layout may omit
    read_meta: Callable[[dict, int], "MetaHints"] | None = None   # what the file's non-tensor entries say

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


OFFICIAL = Layout(
    name="official",
    title="junfu1115/DANet (CASIA-IVA-Lab), e.g. DANet101.pth.tar",
    backbone_prefix="pretrained.", head_prefix="head.", marker="conv5a",
    head_map=_head_map("conv5a.0", "conv5a.1", "conv5c.0", "conv5c.1",
                       "sa.query_conv", "sa.key_conv", "sa.value_conv", "sa.gamma", "sc.gamma",
                       "conv51.0", "conv51.1", "conv52.0", "conv52.1", "conv6.1", "conv7.1", "conv8.1"),
    dilation="4-8-16", align_corners=True,
    ignored_prefixes=("pretrained.fc.",),   # a 2018-era file may still carry the ImageNet fc
)

MMSEG = Layout(
    name="mmseg",
    title="open-mmlab/mmsegmentation DAHead, e.g. danet_r50-d8_512x1024_40k_cityscapes_*.pth",
    backbone_prefix="backbone.", head_prefix="decode_head.", marker="pam_in_conv",
    head_map=_head_map("pam_in_conv.conv", "pam_in_conv.bn", "cam_in_conv.conv", "cam_in_conv.bn",
                       "pam.query_project", "pam.key_project", "pam.value_project", "pam.gamma.scale",
                       "cam.gamma.scale", "pam_out_conv.conv", "pam_out_conv.bn", "cam_out_conv.conv",
                       "cam_out_conv.bn", "pam_conv_seg", "cam_conv_seg", "conv_seg"),
    dilation="2-4-4", align_corners=False,
    ignored_prefixes=("auxiliary_head.", "data_preprocessor."),
    read_meta=read_mmseg_meta,
)

_TRAMAC_HEAD = _head_map("conv_p1.0", "conv_p1.1", "conv_c1.0", "conv_c1.1",
                         "pam.conv_b", "pam.conv_c", "pam.conv_d", "pam.alpha", "cam.beta",
                         "conv_p2.0", "conv_p2.1", "conv_c2.0", "conv_c2.1", "conv_p3.1", "conv_c3.1", "out.1")

TRAMAC = Layout(
    name="tramac",
    title="Tramac/awesome-semantic-segmentation-pytorch, e.g. danet_resnet101_citys.pth",
    backbone_prefix="pretrained.", head_prefix="head.", marker="conv_p1",
    head_map=_TRAMAC_HEAD, dilation="2-4-4", align_corners=True,
    ignored_prefixes=("pretrained.fc.",),
    # trained with --aux off (the script's default) the PAM/CAM-only classifiers are absent
    optional_head=("pam_classifier.1", "cam_classifier.1"),
)

BLOG = Layout(
    name="blog",
    title="the tutorial DANet on a plain torchvision ResNet (keys model.* + head.conv_p1)",
    backbone_prefix="model.", head_prefix="head.", marker="conv_p1",
    head_map=_TRAMAC_HEAD, dilation="1-1-1", align_corners=True,
    ignored_prefixes=("model.fc.",),
)

DANET_LENS = Layout(
    name="danet-lens",
    title="danet-lens, this project's own DANet (.safetensors exports, training last.pt)",
    backbone_prefix="backbone.", head_prefix="head.", marker="pam_in_conv",
    # ``danet train`` trains with align_corners=False; a bare state dict of ours means that
    head_map={m: m for m in OUR_HEAD_MODULES}, dilation="2-4-4", align_corners=False,
)

LAYOUTS: tuple[Layout, ...] = (OFFICIAL, MMSEG, TRAMAC, BLOG, DANET_LENS)
LAYOUTS_BY_NAME = {layout.name: layout for layout in LAYOUTS}

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


def _rename(name: str, table: dict[str, str]) -> str | None:
    """Rename ``name`` by the longest table entry that is it or a module prefix of it."""
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
            return "backbone." + rest if layout is DANET_LENS else None
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
        rest = _rename(key[len("head."):], {v: k for k, v in layout.head_map.items()})
        return layout.head_prefix + (rest or key[len("head."):])
    return key
