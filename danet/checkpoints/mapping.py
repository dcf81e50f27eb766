"""From a loaded checkpoint object to our key names and the architecture they imply.

Steps, each a function: ``unwrap`` (find the state dict inside training wrappers),
``detect_layout`` (which public layout names the keys), ``map_to_ours`` (rename, drop what is
ignorable on purpose, refuse the rest) and ``infer_architecture`` (depth, stem, widths and
class count, read from tensor shapes). Only what shapes cannot tell (dilations, dataset) is
left to the caller.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from danet.models.backbones import RESNET_LAYERS
from danet.errors import CheckpointError
from danet.checkpoints.layouts import Layout, layouts, stem_style, to_foreign, to_ours
from danet.models.heads import get_head

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")   # where training code nests weights
MAX_LISTED = 5




def listed(items, limit: int = MAX_LISTED) -> str:
    """``a, b, c (+4 more)``: the first few offending names for an error message."""
    items = list(items)
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


@dataclass
class Unwrapped:
    state: dict[str, torch.Tensor]
    meta: dict | None            # mmcv/mmseg ``meta`` (CLASSES, PALETTE, config...)
    wrapper: str                 # "bare", "state_dict", "meta+state_dict", "model", ...


def _tensors_only(mapping: Mapping) -> dict[str, torch.Tensor]:
    return {str(k): v for k, v in mapping.items() if isinstance(v, torch.Tensor)}


def unwrap(obj) -> Unwrapped:
    """The state dict inside ``obj`` (bare, ``{'state_dict'}``, ``{'meta','state_dict'}``,
    ``{'model'}``), with any ``module.`` (DataParallel) prefixes removed."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"the file holds a {type(obj).__name__}, not a dict of weights")
    wrapper, meta, state = "bare", None, obj
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and _tensors_only(inner):
            state = inner
            wrapper = key
            if isinstance(obj.get("meta"), Mapping):
                meta, wrapper = dict(obj["meta"]), "meta+" + key
            break
    tensors = _tensors_only(state)
    if not tensors:
        raise CheckpointError(f"no weights found: the file's top-level entries are {listed(sorted(map(str, obj)))}"
                              f" and none of {', '.join(WRAPPER_KEYS)} holds tensors")
    if any(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):] if k.startswith("module.") else k: v for k, v in tensors.items()}
        wrapper += " (module. prefix)"
    return Unwrapped(tensors, meta, wrapper)


def describe_layouts() -> str:
    return "; ".join(f"{l.name}/{l.head} ({l.backbone_prefix}* + {l.head_prefix}{l.marker}.*)" for l in layouts())


def detect_layout(keys) -> Layout:
    """The (source, head) layout whose backbone prefix and head marker both occur in ``keys``."""
    keys = list(keys)
    for layout in layouts():
        marker = layout.head_prefix + layout.marker + "."
        if any(k.startswith(layout.backbone_prefix) for k in keys) and any(k.startswith(marker) for k in keys):
            return layout
    prefixes = Counter(k.split(".")[0] + "." for k in keys)
    heads = sorted({".".join(k.split(".")[:2]) for k in keys if k.split(".")[0] in ("head", "decode_head")})
    raise CheckpointError(
        "this state dict is in no known layout. Top-level key groups: "
        f"{listed(f'{p}* ({n})' for p, n in prefixes.most_common())}"
        + (f"; head modules: {listed(heads)}" if heads else "")
        + f"; first keys: {listed(keys[:MAX_LISTED])}. Known layouts: {describe_layouts()}")


@dataclass
class Mapped:
    """A state dict renamed to our keys, plus what was dropped and why."""

    layout: Layout
    stem_style: str | None
    state: dict[str, torch.Tensor]
    foreign_names: dict[str, str]                      # our key -> the file's key
    ignored: list[str] = field(default_factory=list)   # dropped on purpose (fc, aux head, BN counters)


def map_to_ours(state: dict[str, torch.Tensor], layout: Layout) -> Mapped:
    """Rename every key to ours; keys with no place in our model raise ``CheckpointError``."""
    backbone_keys = [k[len(layout.backbone_prefix):] for k in state if k.startswith(layout.backbone_prefix)]
    style = stem_style(backbone_keys)
    mapped, names, ignored, unknown = {}, {}, [], []
    for key, tensor in state.items():
        if layout.is_ignored(key):
            ignored.append(key)
            continue
        ours = to_ours(layout, style, key)
        if ours is None:
            unknown.append(key)
        else:
            mapped[ours], names[ours] = tensor, key
    if unknown:
        raise CheckpointError(f"{layout.name} layout detected, but {len(unknown)} keys have no place in its {layout.head} head or backbone: "
                              f"{listed(unknown)}")
    return Mapped(layout, style, mapped, names, ignored)


@dataclass(frozen=True)
class Architecture:
    """What the shapes say: enough to build the network, bar dilations."""

    backbone: str              # "resnet50", or a timm name for our own files
    stem: str | None           # "7x7" | "deep32" | "deep64"; None for timm backbones
    num_classes: int
    head: str = "da"
    options: dict = field(default_factory=dict)     # the head's options the shapes determine

    @property
    def head_channels(self) -> int | None:
        return self.options.get("head_channels")

    @property
    def key_channels(self) -> int | None:
        return self.options.get("key_channels")


def _shape(mapped: Mapped, key: str) -> torch.Size:
    if key not in mapped.state:
        raise CheckpointError(f"{mapped.layout.name} layout detected, but "
                              f"{_foreign(mapped, key)} is missing")
    return mapped.state[key].shape


def _foreign(mapped: Mapped, key: str) -> str:
    return mapped.foreign_names.get(key) or to_foreign(mapped.layout, mapped.stem_style, key)


def infer_resnet(mapped: Mapped) -> tuple[str, str]:
    """(``"resnet<depth>"``, stem) from block counts, block type and the stem's first conv."""
    counts = []
    for layer in range(1, 5):
        found = {int(m.group(1)) for k in mapped.state
                 if (m := re.match(rf"backbone\.layer{layer}\.(\d+)\.", k))}
        counts.append(max(found) + 1 if found else 0)
    bottleneck = "backbone.layer1.0.conv3.weight" in mapped.state
    depth = next((d for d, blocks in RESNET_LAYERS.items()
                  if tuple(counts) == blocks and (d >= 50) == bottleneck), None)
    if depth is None:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        raise CheckpointError(f"{mapped.layout.name} layout detected, but its ResNet has {counts} {kind} blocks "
                              f"per layer, which is no ResNet-{'/'.join(map(str, RESNET_LAYERS))}")
    if mapped.stem_style is None:
        raise CheckpointError(f"{mapped.layout.name} layout detected, but no stem was found: expected "
                              f"{mapped.layout.backbone_prefix}conv1.weight, conv1.0.weight or stem.0.weight")
    first = _shape(mapped, "backbone.stem.0.weight")
    if first[-1] == 7:
        stem = "7x7"
    elif first[-1] == 3 and first[0] in (32, 64):
        stem = "deep32" if first[0] == 32 else "deep64"
    else:
        raise CheckpointError(f"{mapped.layout.name} layout detected, but its stem's first conv "
                              f"{_foreign(mapped, 'backbone.stem.0.weight')} has shape {list(first)}; "
                              "expected a 7x7 conv with 64 outputs or a 3x3 conv with 32 or 64")
    return f"resnet{depth}", stem


def infer_architecture(mapped: Mapped, timm_candidates=()) -> Architecture:
    """Backbone, stem, head width, key width and class count from the tensor shapes."""
    if any(k.startswith("backbone.body.") for k in mapped.state):
        backbone, stem = _match_timm(mapped, timm_candidates), None
    else:
        backbone, stem = infer_resnet(mapped)
    options = dict(get_head(mapped.layout.head).options_from_shapes(lambda key: tuple(_shape(mapped, "head." + key))))
    classes = int(options.pop("num_classes"))
    return Architecture(backbone, stem, classes, mapped.layout.head, options)


def _match_timm(mapped: Mapped, candidates) -> str:
    """Our timm backbones leave no name in a bare state dict: try the ones we train."""
    from danet.models.backbones import TimmBackbone

    wanted = {k[len("backbone."):]: tuple(v.shape) for k, v in mapped.state.items() if k.startswith("backbone.")}
    wanted = {k: v for k, v in wanted.items() if not k.endswith("num_batches_tracked")}
    for name in candidates:
        have = {k: tuple(v.shape) for k, v in TimmBackbone(name).state_dict().items()
                if not k.endswith("num_batches_tracked")}
        if have == wanted:
            return name
    raise CheckpointError("this is a danet-lens state dict with a timm backbone that matches none of "
                          f"{', '.join(candidates)}; convert it from a .safetensors export, which names its backbone")
