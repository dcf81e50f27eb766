"""The embedded default model: loads offline, carries its card, and reaches its stated accuracy."""
from __future__ import annotations

import pytest

import danet
from danet.jobs.evaluate import evaluate_model
from danet.weights import default_weights_path


@pytest.fixture(scope="module")
def default():
    return danet.load(device="cpu")


def test_default_weights_are_small_safetensors_with_a_card(default):
    assert default_weights_path().suffix == ".safetensors"
    assert default_weights_path().stat().st_size < 50 * 2**20
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
@pytest.mark.slow
def test_default_model_reaches_the_val_miou_on_its_card(default, camvid):
    result = evaluate_model(default.model, camvid, "val", mean=default.meta.mean, std=default.meta.std)
    assert result["images"] == 101
    assert result["miou"] * 100 >= default.meta.extra["val_miou"] - 0.5
