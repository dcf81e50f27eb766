"""Training lowers the loss, resumes where it stopped; evaluation scores known masks exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_camvid_like
from danet.data.camvid import SegmentationDataset
from danet.jobs.evaluate import evaluate_model
from danet.analysis.metrics import confusion_matrix, scores
from danet.jobs.train import TrainConfig, build, class_weights, seg_loss, train


def tiny_config(data, out, **kw):
    base = dict(data=str(data), out=str(out), backbone="resnet18", head_channels=16, imagenet=False,
                epochs=1, batch_size=2, lr=3e-3, crop=(32, 48), scale=(0.9, 1.1), warmup_steps=1,
                class_weights="none", threads=1, export=str(out / "best.safetensors"))
    base.update(kw)
    return TrainConfig(**base)


def fixed_batch_loss(model, data):
    dataset = SegmentationDataset(data, "train")
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.stack([dataset[i][1] for i in range(len(dataset))])
    model.eval()
    with torch.no_grad():
        return float(seg_loss(model(x), y, None, 0.5))


@pytest.mark.slow
def test_training_lowers_the_loss(tmp_path):
    data = make_camvid_like(tmp_path / "data")
    cfg = tiny_config(data, tmp_path / "run", epochs=12)
    torch.manual_seed(cfg.seed)
    before = fixed_batch_loss(build(cfg), data)
    best = train(cfg, log=lambda *_: None)
    model = build(cfg)
    model.load_state_dict(torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"])
    after = fixed_batch_loss(model, data)
    assert after < 0.85 * before, (before, after)
    assert 0 <= best["miou"] <= 1
    assert (tmp_path / "run" / "best.safetensors").exists()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 13))
    assert all("val_miou" in r for r in records)


def test_resume_continues_from_the_saved_step(tmp_path):
    data = make_camvid_like(tmp_path / "data")
    messages = []
    train(tiny_config(data, tmp_path / "run", epochs=1), log=messages.append)
    first = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert int(first["epoch"]) == 1 and int(first["step"]) == 2
    train(tiny_config(data, tmp_path / "run", epochs=2), log=messages.append)
    assert any("resumed from" in m and "epoch 1, step 2" in m for m in messages)
    second = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert int(second["epoch"]) == 2 and int(second["step"]) == 4
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2]


def test_class_weights_favour_rare_classes(tmp_path):
    data = make_camvid_like(tmp_path / "data")
    dataset = SegmentationDataset(data, "train")
    weights = class_weights(dataset, 11, "median")
    assert weights[0] > 0 and weights[3] > 0
    assert torch.all(weights[[1, 2, 4, 5, 6, 7, 8, 9, 10]] == 0)  # absent classes get no weight
    assert torch.allclose(class_weights(dataset, 11, "sqrt-median") ** 2, weights)
    with pytest.raises(ValueError, match="class_weights"):
        class_weights(dataset, 11, "bogus")


def test_iou_of_known_masks_by_hand():
    target = np.array([[0, 0, 1, 1],
                       [0, 0, 1, 1],
                       [2, 2, 2, 9]])  # 9 = ignore
    prediction = np.array([[0, 1, 1, 1],
                           [0, 0, 1, 2],
                           [2, 2, 0, 0]])
    confusion = confusion_matrix(prediction, target, 3, ignore_index=9)
    # class 0: tp 3, fp 1 (gt 2 -> 0), fn 1 (-> 1): IoU 3/5
    # class 1: tp 3, fp 1, fn 1 (-> 2): IoU 3/5 ; class 2: tp 2, fp 1, fn 1: IoU 2/4
    result = scores(confusion)
    assert confusion.sum() == 11
    np.testing.assert_allclose(result["iou"], [3 / 5, 3 / 5, 2 / 4])
    assert result["miou"] == pytest.approx((0.6 + 0.6 + 0.5) / 3)
    assert result["pixel_accuracy"] == pytest.approx(8 / 11)


def test_absent_classes_do_not_count_in_miou():
    result = scores(confusion_matrix(np.zeros((2, 2)), np.zeros((2, 2)), 4))
    assert result["miou"] == 1.0 and np.isnan(result["iou"][1:]).all()


def test_evaluate_model_on_a_folder(tmp_path):
    data = make_camvid_like(tmp_path / "data")
    cfg = tiny_config(data, tmp_path / "run")
    torch.manual_seed(0)
    model = build(cfg).eval()
    result = evaluate_model(model, data, "val", flip=True, scales=(0.75, 1.0))
    assert result["images"] == 2 and result["confusion"].shape == (11, 11)
    # every non-void pixel is counted exactly once
    assert result["confusion"].sum() == 2 * 48 * 62
    with pytest.raises(FileNotFoundError, match="CamVid layout"):
        evaluate_model(model, data, "test")
