"""``python -m danet.jobs.publish``: the card's val figure is measured on the file as shipped."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import danet
from conftest import make_camvid_like, save_tiny
from danet.jobs.evaluate import evaluate_loaded
from danet.jobs.publish import publish


def test_publish_measures_the_shipped_file(tmp_path, tiny_camvid_model):
    data = make_camvid_like(tmp_path / "data", n_train=1, n_val=2)
    source = save_tiny(tiny_camvid_model, tmp_path / "best.safetensors", val_miou=99.0, training_note="old")
    target = tmp_path / "shipped.safetensors"
    extra = publish(source, data, target, note="fine-tuned", history="1: 50.0")
    with safe_open(str(target), framework="pt") as handle:
        stored = json.loads(handle.metadata()["extra"])
        dtypes = {handle.get_tensor(k).dtype for k in handle.keys() if handle.get_tensor(k).is_floating_point()}
    assert dtypes == {torch.float16}
    assert stored == extra
    measured = evaluate_loaded(danet.load(target, device="cpu"), data, "val")
    assert stored["val_miou"] == pytest.approx(100 * measured["miou"], abs=0.01)
    assert stored["val_miou_training_fp32"] == 99.0            # what the run said is kept beside it
    assert stored["training_note"] == "fine-tuned" and stored["training_history"] == "1: 50.0"
    assert stored["evaluated_with"].startswith("danet evaluate")
