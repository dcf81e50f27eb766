"""``load_model``: one file through one pipeline, each stage visited once.

read (bytes -> tensors + metadata) -> our metadata? -> unwrap -> detect the layout -> map keys
-> infer the architecture from shapes -> resolve what shapes cannot say (dilation, dataset,
align_corners; the layout's ``read_meta`` hook) -> build empty -> load strictly.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from danet.data.palettes import DatasetInfo
from danet.runtime.device import select_device
from danet.errors import CheckpointError
from danet.models import Segmentor, DANetConfig
from danet.models.registry import TIMM_BACKBONES, normalisation
from danet.checkpoints.layouts import DANET_LENS, MetaHints, dilation_name, find_layout
from danet.checkpoints.mapping import Mapped, detect_layout, infer_architecture, map_to_ours, unwrap
from danet.checkpoints.meta import READABLE_FORMATS, OWN_META_KEY, LoadedModel, ModelMeta
from danet.checkpoints.read import RawCheckpoint, read_checkpoint
from danet.checkpoints.resolve import apply_overrides, read_own_meta, resolve_dataset, resolve_dilation
from danet.checkpoints.strict import build_empty, load_strict


def _own_header(raw: RawCheckpoint) -> dict[str, str] | None:
    """Our metadata strings, from a safetensors header or a training checkpoint's dict."""
    if raw.header and raw.header.get("format") in READABLE_FORMATS:
        return raw.header
    if isinstance(raw.obj, Mapping):
        header = raw.obj.get(OWN_META_KEY)
        if isinstance(header, Mapping) and header.get("format") in READABLE_FORMATS \
                and all(isinstance(k, str) and isinstance(v, str) for k, v in header.items()):
            return dict(header)
    return None


def _load_own(raw: RawCheckpoint, header: dict[str, str], dilation, dataset, align_corners) -> tuple[Segmentor, ModelMeta, Mapped]:
    meta = apply_overrides(read_own_meta(header, raw.name), dilation, dataset, align_corners)
    meta.extra = {**meta.extra, "container": "danet-lens safetensors" if raw.header else raw.container}
    if dilation is not None and meta.config.is_resnet:
        meta.extra["dilation"] = dilation_name(meta.config.output_stride, meta.config.multi_grid)
    state = unwrap(raw.obj).state if raw.header is None else raw.obj
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    mapped = Mapped(find_layout("danet-lens", meta.config.head) or DANET_LENS, "stem.N", state, {k: k for k in state})
    try:
        model = build_empty(meta.config)
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError) as error:   # e.g. a timm ViT
        raise CheckpointError(f"{raw.name}: the network its metadata describes cannot be built ({error})") from None
    return model, meta, mapped


def _load_foreign(raw: RawCheckpoint, dilation, dataset, align_corners) -> tuple[Segmentor, ModelMeta, Mapped]:
    unwrapped = unwrap(raw.obj)
    layout = detect_layout(unwrapped.state)
    mapped = map_to_ours(unwrapped.state, layout)
    arch = infer_architecture(mapped, TIMM_BACKBONES)
    is_resnet = arch.stem is not None
    hints = layout.read_meta(unwrapped.meta, arch.num_classes) if layout.read_meta and unwrapped.meta else MetaHints()
    output_stride, multi_grid = resolve_dilation(dilation, layout.dilation)
    if align_corners is not None:
        align, align_from = bool(align_corners), "requested"
    elif hints.align_corners is not None:
        align, align_from = hints.align_corners, "checkpoint meta config"
    else:
        align, align_from = layout.align_corners, f"{layout.name} default"
    da_fields = {k: v for k, v in arch.options.items() if k in ("head_channels", "key_channels", "dropout")}
    other = {k: v for k, v in arch.options.items() if k not in da_fields}
    config = DANetConfig(num_classes=arch.num_classes, backbone=arch.backbone, stem=arch.stem,
                         output_stride=output_stride, multi_grid=multi_grid and is_resnet, head=arch.head,
                         head_options=other, align_corners=align, **da_fields)
    info, dataset_from = resolve_dataset(dataset, arch.num_classes, hints.dataset)
    mean, std = normalisation(arch.backbone)     # mmseg's 0-255 values are ImageNet's, times 255
    extra = {"source_file": raw.name, "container": raw.container, "wrapper": unwrapped.wrapper,
             "stem_keys": mapped.stem_style, "dilation": dilation_name(output_stride, multi_grid and is_resnet),
             "align_corners_from": align_from, "dataset_from": dataset_from,
             "ignored_keys": len(mapped.ignored), **hints.extra}
    meta = ModelMeta(config=config, dataset=info, mean=tuple(mean), std=tuple(std), layout=layout.name, extra=extra)
    return build_empty(config), meta, mapped


def load_model(source: str | Path | bytes, *, dilation: str | None = None, dataset: str | DatasetInfo | None = None,
               align_corners: bool | None = None, device: str = "auto", name: str | None = None) -> LoadedModel:
    """Load a checkpoint of any supported layout, in eval mode on ``device``.

    Prefer ``danet.load``, which also knows the embedded default. ``source`` is a path or the
    file's bytes (``name`` then labels it in messages). Shapes give the architecture;
    ``dilation``, ``align_corners`` and ``dataset`` override the layout's defaults. Raises
    ``CheckpointError`` for anything that is not a loadable checkpoint.
    """
    device = select_device(device)
    raw = read_checkpoint(source, name)
    label = name or (raw.name if isinstance(source, (bytes, bytearray, memoryview)) else str(source))
    header = _own_header(raw)
    if header is not None:
        model, meta, mapped = _load_own(raw, header, dilation, dataset, align_corners)
    else:
        model, meta, mapped = _load_foreign(raw, dilation, dataset, align_corners)
    warnings = load_strict(model, mapped)
    return LoadedModel(model=model.to(device).eval(), meta=meta, source=label, warnings=warnings)
