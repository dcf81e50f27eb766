"""Synthetic checkpoints in every public DANet layout, written from the documented key tables.

These tables are typed from ``docs/checkpoint-formats.md`` (§1.2, §2.3-2.4, §3, §4, §8) on purpose,
independently of ``danet/checkpoints/layouts.py``: a test that reused the loader's own tables
could not catch a wrong entry in them.
"""
from __future__ import annotations

import torch

from danet.models import DANet, create_model

# our head module -> each layout's name for it (doc §4)
HEAD_NAMES = {
    "official": {
        "pam_in_conv.0": "head.conv5a.0", "pam_in_conv.1": "head.conv5a.1",
        "cam_in_conv.0": "head.conv5c.0", "cam_in_conv.1": "head.conv5c.1",
        "pam.query": "head.sa.query_conv", "pam.key": "head.sa.key_conv", "pam.value": "head.sa.value_conv",
        "pam.alpha": "head.sa.gamma", "cam.beta": "head.sc.gamma",
        "pam_out_conv.0": "head.conv51.0", "pam_out_conv.1": "head.conv51.1",
        "cam_out_conv.0": "head.conv52.0", "cam_out_conv.1": "head.conv52.1",
        "pam_classifier.1": "head.conv6.1", "cam_classifier.1": "head.conv7.1",
        "fused_classifier.1": "head.conv8.1",
    },
    "mmseg": {
        "pam_in_conv.0": "decode_head.pam_in_conv.conv", "pam_in_conv.1": "decode_head.pam_in_conv.bn",
        "cam_in_conv.0": "decode_head.cam_in_conv.conv", "cam_in_conv.1": "decode_head.cam_in_conv.bn",
        "pam.query": "decode_head.pam.query_project", "pam.key": "decode_head.pam.key_project",
        "pam.value": "decode_head.pam.value_project",
        "pam.alpha": "decode_head.pam.gamma.scale", "cam.beta": "decode_head.cam.gamma.scale",
        "pam_out_conv.0": "decode_head.pam_out_conv.conv", "pam_out_conv.1": "decode_head.pam_out_conv.bn",
        "cam_out_conv.0": "decode_head.cam_out_conv.conv", "cam_out_conv.1": "decode_head.cam_out_conv.bn",
        "pam_classifier.1": "decode_head.pam_conv_seg", "cam_classifier.1": "decode_head.cam_conv_seg",
        "fused_classifier.1": "decode_head.conv_seg",
    },
    "tramac": {
        "pam_in_conv.0": "head.conv_p1.0", "pam_in_conv.1": "head.conv_p1.1",
        "cam_in_conv.0": "head.conv_c1.0", "cam_in_conv.1": "head.conv_c1.1",
        "pam.query": "head.pam.conv_b", "pam.key": "head.pam.conv_c", "pam.value": "head.pam.conv_d",
        "pam.alpha": "head.pam.alpha", "cam.beta": "head.cam.beta",
        "pam_out_conv.0": "head.conv_p2.0", "pam_out_conv.1": "head.conv_p2.1",
        "cam_out_conv.0": "head.conv_c2.0", "cam_out_conv.1": "head.conv_c2.1",
        "pam_classifier.1": "head.conv_p3.1", "cam_classifier.1": "head.conv_c3.1",
        "fused_classifier.1": "head.out.1",
    },
}
HEAD_NAMES["blog"] = HEAD_NAMES["tramac"]

BACKBONE_PREFIX = {"official": "pretrained.", "mmseg": "backbone.", "tramac": "pretrained.", "blog": "model."}

# our stem.N -> the layout's stem names (official --no-deepstem and blog: 7x7 conv1/bn1;
# Tramac v1s: conv1.{0,1,3,4,6} + bn1; mmseg ResNetV1c: stem.{0,1,3,4,6,7})
STEM_NAMES = {
    "7x7": {"stem.0": "conv1", "stem.1": "bn1"},
    "v1s": {"stem.0": "conv1.0", "stem.1": "conv1.1", "stem.3": "conv1.3", "stem.4": "conv1.4",
            "stem.6": "conv1.6", "stem.7": "bn1"},
    "v1c": {f"stem.{i}": f"stem.{i}" for i in (0, 1, 3, 4, 6, 7)},
}
LAYOUT_STEM = {"official": "7x7", "blog": "7x7", "tramac": "v1s", "mmseg": "v1c"}
STEM_FOR_LAYOUT = {"official": "7x7", "blog": "7x7", "tramac": "deep64", "mmseg": "deep32"}

# the network each layout's own code builds (dilation pattern, upsampling)
CONFIG_FOR_LAYOUT = {
    "official": dict(output_stride=8, multi_grid=True, align_corners=True),
    "mmseg": dict(output_stride=8, multi_grid=False, align_corners=False),
    "tramac": dict(output_stride=8, multi_grid=False, align_corners=True),
    "blog": dict(output_stride=32, multi_grid=False, align_corners=True),
    "danet-lens": dict(output_stride=8, multi_grid=False, align_corners=False),
}


def randomize(model: DANet, seed: int = 0) -> DANet:
    """Random weights, non-trivial BN statistics and nonzero alpha/beta, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith(("alpha", "beta")):
                tensor.fill_(0.7 if name.endswith("alpha") else 0.3)
            else:
                fan_in = max(tensor[0].numel(), 1) if tensor.dim() > 1 else 1
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in ** 0.5)
    return model.eval()


def make_model(layout: str = "danet-lens", backbone: str = "resnet18", num_classes: int = 5,
               head_channels: int = 32, seed: int = 0, **overrides) -> DANet:
    """A random-weight DANet shaped like the network ``layout``'s code builds."""
    config = dict(CONFIG_FOR_LAYOUT[layout], stem=STEM_FOR_LAYOUT.get(layout, "7x7"))
    config.update(overrides)
    return randomize(create_model(backbone=backbone, num_classes=num_classes, head_channels=head_channels,
                                  **config), seed)


def _rename(name: str, table: dict[str, str]) -> str | None:
    for ours, theirs in table.items():
        if name == ours or name.startswith(ours + "."):
            return theirs + name[len(ours):]
    return None


def foreign_state(model: DANet, layout: str, *, with_extras: bool = True) -> dict[str, torch.Tensor]:
    """``model``'s weights under ``layout``'s key names and shapes (doc tables).

    ``with_extras`` adds what real files carry and the model never uses: the ImageNet fc
    (Tramac, blog), mmseg's auxiliary FCN head on layer3.
    """
    state = {}
    prefix = BACKBONE_PREFIX[layout]
    for name, tensor in model.state_dict().items():
        tensor = tensor.clone()
        if name.startswith("backbone."):
            rest = name[len("backbone."):]
            if rest.startswith("stem."):
                rest = _rename(rest, STEM_NAMES[LAYOUT_STEM[layout]])
                assert rest is not None, name
            state[prefix + rest] = tensor
        else:
            rest = name[len("head."):]
            new = _rename(rest, HEAD_NAMES[layout])
            assert new is not None, name
            if layout == "mmseg" and rest in ("pam.alpha", "cam.beta"):
                tensor = tensor.reshape(())          # mmcv Scale: a 0-d parameter
            state[new] = tensor
    if with_extras:
        features = model.backbone.out_channels
        if layout in ("tramac", "blog"):
            state[prefix + "fc.weight"] = torch.randn(1000, features)
            state[prefix + "fc.bias"] = torch.randn(1000)
        if layout == "mmseg":
            layer3 = model.backbone.layer3[-1]
            channels = (layer3.conv3 if hasattr(layer3, "conv3") else layer3.conv2).out_channels
            classes = model.config.num_classes
            state["auxiliary_head.convs.0.conv.weight"] = torch.randn(16, channels, 3, 3)
            for part in ("weight", "bias", "running_mean", "running_var"):
                state[f"auxiliary_head.convs.0.bn.{part}"] = torch.rand(16)
            state["auxiliary_head.convs.0.bn.num_batches_tracked"] = torch.tensor(7)
            state["auxiliary_head.conv_seg.weight"] = torch.randn(classes, 16, 1, 1)
            state["auxiliary_head.conv_seg.bias"] = torch.randn(classes)
    return state


def wrap(state: dict, layout: str, meta: dict | None = None, module_prefix: bool = False):
    """The container each project's training code writes around the state dict."""
    if module_prefix:
        state = {"module." + k: v for k, v in state.items()}
    if layout == "official":
        import numpy as np

        return {"epoch": 240, "state_dict": state, "best_pred": np.float64(0.8793),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.003, "params": [0, 1]}]}}
    if layout == "mmseg":
        return {"meta": meta or {"mmseg_version": "0.5.0", "config": "model = dict(decode_head=dict("
                                 "align_corners=False))"}, "state_dict": state}
    return state


@torch.inference_mode()
def outputs(model: DANet, size=(64, 64), seed: int = 1) -> tuple[torch.Tensor, ...]:
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))
    return tuple(model(x).values())
