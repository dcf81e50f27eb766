"""The mmseg reference fixtures (tests/fixtures/mmseg/, made by tools/oracle/make_head_fixtures.py
in its own venv) are well formed: every head's weights, inputs, logits and attention objects are
there with consistent shapes, finite, and the softmax maps are real distributions that are neither
flat nor one-hot, so the head tests that compare our native heads against them can fail.
These tests need neither mmcv nor mmseg."""
from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mmseg"
K = 5

# head -> (mmseg type, {tensor: softmax axis}), written here independently of the files' metadata
HEADS = {
    "nl": ("NLHead", {"nl.attn": -1}),
    "dnl": ("DNLHead", {"dnl.attn_pairwise": -1, "dnl.unary": -1}),
    "gc": ("GCHead", {"gc.mask": -1}),
    "cc": ("CCHead", {"cc.loop1.attn": -1, "cc.loop2.attn": -1}),
    "ocr": ("OCRHead", {"ocr.regions": -1, "ocr.pixel_region": -1}),
    "ema": ("EMAHead", {**{f"ema.z.{s}": -1 for s in range(3)}, **{f"ema.z_normed.{s}": 1 for s in range(3)}}),
    "psa": ("PSAHead", {"psa.collect.attn": 1, "psa.distribute.attn": 1}),
    "psa_even": ("PSAHead", {"psa.collect.attn": 1, "psa.distribute.attn": 1}),
    "isa": ("ISAHead", {"isa.global_attn": -1, "isa.local_attn": -1}),
    "ann": ("ANNHead", {"ann.fusion.attn": -1, "ann.context.attn": -1}),
    "apc": ("APCHead", {}),
    "da": ("DAHead", {"da.pam.attn": -1, "da.cam.attn": -1}),
}


@cache
def load(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the oracle metadata of one fixture (read once; tests must not modify them)."""
    path = FIXTURES / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        names = f.keys()                      # a safe_open handle is not iterable
        tensors = {k: f.get_tensor(k) for k in names}
        meta = json.loads(f.metadata()["oracle"])
    return tensors, meta


def head_config(meta: dict) -> dict:
    """The head's own config (OCR: the OCRHead stage of the cascade)."""
    return meta["config"][-1] if isinstance(meta["config"], list) else meta["config"]


@pytest.mark.parametrize("name", list(HEADS))
def test_fixture_is_well_formed(name):
    t, meta = load(name)
    cfg = head_config(meta)
    assert cfg["type"] == HEADS[name][0] and meta["head"] == name
    assert meta["versions"]["mmsegmentation"] == "1.2.2" and meta["versions"]["mmcv"] == "2.1.0"
    h, w = meta["feature_hw"]

    inputs = [t[f"inputs.{i}"] for i in range(4)]
    assert [tuple(x.shape[2:]) for x in inputs] == [(2 * h, 2 * w), (h, w), (h, w), (h, w)]
    assert t["logits"].shape == (1, K, h, w)
    for key, value in t.items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key
            assert value.dtype == torch.float32, key
    assert set(meta["tensors"]) == {k for k in t if not k.startswith("decode_head.")}

    # the weights: mmseg's names under decode_head., consistent with the config and the inputs
    prefix = "decode_head.1." if name == "ocr" else "decode_head."
    seg = t[prefix + "conv_seg.weight"]
    assert seg.shape == (K, cfg["channels"], 1, 1)
    in_index = cfg["in_index"]
    in_ch = cfg["in_channels"]
    if isinstance(in_index, list):
        assert [inputs[i].shape[1] for i in in_index] == in_ch
    else:
        assert inputs[in_index].shape[1] == in_ch
    tag = name.split("_")[0]
    assert all(k.split(".")[0] in {"decode_head", "inputs", tag} or k.startswith("logits") for k in t)
    bn_vars = [v for k, v in t.items() if k.endswith("running_var")]
    assert bn_vars and all((v > 0).all() for v in bn_vars)
    # nothing that mmseg zero-initialises is left at zero (the attention branch contributes)
    for key, value in t.items():
        if key.startswith("decode_head.") and value.is_floating_point():
            assert value.abs().max() > 0, f"{key} is all zero"


@pytest.mark.parametrize("name", list(HEADS))
def test_softmax_maps_are_distributions_that_are_neither_flat_nor_one_hot(name):
    t, meta = load(name)
    dists = HEADS[name][1]
    assert meta["distributions"] == dists
    for key, axis in dists.items():
        p = t[key].double()
        assert (p >= 0).all(), key
        sums = p.sum(axis)
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5), f"{key}: rows sum to {sums.min()}..{sums.max()}"
        n = p.shape[axis]
        top = p.amax(axis).mean().item()
        assert 1.2 / n < top < 0.9, f"{key}: mean row max {top} (n={n}) is flat or one-hot"


def test_nonlocal_family_shapes():
    h, w = 9, 11
    n = h * w
    t, _ = load("nl")
    d = t["nl.theta"].shape[-1]
    assert t["nl.attn"].shape == (1, n, n) and t["nl.phi"].shape == (1, d, n)
    assert t["decode_head.nl_block.theta.conv.weight"].shape == (d, 2 * d, 1, 1)      # reduction 2
    t, meta = load("dnl")
    assert t["dnl.attn_pairwise"].shape == (1, n, n) and t["dnl.unary"].shape == (1, 1, n)
    assert meta["config"]["temperature"] == 0.05 and meta["config"]["use_scale"] is True
    # the whitened queries/keys are the raw ones minus their mean over positions
    theta = t["dnl.theta"].flatten(2).transpose(1, 2)
    assert torch.allclose(t["dnl.theta_white"], theta - theta.mean(1, keepdim=True), atol=1e-6)
    assert t["dnl.theta_white"].mean(1).abs().max() < 1e-5
    t, _ = load("gc")
    assert t["gc.mask"].shape == (1, 1, n) and t["decode_head.gc_block.conv_mask.weight"].shape[0] == 1


def test_criss_cross_weights_skip_the_query_cell_and_the_second_loop_sees_the_first():
    t, meta = load("cc")
    h, w = meta["feature_hw"]
    assert t["decode_head.cca.gamma.scale"].shape == ()          # mmcv's Scale: a 0-d parameter
    assert t["decode_head.cca.gamma.scale"].item() != 0
    for loop in (1, 2):
        a = t[f"cc.loop{loop}.attn"]
        assert a.shape == (1, h, w, h + w)
        rows = torch.arange(h)
        own = a[0, rows, :, rows]                                 # column part at the query's own row
        assert (own == 0).all()
        assert (a[..., :h] > 0).sum() == h * w * (h - 1)          # every other column cell has weight
    assert torch.equal(t["cc.loop2.x"], t["cc.loop1.out"])


def test_factored_heads_shapes():
    n = 9 * 11
    t, _ = load("ocr")
    assert t["ocr.regions"].shape == (1, K, n) and t["ocr.pixel_region"].shape == (1, n, K)
    assert t["logits_coarse"].shape == (1, K, 9, 11)
    assert t["decode_head.0.convs.0.conv.weight"].shape[1] == t["inputs.2"].shape[1]   # layer3
    t, meta = load("ema")
    k = meta["config"]["num_bases"]
    assert t["decode_head.ema_module.bases"].shape == (1, meta["config"]["ema_channels"], k)
    for s in range(3):
        assert t[f"ema.z.{s}"].shape == (1, n, k)
        assert torch.allclose(t[f"ema.bases.{s}"].norm(dim=1), torch.ones(1, k), atol=1e-5)
    t, meta = load("ann")
    assert sum(s * s for s in meta["config"]["key_pool_scales"]) == 110
    assert t["ann.fusion.attn"].shape == (1, n, 110) and t["ann.context.attn"].shape == (1, n, 110)
    for part in ("conv.weight", "bn.running_mean"):          # APNB shares one key/query projection
        assert torch.equal(t[f"decode_head.context.stages.0.key_project.{part}"],
                           t[f"decode_head.context.stages.0.query_project.{part}"])
    assert not torch.equal(t["decode_head.fusion.stages.0.key_project.bn.running_mean"][:1],
                           t["decode_head.fusion.stages.0.query_project.bn.running_mean"][:1])
    t, meta = load("apc")
    for i, s in enumerate(meta["config"]["pool_scales"]):
        a = t[f"apc.acm{i}.affinity"]
        assert a.shape == (1, n, s * s) and (a > 0).all() and (a < 1).all()    # sigmoid, not a softmax
        assert torch.allclose(a, torch.sigmoid(t[f"apc.acm{i}.affinity_logits"]))
    t, _ = load("da")
    c = t["da.cam.x"].shape[1]
    assert t["da.pam.attn"].shape == (1, n, n) and t["da.cam.attn"].shape == (1, c, c)
    assert t["decode_head.pam.gamma.scale"].item() != 0 and t["decode_head.cam.gamma.scale"].item() != 0


def test_isa_groups_match_the_padded_lattice():
    t, meta = load("isa")
    lh, lw = meta["isa"]["loc_hw"]
    gh, gw = meta["isa"]["glb_hw"]
    h, w = meta["feature_hw"]
    assert (gh, gw) == (math.ceil(h / lh), math.ceil(w / lw)) and meta["isa"]["pad_hw"] == [gh * lh - h, gw * lw - w]
    assert t["isa.global_attn"].shape == (lh * lw, gh * gw, gh * gw)
    assert t["isa.local_attn"].shape == (gh * gw, lh * lw, lh * lw)
    assert t["isa.global.x"].shape[0] == lh * lw and t["isa.local.x"].shape[0] == gh * gw


@pytest.mark.parametrize("name", ["psa", "psa_even"])
def test_psa_buffers_are_zero_outside_each_window(name):
    t, meta = load(name)
    hs, ws = meta["psa"]["shrunk_hw"]
    h, w = meta["feature_hw"]
    both_odd = h % 2 and w % 2
    assert (hs, ws) == (((h - 1) // 2 + 1, (w - 1) // 2 + 1) if both_odd else (h // 2, w // 2))
    assert meta["psa"]["align_corners_after_shrink"] == bool(both_odd)
    mh, mw = meta["config"]["mask_size"]
    n = hs * ws
    assert t["decode_head.attention.1.weight"].shape == (mh * mw, meta["config"]["channels"], 1, 1)
    ys, xs = torch.meshgrid(torch.arange(hs), torch.arange(ws), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    inside = ((ys[:, None] - ys[None, :]).abs() <= (mh - 1) // 2) & ((xs[:, None] - xs[None, :]).abs() <= (mw - 1) // 2)
    for branch in ("collect", "distribute"):
        buf = t[f"psa.{branch}.buffer"].reshape(n, n)
        assert t[f"psa.{branch}.attn"].shape == (1, n, n)
        assert (buf[~inside] == 0).all() and (buf[inside] != 0).all()
    # whether the window covers the whole shrunk map: not for psa (5x6 grid), yes for psa_even (4x5)
    assert bool(inside.all()) == (name == "psa_even")


def test_fixture_sizes():
    files = sorted(FIXTURES.glob("*.safetensors"))
    assert {f.stem for f in files} == set(HEADS)
    assert all(f.stat().st_size < 300_000 for f in files)
    assert sum(f.stat().st_size for f in FIXTURES.iterdir()) < 3_000_000


# ---- the key/shape listings at the published widths ---------------------------------------------

def listing(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}_keys.json").read_text())


def test_resnetv1c_backbone_listings():
    r50, r101 = listing("resnetv1c50")["keys"], listing("resnetv1c101")["keys"]
    assert len(r50) == 330 and len(r101) == 636
    for keys in (r50, r101):
        assert keys["backbone.stem.0.weight"] == [32, 3, 3, 3]          # the V1c deep stem
        assert keys["backbone.stem.6.weight"] == [64, 32, 3, 3]
        assert keys["backbone.layer4.2.conv3.weight"] == [2048, 512, 1, 1]
        assert all(k.startswith("backbone.") for k in keys)
    assert "backbone.layer3.22.conv1.weight" in r101 and "backbone.layer3.6.conv1.weight" not in r50


@pytest.mark.parametrize(("name", "key", "shape"), [
    ("nl", "decode_head.nl_block.theta.conv.weight", [256, 512, 1, 1]),
    ("nl", "decode_head.conv_cat.conv.weight", [512, 2560, 3, 3]),
    ("dnl", "decode_head.dnl_block.conv_mask.weight", [1, 512, 1, 1]),
    ("gc", "decode_head.gc_block.channel_add_conv.1.weight", [128, 1, 1]),
    ("cc", "decode_head.cca.gamma.scale", []),
    ("cc", "decode_head.cca.query_conv.weight", [64, 512, 1, 1]),
    ("ema", "decode_head.ema_module.bases", [1, 512, 64]),
    ("psa", "decode_head.attention.1.weight", [9409, 512, 1, 1]),
    ("psa", "decode_head.proj.conv.weight", [2048, 1024, 1, 1]),
    ("isa", "decode_head.global_relation.key_project.1.conv.weight", [256, 256, 1, 1]),
    ("ann", "decode_head.fusion.stages.0.key_project.conv.weight", [256, 1024, 1, 1]),
    ("apc", "decode_head.acm_modules.3.gla.weight", [36, 512, 1, 1]),
    ("da", "decode_head.pam.query_project.weight", [64, 512, 1, 1]),
    ("ocr_r101", "decode_head.0.convs.0.conv.weight", [256, 1024, 3, 3]),
    ("ocr_r101", "decode_head.1.object_context_block.query_project.0.conv.weight", [256, 512, 1, 1]),
    ("ocr_hr18", "decode_head.1.bottleneck.conv.weight", [512, 270, 3, 3]),
    ("ocr_hr48", "decode_head.1.bottleneck.conv.weight", [512, 720, 3, 3]),
])
def test_published_width_listings(name, key, shape):
    lst = listing(f"{name}_cityscapes")
    assert lst["keys"][key] == shape
    assert lst["config"].startswith("mmseg/.mim/configs/")
    heads = {k.split(".")[0] for k in lst["keys"]}
    if name.startswith("ocr"):
        assert heads == {"decode_head"} and lst["auxiliary_head_config"] is None
        assert lst["keys"]["decode_head.1.conv_seg.weight"][0] == 19
    else:
        assert heads == {"decode_head", "auxiliary_head"}
        assert lst["keys"]["decode_head.conv_seg.weight"][0] == 19
        assert lst["keys"]["auxiliary_head.convs.0.conv.weight"] == [256, 1024, 3, 3]
        assert lst["backbone_keys_file"] == "resnetv1c50_keys.json"
    if name.startswith("ocr_hr"):
        assert len(lst["backbone_keys"]) == 1830
