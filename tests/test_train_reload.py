"""A training run's own ``last.pt`` reloads through ``danet.load`` as the network that was trained:
same config (``align_corners=False`` included), same outputs."""
from __future__ import annotations

import torch

import danet
from conftest import make_camvid_like
from danet.models import normalisation
from danet.jobs.train import TrainConfig, build, train


def test_one_training_step_reloads_with_equal_outputs(tmp_path):
    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=1)
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(data), out=str(out), backbone="mobilenetv2_100", head_channels=16, imagenet=False,
                      epochs=1, max_steps=1, batch_size=2, crop=(32, 48), scale=(1.0, 1.0), warmup_steps=1,
                      class_weights="none", threads=1, device="cpu", export=str(out / "best.safetensors"))
    train(cfg, log=lambda *_: None)
    state = torch.load(out / "last.pt", weights_only=True)
    assert int(state["step"]) == 1

    trained = build(cfg)
    trained.load_state_dict(state["model"])
    trained.eval()
    loaded = danet.load(out / "last.pt", device="cpu")

    assert loaded.meta.config == trained.config
    assert loaded.meta.config.align_corners is False          # as trained, not the layout's default
    assert loaded.meta.dataset.name == "camvid"
    assert (tuple(loaded.meta.mean), tuple(loaded.meta.std)) == normalisation(cfg.backbone)
    x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for (name, want), got in zip(trained(x).items(), loaded.model(x).values()):
            assert torch.equal(got, want), name
