"""The native NL, GC, DNL and CC heads against the real mmseg 1.2.2 code's outputs.

The fixtures (tests/fixtures/mmseg/, tools/oracle/README.md) hold mmseg's own ``decode_head.*``
weights, the backbone features, the logits and the attention tensors captured inside mmseg's
forward. Each head here loads those weights by its ``keys["mmseg"]`` table, runs on the feature
mmseg's ``in_index=3`` picks (the backbone's last, which is what our segmentor hands a head), and
must reproduce the logits, each block's output and every attention object; its maps' rows, mean
row and columns must equal the fixture's dense matrices. Then hand-made inputs with known
answers, the published configs' key listings, and the heads end to end in a segmentor.
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import danet
from danet.data.normalise import IMAGENET_MEAN, IMAGENET_STD, to_tensor
from danet.maps import Grid
from danet.models.heads import get_head
from danet.models.heads.cc import criss_cross_aggregate, criss_cross_weights
from danet.models.segmentor import DANetConfig, Segmentor

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mmseg"
ATOL = 1e-5
HEADS = ("nl", "gc", "dnl", "cc")


def rename(name: str, table: dict[str, str]) -> str | None:
    """The longest table entry that is ``name`` or a module prefix of it (the checkpoint rule)."""
    best = max((old for old in table if name == old or name.startswith(old + ".")), key=len, default=None)
    return None if best is None else table[best] + name[len(best):]


@cache
def fixture(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(FIXTURES / f"{name}.safetensors", "pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, json.loads(handle.metadata()["oracle"])  # noqa: SIM118 (safe_open is not iterable)


def mmseg_head(name: str):
    """Our head built from the fixture's shapes (plus the settings no shape holds), with its weights."""
    tensors, meta = fixture(name)
    config, cls = meta["config"], get_head(name)
    table = cls.keys["mmseg"].table
    state = {}
    for key, tensor in tensors.items():
        if key.startswith("decode_head."):
            ours = rename(key[len("decode_head."):], table)
            assert ours is not None, f"{key} has no place in our {name} head"
            state[ours] = tensor
    options = cls.options_from_shapes(lambda key: tuple(state[key].shape))
    num_classes = options.pop("num_classes")
    options.update({k: config[k] for k in ("temperature", "recurrence") if k in config})
    head = cls.build(config["in_channels"], num_classes, options).eval()
    own = head.state_dict()
    state = {k: v.reshape(1) if own[k].shape == (1,) and v.dim() == 0 else v for k, v in state.items()}
    head.load_state_dict(state, strict=True)
    return head, tensors, config


@cache
def run(name: str):
    head, tensors, config = mmseg_head(name)
    x = tensors[f"inputs.{config['in_index']}"]
    with torch.inference_mode():
        state = head.inspect(x)
    kept = {k: v[0] for k, v in state.kept.items()}
    grid = Grid((8 * x.shape[-2], 8 * x.shape[-1]), tuple(x.shape[-2:]))
    return head, tensors, state, head.maps(kept, grid), grid


def dense_cross(weights: torch.Tensor) -> torch.Tensor:
    """(h, w, h + w) criss-cross weights as the dense N x N matrix they stand for (small grids)."""
    h, w = weights.shape[:2]
    dense = torch.zeros(h, w, h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            dense[i, j, :, j] += weights[i, j, :h]
            dense[i, j, i, :] += weights[i, j, h:]
    return dense.reshape(h * w, h * w)


def reference_maps(name: str, tensors: dict, cells: int) -> dict[str, torch.Tensor]:
    """Each of our maps' dense N x N matrix, from the tensors mmseg captured."""
    if name == "nl":
        return {"nl": tensors["nl.attn"][0]}
    if name == "dnl":
        return {"pairwise": tensors["dnl.attn_pairwise"][0], "unary": tensors["dnl.unary"][0, 0].expand(cells, -1)}
    if name == "gc":
        return {"gc": tensors["gc.mask"][0, 0].expand(cells, -1)}
    first, second = dense_cross(tensors["cc.loop1.attn"][0]), dense_cross(tensors["cc.loop2.attn"][0])
    return {"loop1": first, "loop2": second, "composed": second @ first}


def diff(a, b) -> float:
    return float((torch.as_tensor(np.asarray(a), dtype=torch.float64)
                  - torch.as_tensor(np.asarray(b), dtype=torch.float64)).abs().max())


@pytest.mark.parametrize("name", HEADS)
def test_logits_match_mmseg(name):
    _, tensors, state, _, _ = run(name)
    reference = tensors["logits"]
    assert list(state.logits) == ["out"]
    assert diff(state.logits["out"], reference) < ATOL
    assert diff(state.logits["out"], reference) / float(reference.abs().max()) < 1e-3


@pytest.mark.parametrize("name", HEADS)
def test_block_output_matches_mmseg(name):
    """Each block alone, on mmseg's captured block input: the block's own output."""
    head, tensors, *_ = run(name)
    with torch.inference_mode():
        if name == "cc":
            for loop in ("loop1", "loop2"):
                out, weights = head.cca.attend(tensors[f"cc.{loop}.x"])
                assert diff(out, tensors[f"cc.{loop}.out"]) < ATOL
                assert diff(weights, tensors[f"cc.{loop}.attn"]) < ATOL
        else:
            block = getattr(head, f"{name}_block")
            assert diff(block.attend(tensors[f"{name}.x"])[0], tensors[f"{name}.out"]) < ATOL


@pytest.mark.parametrize("name", HEADS)
def test_kept_tensors_are_mmseg_attention_objects(name):
    _, tensors, state, _, _ = run(name)
    kept = state.kept
    if name == "nl":
        assert diff(kept["nl_query"], tensors["nl.theta"]) < ATOL
        assert diff(kept["nl_key"], tensors["nl.phi"].transpose(1, 2)) < ATOL
    elif name == "dnl":
        assert diff(kept["dnl_query"], tensors["dnl.theta_white"]) < ATOL
        assert diff(kept["dnl_key"], tensors["dnl.phi_white"].transpose(1, 2)) < ATOL
        assert diff(kept["dnl_unary"], tensors["dnl.unary"][:, 0]) < ATOL
    elif name == "gc":
        assert diff(kept["gc_mask"], tensors["gc.mask"][:, 0]) < ATOL
    else:
        assert diff(kept["cc_loop1"], tensors["cc.loop1.attn"]) < ATOL
        assert diff(kept["cc_loop2"], tensors["cc.loop2.attn"]) < ATOL
        assert diff(kept["cc_input"], tensors["cc.loop1.x"]) < ATOL
        # what the loops keep is O(N (h + w)), never N x N
        h, w = tensors["cc.loop1.x"].shape[-2:]
        assert all(kept[f"cc_loop{i}"].shape == (1, h, w, h + w) for i in (1, 2))


@pytest.mark.parametrize("name", HEADS)
def test_maps_equal_the_dense_reference(name):
    """Rows of all queries, the mean row and three columns, against mmseg's dense matrices."""
    _, tensors, _, maps, grid = run(name)
    reference = reference_maps(name, tensors, grid.cells)
    assert list(maps) == list(reference)
    everyone = torch.arange(grid.cells)
    for map_name, dense in reference.items():
        attention_map = maps[map_name]
        assert diff(attention_map.rows_at(everyone), dense) < ATOL, map_name
        assert diff(attention_map.mean_row(), dense.double().mean(0)) < ATOL, map_name
        for cell in (0, 17, grid.cells - 1):
            assert diff(attention_map.column(cell), dense[:, cell]) < ATOL, map_name
        # rows of an input-pixel point are the (h, w) picture of the same row
        picture = attention_map.rows([(3.0, 3.0)])
        assert picture.shape == (1, *grid.grid_size)
        assert diff(picture.reshape(-1), dense[0]) < ATOL


def test_map_flags_say_what_each_map_is():
    flags = {name: {m: a.flags for m, a in run(name)[3].items()} for name in HEADS}
    assert flags["nl"]["nl"].query_dependent and flags["nl"]["nl"].exact
    assert not flags["gc"]["gc"].query_dependent
    assert flags["dnl"]["pairwise"].query_dependent and not flags["dnl"]["unary"].query_dependent
    assert flags["cc"]["loop1"].exact and flags["cc"]["loop2"].exact and not flags["cc"]["composed"].exact
    assert all(f.distribution for per_head in flags.values() for f in per_head.values())


# ---- hand-made inputs with known answers ------------------------------------------------------
def test_identical_features_give_uniform_rows():
    """Every position entering the block the same: every non-local and pairwise row is uniform
    (1/N); the DNL whitening leaves all-zero queries there (the wrapper's 3x3 convs are not
    involved: their zero padding would make the border differ)."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, 1, 1).expand(1, 8, 5, 7).contiguous()
    grid = Grid((40, 56), (5, 7))
    for name in ("nl", "dnl"):
        head = get_head(name).build(16, 3, {"channels": 8}).eval()
        with torch.inference_mode():
            _, query, key, *rest = getattr(head, f"{name}_block").attend(x)
        kept = {f"{name}_query": query[0], f"{name}_key": key[0], **({"dnl_unary": rest[0][0]} if rest else {})}
        assert float(query.std(1).max()) < 1e-6
        attention_map = head.maps(kept, grid)["nl" if name == "nl" else "pairwise"]
        rows = attention_map.rows_at(torch.arange(grid.cells))
        assert torch.allclose(rows, torch.full_like(rows, 1 / grid.cells), atol=1e-6)


def test_gc_rows_are_all_identical_and_sum_to_one():
    torch.manual_seed(1)
    head = get_head("gc").build(16, 3, {"channels": 8}).eval()
    with torch.inference_mode():
        kept = {k: v[0] for k, v in head.inspect(torch.randn(1, 16, 6, 9)).kept.items()}
    rows = head.maps(kept, Grid((48, 72), (6, 9)))["gc"].rows_at(torch.arange(54))
    assert float(rows.std(0).max()) == 0.0 and rows[0].std() > 0
    assert torch.allclose(rows.sum(1), torch.ones(54))


def test_two_loop_composition_equals_brute_force_dense_product():
    torch.manual_seed(2)
    head = get_head("cc").build(16, 3, {"channels": 16}).eval()
    with torch.no_grad():
        head.cca.gamma.fill_(0.8)
        kept = {k: v[0] for k, v in head.inspect(torch.randn(1, 16, 5, 6)).kept.items()}
    grid = Grid((40, 48), (5, 6))
    maps = head.maps(kept, grid)
    product = dense_cross(kept["cc_loop2"]) @ dense_cross(kept["cc_loop1"])
    assert diff(maps["composed"].rows_at(torch.arange(30)), product) < 1e-6
    assert (product > 0).all()          # two loops reach the whole image
    assert (dense_cross(kept["cc_loop1"]) == 0).any()


def test_criss_cross_kernel_equals_a_dense_masked_softmax():
    """Our (h, w, h + w) kernel against a dense softmax over each cross, written independently."""
    torch.manual_seed(3)
    q, k, v = torch.randn(1, 4, 5, 6), torch.randn(1, 4, 5, 6), torch.randn(1, 3, 5, 6)
    h, w = 5, 6
    energy = torch.einsum("ci,cj->ij", q[0].reshape(4, -1), k[0].reshape(4, -1)).reshape(h, w, h, w)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cross = (rows[:, :, None, None] == rows[None, None]) | (cols[:, :, None, None] == cols[None, None])
    attn = torch.softmax(energy.masked_fill(~cross, float("-inf")).reshape(h * w, -1), -1)
    out = (v[0].reshape(3, -1) @ attn.T).reshape(1, 3, h, w)
    weights = criss_cross_weights(q, k)
    assert diff(dense_cross(weights[0]), attn) < 1e-6
    assert diff(criss_cross_aggregate(weights, v), out) < 1e-5


# ---- key tables against the published configs' listings ----------------------------------------
@pytest.mark.parametrize("name", HEADS)
def test_published_mmseg_keys_build_our_head_exactly(name):
    """The r50-d8 Cityscapes model's decode_head keys and shapes: options from shapes alone build a
    head whose state dict is exactly those keys (by the table) with those shapes."""
    listing = json.loads((FIXTURES / f"{name}_cityscapes_keys.json").read_text())
    cls = get_head(name)
    table = cls.keys["mmseg"].table
    shapes = {rename(k[len("decode_head."):], table): tuple(s) for k, s in listing["keys"].items()
              if k.startswith("decode_head.")}
    assert None not in shapes
    assert any(k.startswith(cls.keys["mmseg"].marker + ".") for k in shapes)
    options = cls.options_from_shapes(lambda key: shapes[key])
    num_classes = options.pop("num_classes")
    with torch.device("meta"):
        head = cls.build(listing["decode_head_config"]["in_channels"], num_classes, options)
    own = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    fixed = {k: (1,) if s == () and k.endswith("gamma") else s for k, s in shapes.items()}   # mmseg's 0-d Scale
    assert own == fixed
    assert set(options) <= set(cls.option_names)


def test_markers_tell_the_heads_apart():
    markers = {name: get_head(name).keys["mmseg"].marker for name in (*HEADS, "da")}
    for name in HEADS:
        listing = json.loads((FIXTURES / f"{name}_cityscapes_keys.json").read_text())
        present = {k.split(".")[1] for k in listing["keys"] if k.startswith("decode_head.")}
        assert [h for h, marker in markers.items() if marker in present] == [name]


def test_official_ccnet_names_fill_every_module():
    """speedinghzl/CCNet's RCCAModule names (conva, cca, convb, bottleneck.{0,1,3})."""
    cls = get_head("cc")
    head = cls.build(64, 4, {"channels": 16, "act": "leaky_relu"})
    table = cls.keys["official"].table
    ours = {rename(m, table) for m in ("conva.0", "conva.1", "convb.0", "convb.1", "bottleneck.0",
                                       "bottleneck.1", "bottleneck.3", "cca.query_conv", "cca.key_conv",
                                       "cca.value_conv", "cca.gamma")}
    modules = {k.rsplit(".", 1)[0] if not k.endswith("gamma") else k for k in head.state_dict()}
    assert ours == modules
    assert head.conv_cat.act == "leaky_relu"


# ---- end to end ----------------------------------------------------------------------------------
@cache
def segmentor(name: str) -> Segmentor:
    torch.manual_seed(4)
    model = Segmentor(DANetConfig(num_classes=5, backbone="resnet18", head=name,
                                  head_options={"channels": 32})).eval()
    if name == "cc":
        with torch.no_grad():
            model.head.cca.gamma.fill_(0.5)
    return model


IMAGE = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("name", HEADS)
def test_inspect_image_end_to_end(name):
    model = segmentor(name)
    result = danet.inspect_image(model, IMAGE)
    assert list(result.logits) == ["out"] and result.logits["out"].shape == (5, 64, 96)
    expected = {"nl": ["nl"], "gc": ["gc"], "dnl": ["pairwise", "unary"], "cc": ["loop1", "loop2", "composed"]}
    assert list(result.maps) == expected[name]
    for attention_map in result.maps.values():
        rows = attention_map.rows([(5.0, 5.0), (90.0, 60.0)])
        assert rows.shape == (2, *result.grid_size)
        if attention_map.flags.distribution:
            assert np.allclose(rows.reshape(2, -1).sum(1), 1.0, atol=1e-5)
            assert (rows >= 0).all()
    with torch.inference_mode():
        direct = model(torch.as_tensor(result_input(model)))["out"][0]
    assert diff(result.logits["out"], direct) < 1e-4


def result_input(model):
    return to_tensor(IMAGE, IMAGENET_MEAN, IMAGENET_STD)


def test_cc_recompute_switches_gamma_off():
    """Recomputed from kept alone: as run (gamma on) and as a copy of the model with gamma = 0."""
    model = segmentor("cc")
    result = danet.inspect_image(model, IMAGE)
    x = result_input(model)
    with torch.inference_mode():
        grid_logits = model.head(model.backbone(x))["out"][0]
    on = model.head.recompute(result.kept, frozenset())
    off = model.head.recompute(result.kept, frozenset({"cc"}))
    assert diff(on["out"], grid_logits) < 1e-5
    zeroed = Segmentor(model.config).eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        zeroed.head.cca.gamma.zero_()
        reference = zeroed.head(zeroed.backbone(x))["out"][0]
    assert diff(off["out"], reference) < 1e-5
    assert diff(off["out"], on["out"]) > 1e-3
    assert result.gains == {"cc": 0.5}


@pytest.mark.parametrize("name", ("nl", "gc", "dnl"))
def test_heads_without_a_scalar_gain_say_they_cannot_recompute(name):
    model = segmentor(name)
    with pytest.raises(NotImplementedError):
        model.head.recompute({}, frozenset())
    assert model.head.gains() == {}
