"""What ``danet info`` shows about a loaded model, as plain JSON-able values."""
from __future__ import annotations

import torch

from danet.models import Segmentor
from danet.checkpoints.layouts import Layout, dilation_name, find_layout
from danet.checkpoints.meta import LoadedModel


def layer4_dilations(model: Segmentor) -> list[int] | None:
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
    layout: Layout | None = find_layout(meta.layout, config.head)
    head = loaded.model.head
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    options = type(head).options_from_shapes(lambda key: shapes[key])
    options.pop("num_classes", None)
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
        "head": head.name,
        "head_title": head.title,
        "outputs": list(head.outputs),
        **options,
        "num_classes": config.num_classes,
        "dataset": meta.dataset.name,
        "classes": list(meta.classes),
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        **{term.gain_title or term.name: gain for term, gain in zip(head.terms, head.gains().values())},
        "mean": list(meta.mean),
        "std": list(meta.std),
        "extra": meta.extra,
        "warnings": list(loaded.warnings),
    }
