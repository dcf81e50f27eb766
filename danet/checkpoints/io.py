"""Reading any DANet checkpoint safely, building the model it describes, and converting it.

Files are untrusted. They are read with ``safetensors`` or ``torch.load(weights_only=True)``
only; the format is decided from the first bytes, never from the name alone. The only
non-tensor objects allowed in a pickle besides torch's defaults are numpy scalars/arrays
(training scripts store e.g. ``best_pred`` as ``numpy.float64``), whose rebuilding runs no code.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import pickle
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes

from ..data.palettes import DATASETS, DatasetInfo, dataset_for_classes, generic_dataset, get_dataset
from ..inspect import select_device
from ..models import IMAGENET_MEAN, IMAGENET_STD, DANet, DANetConfig
from ..models.backbones import RESNET_LAYERS, STEMS
from .detect import (CheckpointError, Mapped, infer_architecture, listed, map_to_ours, unwrap,
                     detect_layout)
from .layouts import DANET_LENS, LAYOUTS_BY_NAME, Layout, dilation_name, parse_dilation, to_foreign
from .metadata import METADATA_FORMAT, LoadedModel, ModelMeta
from .safetensors_io import save_model

# Our timm backbones, tried in turn for a bare danet-lens state dict (e.g. a run's last.pt).
TIMM_CANDIDATES = ("mobilenetv2_100", "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
MAX_CLASSES = 100_000       # far above any label set; bounds what metadata can make us allocate


# ---- reading bytes -----------------------------------------------------------------------
@dataclass
class RawCheckpoint:
    """What a file holds before any interpretation."""

    obj: object                   # the unpickled object, or a dict of tensors for safetensors
    header: dict[str, str] | None  # safetensors ``__metadata__``
    container: str                # "safetensors" | "torch zip" | "torch legacy pickle"
    name: str


def _numpy_globals() -> list:
    """numpy scalar/array/dtype rebuilders: plain data, allowed next to torch's own types."""
    core = getattr(np, "_core", None) or np.core
    multiarray = core.multiarray
    allowed = [multiarray.scalar, np.dtype, multiarray._reconstruct, np.ndarray,
               (multiarray.scalar, "numpy.core.multiarray.scalar"),
               (multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += list({type(np.dtype(c)) for c in "?bhilqBHILQefdFD"})
    return allowed


def _safe_globals():
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(_numpy_globals())
    return contextlib.nullcontext()


def _sniff(head: bytes, size: int) -> str:
    if head.startswith(b"PK\x03\x04"):
        return "torch zip"
    if head[:1] == b"\x80":
        return "torch legacy pickle"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 8 + header_len <= size and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def _not_a_checkpoint(name: str, head: bytes, safetensors_name: bool) -> CheckpointError:
    if safetensors_name:
        return CheckpointError(f"{name} is not a valid safetensors file: its header (the first 8 bytes give the "
                               "header length, then JSON) is missing or corrupt")
    try:
        text = head.decode("utf-8")
        kind = f"it looks like a text file (starts with {text[:40]!r})"
    except UnicodeDecodeError:
        kind = f"its first bytes ({head[:8].hex(' ')}) match no checkpoint format"
    return CheckpointError(f"{name} is not a checkpoint: {kind}. Expected a PyTorch file (.pth/.pt/.pth.tar) "
                           "or .safetensors")


def _refused(name: str, error: Exception) -> CheckpointError:
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    what = f" (it asks for {found.group(1)})" if found else ""
    return CheckpointError(f"refused to load {name}: it is not a plain tensor checkpoint. Unpickling it would import "
                           f"and run code{what}, so it was stopped by torch.load(weights_only=True). Only files of "
                           "tensors, numbers, strings, lists and dicts are accepted; if you trust the file, re-save "
                           "its state_dict in a trusted environment or convert it to .safetensors")


def _torch_load(handle, name: str):
    try:
        with _safe_globals():
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            raise _refused(name, error) from None
        raise CheckpointError(f"{name} is truncated or corrupted and cannot be read as a PyTorch checkpoint "
                              f"({str(error).splitlines()[0][:200]})") from None
    except Exception as error:  # noqa: BLE001 - on damaged bytes the unpickler raises IndexError, TypeError...
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{name} is truncated or corrupted and cannot be read as a PyTorch checkpoint "
                              f"({first[:200]})") from None


def _read_safetensors(data: bytes | None, path: Path | None, name: str) -> RawCheckpoint:
    try:
        if path is not None:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        else:
            tensors = load_safetensors_bytes(data)
            (length,) = struct.unpack("<Q", data[:8])
            header = json.loads(data[8:8 + length]).get("__metadata__") or {}
    except (SafetensorError, ValueError, OSError) as error:
        raise CheckpointError(f"{name} is not a valid safetensors file: {error}") from None
    return RawCheckpoint(tensors, header, "safetensors", name)


def read_checkpoint(source: str | Path | bytes, name: str | None = None) -> RawCheckpoint:
    """Open a path or in-memory bytes (e.g. an upload) as safetensors or a PyTorch pickle."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, path = bytes(source), None
        name = name or "the uploaded file"
        head, size = data[:16], len(data)
    else:
        path = Path(source)
        name = name or path.name
        if not path.exists():
            raise CheckpointError(f"no such file: {path}")
        if not path.is_file():
            raise CheckpointError(f"{path} is not a file")
        data, size = None, path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(16)
    if size == 0:
        raise CheckpointError(f"{name} is empty")
    kind = _sniff(head, size)
    safetensors_name = name.lower().endswith(".safetensors")
    if kind == "safetensors":
        return _read_safetensors(data, path, name)
    if kind == "unknown" or safetensors_name:
        raise _not_a_checkpoint(name, head, safetensors_name)
    obj = _torch_load(io.BytesIO(data) if data is not None else str(path), name)
    return RawCheckpoint(obj, None, kind, name)


# ---- choosing what the file cannot say ----------------------------------------------------
def _palette(value, count: int):
    try:
        array = np.asarray(value, dtype=np.int64)
    except (TypeError, ValueError):
        return None
    if array.shape != (count, 3) or array.min() < 0 or array.max() > 255:
        return None
    return tuple(tuple(int(v) for v in row) for row in array)


def _dataset_from_meta(meta: dict | None, num_classes: int) -> DatasetInfo | None:
    """mmseg writes CLASSES/PALETTE (0.x) or dataset_meta.classes/palette (1.x) into ``meta``."""
    if not meta:
        return None
    inner = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    classes = meta.get("CLASSES") or inner.get("classes")
    if not isinstance(classes, (list, tuple)) or len(classes) != num_classes:
        return None
    names = tuple(str(c).strip() for c in classes)
    for known in DATASETS.values():
        if known.classes == names:
            return known
    palette = _palette(meta.get("PALETTE") or inner.get("palette"), num_classes)
    return DatasetInfo("checkpoint", names, palette or generic_dataset(num_classes).palette, 255)


def resolve_dataset(requested, num_classes: int, meta: dict | None) -> tuple[DatasetInfo, str]:
    """The label set to show, and where it came from; a requested one must fit the classifier."""
    if requested is not None:
        if isinstance(requested, DatasetInfo):
            dataset = requested
        else:
            try:
                dataset = get_dataset(str(requested))
            except KeyError as error:
                raise CheckpointError(error.args[0]) from None
        if dataset.num_classes != num_classes:
            raise CheckpointError(f"dataset {dataset.name!r} has {dataset.num_classes} classes, but the checkpoint's "
                                  f"classifier predicts {num_classes}")
        return dataset, "requested"
    from_meta = _dataset_from_meta(meta, num_classes)
    if from_meta is not None:
        return from_meta, "checkpoint meta"
    return dataset_for_classes(num_classes), f"guessed from the class count ({num_classes})"


def _align_corners_from_meta(meta: dict | None) -> bool | None:
    """mmseg stores its config as text; the 769x769 Cityscapes configs say align_corners=True."""
    for key in ("config", "cfg"):
        text = (meta or {}).get(key)
        if isinstance(text, str):
            values = set(re.findall(r"align_corners\s*=\s*(True|False)", text))
            if len(values) == 1:
                return values.pop() == "True"
    return None


def _dilation(value: str | None, default: str) -> tuple[int, bool]:
    try:
        return parse_dilation(value or default)
    except ValueError as error:
        raise CheckpointError(str(error)) from None


# ---- strict loading ------------------------------------------------------------------------
def _foreign(mapped: Mapped, key: str) -> str:
    return mapped.foreign_names.get(key) or to_foreign(mapped.layout, mapped.stem_style, key)


def load_strict(model: DANet, mapped: Mapped) -> list[str]:
    """Copy ``mapped`` into ``model``; every missing, unexpected or misshapen key is an error.

    The only tolerated gaps are a layout's ``optional_head`` modules (zero-filled, with a
    warning). Returns the warnings.
    """
    layout, warnings = mapped.layout, []
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = dict(mapped.state)
    for key, tensor in list(state.items()):
        if key in own and own[key].shape == (1,) and tensor.dim() == 0:   # mmseg Scale: 0-d gamma
            state[key] = tensor.reshape(1)
    absent = [m for m in layout.optional_head
              if not any(k.startswith(f"head.{m}.") for k in state)]
    if absent and len(absent) == len(layout.optional_head):
        for key in own:
            if key.startswith(tuple(f"head.{m}." for m in absent)):
                state[key] = torch.zeros(own[key].shape, dtype=own[key].dtype)
        warnings.append("the checkpoint has no PAM-only and CAM-only classifiers (trained without aux): those two "
                        "outputs are set to zero; the fused output and the attention maps are unaffected")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {listed(_foreign(mapped, k) for k in missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {listed(_foreign(mapped, k) for k in unexpected)}")
        if wrong:
            parts.append(f"wrong shape {len(wrong)}: " + listed(
                f"{_foreign(mapped, k)} {list(state[k].shape)} (expected {list(own[k].shape)})" for k in wrong))
        raise CheckpointError(f"{layout.name} layout detected, but the weights do not fit the network inferred "
                              f"from them ({model.config.backbone}, {model.config.num_classes} classes): "
                              + "; ".join(parts))
    state = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    counters = {k: torch.zeros((), dtype=v.dtype) for k, v in model.state_dict().items()
                if k.endswith("num_batches_tracked")}
    # ``assign`` adopts the file's tensors: the model may be built on the meta device (no init)
    model.load_state_dict({**counters, **state}, strict=True, assign=True)
    bad = [k for k, v in state.items() if v.is_floating_point() and not _finite(v)]
    if bad:
        warnings.append(f"{len(bad)} weight tensors contain NaN or Inf values ({listed(_foreign(mapped, k) for k in bad)}); "
                        "the model's outputs will be meaningless")
    return warnings


def _finite(tensor: torch.Tensor) -> bool:
    """All values finite? A sum is one cheap pass; only a non-finite sum is checked in full."""
    total = tensor.sum(dtype=torch.float32) if tensor.dtype != torch.float64 else tensor.sum()
    return bool(torch.isfinite(total)) or bool(torch.isfinite(tensor).all())


def build_empty(config: DANetConfig) -> DANet:
    """The network without initialising weights (they all come from the file)."""
    with torch.device("meta"):
        return DANet(config)


# ---- public API ----------------------------------------------------------------------------
def _finish(model: DANet, meta: ModelMeta, mapped: Mapped, source: str, device: str) -> LoadedModel:
    warnings = load_strict(model, mapped)
    return LoadedModel(model=model.to(select_device(device)).eval(), meta=meta, source=source, warnings=warnings)


def _whole(value, low: int = 1, high: int = 1 << 16) -> bool:
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
    for name in ("head_channels", "key_channels"):
        if getattr(config, name) is not None and not _whole(getattr(config, name)):
            return f"{name} {getattr(config, name)!r}"
    if config.output_stride not in (8, 16, 32) or type(config.output_stride) is not int:
        return f"output_stride {config.output_stride!r}"
    if config.stem not in STEMS:
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
    if len(palette) != len(classes) or not all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in palette):
        return "a palette that is not one RGB colour (0-255) per class"
    ignore = meta.dataset.ignore_index
    if ignore is not None and type(ignore) is not int:
        return f"ignore_index {ignore!r}"
    for name in ("mean", "std"):
        values = getattr(meta, name)
        if len(values) != 3 or not all(type(v) in (int, float) and np.isfinite(v) for v in values):
            return f"{name} {list(values)!r}"
    if not all(v > 0 for v in meta.std):
        return f"std {list(meta.std)!r}"
    if not isinstance(meta.extra, dict):
        return "extra is not a mapping"
    return None


def _read_own_meta(raw: RawCheckpoint) -> ModelMeta:
    def refuse(reason) -> CheckpointError:
        return CheckpointError(f"{raw.name} has danet-lens metadata that cannot be read ({reason})")

    try:   # the config is checked before from_strings, which builds a palette per class
        problem = _config_problem(DANetConfig.from_dict(json.loads(raw.header["config"])))
        if problem is None:
            meta = ModelMeta.from_strings(raw.header)
            problem = _meta_problem(meta)
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise refuse(error) from None
    if problem is not None:
        raise refuse(problem)
    return meta


def _load_own(raw: RawCheckpoint, dilation, dataset, align_corners, device, source: str) -> LoadedModel:
    meta = _read_own_meta(raw)
    config = meta.config
    if dilation is not None:
        output_stride, multi_grid = _dilation(dilation, "")
        config = dataclasses.replace(config, output_stride=output_stride, multi_grid=multi_grid and config.is_resnet)
    if align_corners is not None:
        config = dataclasses.replace(config, align_corners=bool(align_corners))
    if dataset is not None:
        meta.dataset, _ = resolve_dataset(dataset, config.num_classes, None)
    meta.config = config
    meta.extra = {**meta.extra, "container": "danet-lens safetensors"}
    if dilation is not None and config.is_resnet:
        meta.extra["dilation"] = dilation_name(config.output_stride, config.multi_grid)
    state = {k: v for k, v in raw.obj.items() if not k.endswith("num_batches_tracked")}
    mapped = Mapped(DANET_LENS, "stem.N", state, {k: k for k in state})
    try:
        model = build_empty(config)
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError) as error:   # e.g. a timm ViT
        raise CheckpointError(f"{raw.name}: the network its metadata describes cannot be built ({error})") from None
    return _finish(model, meta, mapped, source, device)


def load_model(source: str | Path | bytes, *, dilation: str | None = None, dataset: str | DatasetInfo | None = None,
               align_corners: bool | None = None, device: str = "cpu", name: str | None = None) -> LoadedModel:
    """Load a DANet checkpoint of any supported layout, in eval mode on ``device``.

    ``source`` is a path or the file's bytes (``name`` then labels it in messages). Shapes
    give the architecture; ``dilation`` (``"2-4-4"``, ``"multi-grid"``/``"4-8-16"``,
    ``"os16"``, ``"1-1-1"``...), ``align_corners`` and ``dataset`` (a name from
    ``danet.data.palettes.DATASETS`` or a ``DatasetInfo``) override the layout's defaults.
    Raises ``CheckpointError`` for anything that is not a loadable DANet checkpoint.
    """
    raw = read_checkpoint(source, name)
    label = name or (raw.name if isinstance(source, (bytes, bytearray, memoryview)) else str(source))
    if raw.header and raw.header.get("format") == METADATA_FORMAT:
        return _load_own(raw, dilation, dataset, align_corners, device, label)
    unwrapped = unwrap(raw.obj)
    layout = detect_layout(unwrapped.state)
    mapped = map_to_ours(unwrapped.state, layout)
    arch = infer_architecture(mapped, TIMM_CANDIDATES)
    is_resnet = arch.stem is not None
    output_stride, multi_grid = _dilation(dilation, layout.dilation)
    meta_align = _align_corners_from_meta(unwrapped.meta) if layout.name == "mmseg" else None
    if align_corners is not None:
        align, align_from = bool(align_corners), "requested"
    elif meta_align is not None:
        align, align_from = meta_align, "checkpoint meta config"
    else:
        align, align_from = layout.align_corners, f"{layout.name} default"
    config = DANetConfig(num_classes=arch.num_classes, backbone=arch.backbone, stem=arch.stem or "7x7",
                         output_stride=output_stride, multi_grid=multi_grid and is_resnet,
                         head_channels=arch.head_channels, key_channels=arch.key_channels, align_corners=align)
    info, dataset_from = resolve_dataset(dataset, arch.num_classes, unwrapped.meta)
    if is_resnet:
        mean, std = IMAGENET_MEAN, IMAGENET_STD       # mmseg's 0-255 values are the same, times 255
    else:
        from ..pretrained import normalisation

        mean, std = normalisation(arch.backbone)
    extra = {"source_file": raw.name, "container": raw.container, "wrapper": unwrapped.wrapper,
             "stem_keys": mapped.stem_style, "dilation": dilation_name(output_stride, multi_grid and is_resnet),
             "align_corners_from": align_from, "dataset_from": dataset_from,
             "ignored_keys": len(mapped.ignored)}
    if unwrapped.meta and unwrapped.meta.get("mmseg_version"):
        extra["mmseg_version"] = str(unwrapped.meta["mmseg_version"])
    meta = ModelMeta(config=config, dataset=info, mean=tuple(mean), std=tuple(std), layout=layout.name, extra=extra)
    return _finish(build_empty(config), meta, mapped, label, device)


def convert(source: str | Path | bytes, destination: str | Path, *, dilation: str | None = None,
            dataset: str | DatasetInfo | None = None, align_corners: bool | None = None,
            dtype: torch.dtype | str | None = None) -> LoadedModel:
    """Load ``source`` (any layout) and write it as our ``.safetensors`` with full metadata."""
    destination = Path(destination)
    if destination.suffix != ".safetensors":
        raise CheckpointError(f"the output must end in .safetensors, got {destination.name}")
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                 "fp16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype.lower()) or _bad_dtype(dtype)
    loaded = load_model(source, dilation=dilation, dataset=dataset, align_corners=align_corners, device="cpu")
    loaded.meta.extra = {k: v for k, v in loaded.meta.extra.items() if k != "container"}
    partial = destination.with_name(destination.name + ".part")
    save_model(loaded.model, loaded.meta, partial, dtype=dtype)
    partial.replace(destination)
    return loaded


def _bad_dtype(value: str):
    raise CheckpointError(f"unknown dtype {value!r}; use float32, float16 or bfloat16")


def layer4_dilations(model: DANet) -> list[int] | None:
    """Dilation of each layer4 block's 3x3 conv (None for timm backbones)."""
    layer4 = getattr(model.backbone, "layer4", None)
    if layer4 is None:
        return None
    result = []
    for block in layer4:
        conv = next(m for m in block.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
        result.append(int(conv.dilation[0]))
    return result


def describe(loaded: LoadedModel) -> dict:
    """Everything ``danet info`` shows, as plain JSON-able values."""
    meta, config = loaded.meta, loaded.meta.config
    layout: Layout | None = LAYOUTS_BY_NAME.get(meta.layout)
    return {
        "source": loaded.source,
        "layout": meta.layout,
        "layout_title": layout.title if layout else None,
        "container": meta.extra.get("container")
        or ("danet-lens safetensors" if str(loaded.source).endswith(".safetensors") else None),
        "backbone": config.backbone,
        "stem": config.stem if config.is_resnet else None,
        "output_stride": config.output_stride,
        "dilation": dilation_name(config.output_stride, config.multi_grid) if config.is_resnet else None,
        "layer4_dilations": layer4_dilations(loaded.model),
        "align_corners": config.align_corners,
        "head_channels": loaded.model.head.pam_in_conv[0].out_channels,
        "key_channels": loaded.model.head.pam.query.out_channels,
        "num_classes": config.num_classes,
        "dataset": meta.dataset.name,
        "classes": list(meta.classes),
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "alpha": float(loaded.model.head.pam.alpha.item()),
        "beta": float(loaded.model.head.cam.beta.item()),
        "mean": list(meta.mean),
        "std": list(meta.std),
        "extra": meta.extra,
        "warnings": list(loaded.warnings),
    }
