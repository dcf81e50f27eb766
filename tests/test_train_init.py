"""Fine-tuning options of ``danet train``: ``--init`` starts from a trained checkpoint, and the
attention gains alpha and beta get a learning rate of their own and no weight decay."""
from __future__ import annotations

import pytest
import torch

from conftest import make_camvid_like
from danet.errors import InputError
from danet.jobs.train import TrainConfig, build, param_groups, train

TINY = dict(backbone="mobilenetv2_100", head_channels=16, imagenet=False, batch_size=2, crop=(32, 48),
            scale=(1.0, 1.0), warmup_steps=1, class_weights="none", threads=1, device="cpu")


def test_init_copies_every_weight(tiny_camvid_checkpoint, tiny_camvid_model):
    model = build(TrainConfig(data="unused", init=str(tiny_camvid_checkpoint), **TINY))
    want = tiny_camvid_model.state_dict()
    got = model.state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        expected = value.half().float() if value.is_floating_point() else value   # the file is fp16
        assert torch.equal(got[key], expected), key
    assert model.head.pam.alpha.item() == 0.5


@pytest.mark.parametrize("change, words", [({"head_channels": 32}, "does not fit"),
                                            ({"backbone": "tf_efficientnet_lite0"}, "its backbone is")])
def test_init_refuses_another_architecture(tiny_camvid_checkpoint, change, words):
    with pytest.raises(InputError, match=words):
        build(TrainConfig(data="unused", init=str(tiny_camvid_checkpoint), **(TINY | change)))


def test_attention_gains_have_their_own_group(tiny_camvid_model):
    cfg = TrainConfig(data="unused", lr=1e-3, attention_lr_scale=20, **TINY)
    groups = param_groups(tiny_camvid_model, cfg)
    ids = [id(p) for group in groups for p in group["params"]]
    assert sorted(ids) == sorted(id(p) for p in tiny_camvid_model.parameters())    # each exactly once
    gains = groups[-1]
    assert {id(p) for p in gains["params"]} == {id(tiny_camvid_model.head.pam.alpha),
                                               id(tiny_camvid_model.head.cam.beta)}
    assert gains["lr"] == pytest.approx(0.02) and gains["weight_decay"] == 0.0


def test_attention_lr_scale_reaches_the_optimiser(tmp_path, tiny_camvid_checkpoint):
    """With the gains' learning rate at zero a training step moves the head but not alpha or beta."""
    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=1)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), init=str(tiny_camvid_checkpoint), epochs=1,
                      max_steps=1, attention_lr_scale=0.0, **TINY)
    before = build(cfg).state_dict()
    train(cfg, log=lambda *_: None)
    after = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert torch.equal(after["head.pam.alpha"], before["head.pam.alpha"])
    assert torch.equal(after["head.cam.beta"], before["head.cam.beta"])
    assert not torch.equal(after["head.pam_out_conv.0.weight"], before["head.pam_out_conv.0.weight"])


def test_exported_card_carries_the_command_and_the_val_curve(tmp_path, monkeypatch):
    from safetensors import safe_open

    from danet.cli.train import command_line
    from danet.weights import card_from_metadata

    monkeypatch.setattr("sys.argv", ["/usr/bin/danet", "train", "--data", "my data", "--epochs", "1"])
    assert command_line() == "danet train --data 'my data' --epochs 1"
    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=1)
    best = tmp_path / "run" / "best.safetensors"
    train(TrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=2, max_steps=2, command=command_line(),
                      **TINY), log=lambda *_: None)
    with safe_open(str(best), framework="pt") as handle:
        card = card_from_metadata("best", handle.metadata())
    assert card.training_command == "danet train --data 'my data' --epochs 1"
    epochs = [int(item.split(":")[0]) for item in card.history.split(", ")]
    assert epochs[0] == 1 and epochs == sorted(epochs) and len(epochs) in (1, 2)   # up to the best epoch


def test_new_head_on_a_frozen_trained_backbone(tmp_path, tiny_camvid_checkpoint, tiny_camvid_model):
    """``--init-parts backbone --freeze-backbone``: the backbone (weights and BatchNorm statistics)
    is the checkpoint's before and after training; the head has its own width and learns."""
    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=1)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), init=str(tiny_camvid_checkpoint),
                      init_parts="backbone", freeze_backbone=True, epochs=1, max_steps=1,
                      **(TINY | {"head_channels": 24, "key_channels": 6}))
    fresh = build(cfg)
    assert fresh.head.pam.query.out_channels == 6 and fresh.head.pam.alpha.item() == 0.0
    train(cfg, log=lambda *_: None)
    after = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    for key, value in tiny_camvid_model.backbone.state_dict().items():
        expected = value.half().float() if value.is_floating_point() else value
        assert torch.equal(after[f"backbone.{key}"], expected), key
    assert not torch.equal(after["head.pam_out_conv.0.weight"], fresh.state_dict()["head.pam_out_conv.0.weight"])


def test_init_parts_is_checked(tiny_camvid_checkpoint):
    with pytest.raises(InputError, match="init-parts"):
        build(TrainConfig(data="unused", init=str(tiny_camvid_checkpoint), init_parts="neck", **TINY))
