"""The embedded default model: loads offline, carries its card, and reaches its stated accuracy."""
from __future__ import annotations

import pytest

from danet.data.camvid import find_camvid
from danet.evaluate import evaluate_model
from danet.weights import DEFAULT_WEIGHTS, load_default_model

CAMVID = find_camvid()


@pytest.fixture(scope="module")
def default():
    return load_default_model("cpu")


def test_default_weights_are_small_safetensors_with_a_card(default):
    assert DEFAULT_WEIGHTS.suffix == ".safetensors"
    assert DEFAULT_WEIGHTS.stat().st_size < 50 * 2**20
    meta = default.meta
    assert meta.config.num_classes == len(meta.classes) == 11
    assert meta.palette.shape == (11, 3)
    assert meta.dataset.ignore_index == 11
    for key in ("val_miou", "val_iou", "training", "license", "input_size"):
        assert key in meta.extra, key
    assert "non-commercial" in meta.extra["license"]
    assert 0 < meta.extra["val_miou"] <= 100
    assert not default.model.training


@pytest.mark.camvid
@pytest.mark.skipif(CAMVID is None, reason="CamVid not found at ../shared/data/camvid or $DANET_CAMVID")
def test_default_model_reaches_the_val_miou_on_its_card(default):
    result = evaluate_model(default.model, CAMVID, "val", mean=default.meta.mean, std=default.meta.std)
    assert result["images"] == 101
    assert result["miou"] * 100 >= default.meta.extra["val_miou"] - 0.5
