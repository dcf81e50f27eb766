"""mmseg checkpoints of every native head load with no hints: a state dict with the published
r50-d8 Cityscapes keys and shapes (tests/fixtures/mmseg/*_keys.json, from mmseg 1.2.2's own
configs) is detected as (mmseg, head), its architecture read from shapes, and loaded strictly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from danet.checkpoints.load import load_model
from danet.checkpoints.describe import describe

FIXTURES = Path(__file__).parent / "fixtures" / "mmseg"


def published_state(head_file: str) -> dict[str, torch.Tensor]:
    listing = json.loads((FIXTURES / head_file).read_text())
    backbone = json.loads((FIXTURES / listing["backbone_keys_file"]).read_text())
    shapes = {**backbone["keys"], **listing["keys"]}
    generator = torch.Generator().manual_seed(0)
    def tensor(key, shape):
        if key.endswith("num_batches_tracked"):
            return torch.zeros(shape, dtype=torch.long)
        if key.endswith("running_var"):
            return torch.rand(shape, generator=generator) + 0.5
        return torch.randn(shape, generator=generator) * 0.01

    return {key: tensor(key, shape) for key, shape in shapes.items()}


@pytest.mark.slow
@pytest.mark.parametrize("head, listing", [("nl", "nl_cityscapes_keys.json"), ("gc", "gc_cityscapes_keys.json"),
                                           ("dnl", "dnl_cityscapes_keys.json"), ("cc", "cc_cityscapes_keys.json"),
                                           ("da", "da_cityscapes_keys.json")])
def test_published_mmseg_keys_load_as_their_head(tmp_path, head, listing):
    state = published_state(listing)
    assert any(k.startswith("auxiliary_head.") for k in state)        # ignored at inference, as documented
    path = tmp_path / f"{head}.pth"
    torch.save({"meta": {"dataset_meta": {"classes": [f"c{i}" for i in range(19)]}}, "state_dict": state}, path)
    loaded = load_model(path, device="cpu")
    config = loaded.meta.config
    assert (loaded.meta.layout, config.head, config.backbone, config.num_classes) == ("mmseg", head, "resnet50", 19)
    facts = describe(loaded)
    assert facts["head"] == head and facts["outputs"] == list(loaded.model.head.outputs)
    with torch.no_grad():
        outputs = loaded.model(torch.zeros(1, 3, 64, 64))
    assert all(t.shape == (1, 19, 64, 64) and torch.isfinite(t).all() for t in outputs.values())
