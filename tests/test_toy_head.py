"""A new head is one module: a toy global-context head registered here, in the tests alone,
gets loading from its own key table, ``inspect_image``, its map's rows and the CLI's attention
export, with no other file of the package changed."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import danet
from danet.checkpoints.load import load_model
from danet.checkpoints.save import save_model
from danet.maps import GlobalMap
from danet.models import DANetConfig, Segmentor
from danet.models.heads import AttentionHead, HeadKeys, HeadState, Term, register_head, unregister_head

from helpers_cli import invoke, write_image


class ToyGlobalHead(AttentionHead):
    """out = classifier(x + gamma * sum_j softmax(w . x)_j x_j): one query-independent map."""

    name = "toy"
    title = "toy global context"
    outputs = ("out",)
    terms = (Term("context", "global context", "gamma", "gamma"),)
    keys = {"mmseg": HeadKeys("toy_mask", {"toy_mask": "mask", "toy_gamma": "gamma", "conv_seg": "classifier"}),
            "danet-lens": HeadKeys("mask")}

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.mask = nn.Conv2d(in_channels, 1, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    @classmethod
    def build(cls, in_channels, num_classes, options):
        return cls(in_channels, num_classes)

    @classmethod
    def options_from_shapes(cls, shape):
        return {"num_classes": shape("classifier.weight")[0]}

    def inspect(self, x):
        weights = torch.softmax(self.mask(x).flatten(1), dim=-1)             # (B, N)
        context = torch.einsum("bn,bcn->bc", weights, x.flatten(2))[..., None, None]
        return HeadState({"out": self.classifier(x + self.gamma * context)}, {"mask": weights})

    def maps(self, kept, grid):
        return {"context": GlobalMap(grid, kept["mask"], title="toy context mask")}


@pytest.fixture
def toy():
    register_head(ToyGlobalHead)
    yield ToyGlobalHead
    unregister_head("toy")


def toy_model(seed=0):
    torch.manual_seed(seed)
    model = Segmentor(DANetConfig(num_classes=4, backbone="resnet18", head="toy", align_corners=False)).eval()
    with torch.no_grad():
        model.head.gamma.fill_(0.8)
        model.head.mask.weight.mul_(20)                   # a peaked mask, far from uniform
    return model


def mmseg_state(model):
    """The toy model under the mmseg source's names: backbone.* as is, the head renamed by its table."""
    table = {ours: theirs for theirs, ours in ToyGlobalHead.keys["mmseg"].table.items()}
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("head."):
            module, _, rest = key[len("head."):].partition(".")
            key = "decode_head." + table[module] + ("." + rest if rest else "")
        state[key] = value.clone()
    return state


def test_loads_from_its_own_key_table_and_gives_the_same_outputs(toy, tmp_path):
    model = toy_model()
    path = tmp_path / "toy_mmseg.pth"
    torch.save({"meta": {"CLASSES": ["a", "b", "c", "d"]}, "state_dict": mmseg_state(model)}, path)
    loaded = load_model(path, device="cpu")
    assert (loaded.meta.layout, loaded.meta.config.head) == ("mmseg", "toy")
    assert loaded.meta.classes == ("a", "b", "c", "d")
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        want, got = model(x), loaded.model(x)
    assert list(got) == ["out"]
    torch.testing.assert_close(got["out"], want["out"], rtol=0, atol=1e-6)

    ours = tmp_path / "toy.safetensors"                   # our own format records the head (metadata v2)
    save_model(loaded.model, loaded.meta, ours)
    again = danet.load(ours, device="cpu")
    assert again.meta.config.head == "toy" and again.meta.config == loaded.meta.config
    info = invoke("info", ours, "--json")
    assert info.exit_code == 0, info.output
    facts = json.loads(info.stdout)
    assert facts["head"] == "toy" and facts["outputs"] == ["out"] and facts["gamma"] == pytest.approx(0.8)


def test_inspect_image_gives_its_map_rows(toy):
    model = toy_model(1)
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    result = danet.inspect_image(model, image)
    assert result.head == "toy" and result.outputs == ("out",) and result.gains == {"context": pytest.approx(0.8)}
    the_map = result.map()
    assert the_map.kind == "global" and not the_map.flags.query_dependent
    rows = result.rows([(3, 3), (70, 60)])
    assert rows.shape == (2, 8, 10)
    np.testing.assert_allclose(rows[0], rows[1])                             # the same map for every query
    np.testing.assert_allclose(rows[0].sum(), 1, rtol=1e-5)
    x = danet.inspection.to_tensor(image)
    with torch.no_grad():
        mask = torch.softmax(model.head.mask(model.backbone(x)).flatten(1), -1)[0]
    np.testing.assert_allclose(rows[0].ravel(), mask.numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(danet.DanetError, match="one map serves every query"):
        danet.analysis.query_specificity(result)                              # hidden with its reason, not faked


def test_the_cli_attention_export_writes_its_map(toy, tmp_path):
    model = toy_model(2)
    checkpoint = tmp_path / "toy.safetensors"
    meta = danet.checkpoints.ModelMeta(config=model.config, dataset=danet.data.palettes.generic_dataset(4))
    save_model(model, meta, checkpoint)
    image = write_image(tmp_path / "a.png")
    out = tmp_path / "out"
    result = invoke("attention", image, "--point", "10,10", "--point", "90,60", "--checkpoint", checkpoint,
                    "--out", out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["head"] == "toy" and list(manifest["maps"]) == ["context"] and "cam" not in manifest
    rows = np.load(out / "context_maps.npy")
    assert rows.shape[0] == 2 and np.allclose(rows[0], rows[1])
    assert (out / "context_point2.png").is_file()
    refused = invoke("attention", image, "--point", "10,10", "--checkpoint", checkpoint, "--out", tmp_path / "o2",
                     "--channel", "0")
    assert refused.exit_code != 0 and "channel attention" in refused.output
