"""Model maths against references written out here: PAM, CAM, the DA head, inspection rows,
thread safety, backbone strides/dilations, stems, and PAM memory on a large grid."""
from __future__ import annotations

import threading
import time

import numpy as np
import psutil
import pytest
import torch
import torch.nn.functional as F

import danet.maps.dot_softmax as attention
from danet.inspection import inspect_image, to_tensor
from danet.models import ChannelAttention, DAHead, PositionAttention, pam_aggregate
from danet.models.backbones import DilatedResNet
from conftest import make_tiny_model
from helpers_checkpoints import randomize

torch.manual_seed(0)


# ---- references, written the way the official code does it (docs/checkpoint-formats.md §1.3) -
def reference_pam(x, query_conv, key_conv, value_conv, gamma):
    b, c, h, w = x.shape
    n = h * w
    proj_query = query_conv(x).view(b, -1, n).permute(0, 2, 1)        # B, N, d
    proj_key = key_conv(x).view(b, -1, n)                               # B, d, N
    energy = torch.bmm(proj_query, proj_key)                            # B, N, N
    attn = torch.softmax(energy, dim=-1)
    proj_value = value_conv(x).view(b, -1, n)                           # B, C, N
    out = torch.bmm(proj_value, attn.permute(0, 2, 1)).view(b, c, h, w)
    return gamma * out + x, attn


def reference_cam(x, gamma):
    b, c, h, w = x.shape
    flat = x.view(b, c, -1)
    energy = torch.bmm(flat, flat.permute(0, 2, 1))
    energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
    attn = torch.softmax(energy_new, dim=-1)
    return gamma * torch.bmm(attn, flat).view(b, c, h, w) + x, attn


def reference_conv_bn_relu(x, seq):
    conv, bn = seq[0], seq[1]
    y = F.conv2d(x, conv.weight, None, 1, 1)
    y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return F.relu(y)


def reference_head(head: DAHead, x):
    pam_in = reference_conv_bn_relu(x, head.pam_in_conv)
    pam_out, _ = reference_pam(pam_in, head.pam.query, head.pam.key, head.pam.value, head.pam.alpha)
    pam_feat = reference_conv_bn_relu(pam_out, head.pam_out_conv)
    cam_out, _ = reference_cam(reference_conv_bn_relu(x, head.cam_in_conv), head.cam.beta)
    cam_feat = reference_conv_bn_relu(cam_out, head.cam_out_conv)

    def classify(seq, feat):
        return F.conv2d(feat, seq[1].weight, seq[1].bias)
    return (classify(head.fused_classifier, pam_feat + cam_feat), classify(head.pam_classifier, pam_feat),
            classify(head.cam_classifier, cam_feat))


# ---- PAM / CAM ----------------------------------------------------------------------------
@pytest.mark.parametrize("d,c", [(8, 24), (16, 16)])
def test_pam_aggregate_methods_match_reference(d, c):
    q, k, v = torch.randn(2, 300, d), torch.randn(2, 300, d), torch.randn(2, 300, c)
    expected = torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)), -1), v)   # no 1/sqrt(d)
    for method in ("explicit", "chunked", "sdpa", "auto"):
        torch.testing.assert_close(pam_aggregate(q, k, v, method), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown attention method"):
        pam_aggregate(q, k, v, "fast")


@pytest.mark.parametrize("method", ["explicit", "sdpa"])
def test_position_attention_matches_official_maths(method):
    pam = PositionAttention(32, method=method).eval()
    with torch.no_grad():
        pam.alpha.fill_(0.8)
    x = torch.randn(2, 32, 6, 7)
    with torch.no_grad():
        got, query, key, _ = pam.attend(x)
        want, attn = reference_pam(x, pam.query, pam.key, pam.value, pam.alpha)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.softmax(query @ key.transpose(1, 2), -1), attn, rtol=1e-5, atol=1e-6)


def test_channel_attention_matches_max_minus_energy_reference():
    cam = ChannelAttention().eval()
    with torch.no_grad():
        cam.beta.fill_(0.4)
    x = torch.randn(2, 12, 5, 6)
    with torch.no_grad():
        got, attn = cam.attend(x)
        want, want_attn = reference_cam(x, cam.beta)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(attn, want_attn, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 12))
    # max-minus-energy inverts similarity: each channel's most similar channel gets the least weight
    energy = torch.bmm(x.flatten(2), x.flatten(2).transpose(1, 2))
    assert torch.equal(attn.argmin(-1), energy.argmax(-1))


def test_da_head_matches_hand_written_forward():
    head = DAHead(48, num_classes=5, inter_channels=16).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, tensor in head.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
        head.pam.alpha.fill_(0.6)
        head.cam.beta.fill_(-0.3)
        x = torch.randn(1, 48, 7, 9)
        got = head(x)
        want = reference_head(head, x)
    for name, g, w in zip(("fused", "pam", "cam"), got.values(), want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5, msg=name)


# ---- inspection ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model():
    return randomize(make_tiny_model(5, backbone="resnet18", head_channels=32), seed=4)


def image(seed: int, size=(72, 96)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


def test_inspection_rows_equal_explicit_softmax_rows(small_model):
    img = image(0)
    result = inspect_image(small_model, img)
    with torch.no_grad():
        features = small_model.backbone(to_tensor(img))
        pam_in = small_model.head.pam_in_conv(features)
        _, attn = reference_pam(pam_in, small_model.head.pam.query, small_model.head.pam.key,
                                small_model.head.pam.value, small_model.head.pam.alpha)
        fused = small_model(to_tensor(img))["fused"][0]
    gh, gw = result.grid_size
    assert (gh, gw) == tuple(features.shape[-2:]) == (9, 12)
    torch.testing.assert_close(result.fused_logits, fused, rtol=1e-4, atol=1e-4)
    points = [(0, 0), (95, 71), (40.5, 30.2), (13, 60)]
    rows = result.rows(points)
    assert rows.shape == (4, gh, gw)
    for (x, y), row in zip(points, rows):
        index = int(y * gh / 72) * gw + int(x * gw / 96)
        np.testing.assert_allclose(row.ravel(), attn[0, index].numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rows.reshape(4, -1).sum(1), 1.0, rtol=1e-5)
    up = result.rows_upsampled(points)
    assert up.shape == (4, 72, 96)
    assert (up >= rows.min() - 1e-6).all() and (up.max(axis=(1, 2)) <= rows.max(axis=(1, 2)) + 1e-6).all()


def test_two_threads_get_their_own_results(small_model):
    images = [image(1), image(2)]
    points = [[(10, 10), (50, 40)], [(70, 5), (3, 60)]]
    sequential = [inspect_image(small_model, img) for img in images]
    outcomes: dict[int, list] = {0: [], 1: []}
    barrier = threading.Barrier(2)

    def work(i):
        barrier.wait()
        for _ in range(3):
            outcomes[i].append(inspect_image(small_model, images[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        assert len(outcomes[i]) == 3
        for result in outcomes[i]:
            assert result.image_size == sequential[i].image_size
            torch.testing.assert_close(result.fused_logits, sequential[i].fused_logits, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(result.rows(points[i]), sequential[i].rows(points[i]), rtol=1e-5, atol=1e-7)
    assert not np.allclose(sequential[0].rows([(10, 10)]), sequential[1].rows([(10, 10)]))


# ---- backbones and stems ------------------------------------------------------------------
def dilations(layer) -> list[int]:
    result = []
    for block in layer:
        conv = block.conv2 if hasattr(block, "conv3") else block.conv1
        result.append(conv.dilation[0])
    return result


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_backbone_output_stride(stride):
    backbone = DilatedResNet(18, "7x7", stride).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 512, 64 // stride, 96 // stride)


@pytest.mark.parametrize("stride,multi_grid,layer3,layer4", [
    (8, False, [1, 2, 2, 2, 2, 2], [2, 4, 4]),
    (8, True, [1, 2, 2, 2, 2, 2], [4, 8, 16]),
    (16, False, [1] * 6, [1, 2, 2]),
    (16, True, [1] * 6, [2, 4, 8]),
    (32, False, [1] * 6, [1, 1, 1]),
])
def test_resnet50_dilations(stride, multi_grid, layer3, layer4):
    backbone = DilatedResNet(50, "7x7", stride, multi_grid)
    assert dilations(backbone.layer3) == layer3
    assert dilations(backbone.layer4) == layer4
    strides = [backbone.layer3[0].conv2.stride[0], backbone.layer4[0].conv2.stride[0]]
    assert strides == {8: [1, 1], 16: [2, 1], 32: [2, 2]}[stride]


@pytest.mark.parametrize("stem,shapes,layer1_in", [
    ("7x7", {"stem.0.weight": (64, 3, 7, 7), "stem.1.weight": (64,)}, 64),
    ("deep32", {"stem.0.weight": (32, 3, 3, 3), "stem.1.weight": (32,), "stem.3.weight": (32, 32, 3, 3),
                "stem.4.weight": (32,), "stem.6.weight": (64, 32, 3, 3), "stem.7.weight": (64,)}, 64),
    ("deep64", {"stem.0.weight": (64, 3, 3, 3), "stem.1.weight": (64,), "stem.3.weight": (64, 64, 3, 3),
                "stem.4.weight": (64,), "stem.6.weight": (128, 64, 3, 3), "stem.7.weight": (128,)}, 128),
])
def test_stem_key_shapes(stem, shapes, layer1_in):
    state = DilatedResNet(50, stem).state_dict()
    stem_weights = {k: tuple(v.shape) for k, v in state.items() if k.startswith("stem.") and k.endswith("weight")}
    assert stem_weights == shapes
    assert tuple(state["layer1.0.conv1.weight"].shape) == (64, layer1_in, 1, 1)
    assert tuple(state["layer1.0.downsample.0.weight"].shape) == (256, layer1_in, 1, 1)
    assert state["stem.0.weight"].shape[1] == 3


# ---- PAM memory on a 2048x1024-equivalent grid ------------------------------------------
def test_auto_picks_explicit_for_small_grids(monkeypatch):
    calls = []
    original = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    n = attention.EXPLICIT_MAX_POSITIONS
    pam_aggregate(torch.randn(1, n, 2), torch.randn(1, n, 2), torch.randn(1, n, 4), "auto")
    assert calls == []


def test_auto_path_per_device():
    n = attention.EXPLICIT_MAX_POSITIONS
    assert attention.method_for(n, "cpu") == attention.method_for(n, "cuda") == "explicit"
    assert attention.method_for(n + 1, "cpu") == "chunked"
    assert attention.method_for(n + 1, "cuda") == "sdpa"


def test_chunked_path_splits_queries_and_matches_explicit(monkeypatch):
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 50 * 7)   # blocks of 7 queries over N = 50
    q, k, v = torch.randn(2, 50, 3), torch.randn(2, 50, 3), torch.randn(2, 50, 5)
    torch.testing.assert_close(pam_aggregate(q, k, v, "chunked"), pam_aggregate(q, k, v, "explicit"))


@pytest.mark.slow
@pytest.mark.parametrize("method, sdpa_calls", [("auto", 0), ("sdpa", 1)])
def test_large_grid_never_builds_an_n_by_n_matrix(monkeypatch, method, sdpa_calls):
    """N = 128 x 256 (a 2048x1024 image at stride 8): the N x N fp32 matrix would be 4 GiB.

    On the CPU ``auto`` takes the query-chunked product; ``sdpa`` is the GPU path.
    """
    h, w, channels = 128, 256, 16
    n = h * w
    assert n > attention.EXPLICIT_MAX_POSITIONS

    def no_explicit(*args, **kwargs):
        raise AssertionError("the explicit N x N path was taken")

    calls = []
    original = F.scaled_dot_product_attention
    monkeypatch.setattr(attention, "softmax_matrix", no_explicit)
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    pam = PositionAttention(channels, method=method).eval()   # key channels = 2: q/k and v differ
    with torch.no_grad():
        pam.alpha.fill_(1.0)
    x = torch.randn(1, channels, h, w)
    process = psutil.Process()
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    before = process.memory_info().rss
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with torch.no_grad():
            y, query, key, _ = pam.attend(x)
    finally:
        done.set()
        sampler.join()
    growth = peak[0] - before
    assert len(calls) == sdpa_calls
    assert growth < 4 * n * n / 16, f"PAM grew RSS by {growth / 2**20:.0f} MiB"
    # spot-check three output positions against their explicit rows
    with torch.no_grad():
        value = pam.value(x).flatten(2)[0]                         # C, N
        for index in (0, n // 2 + 77, n - 1):
            row = torch.softmax(query[0, index] @ key[0].T, -1)    # N
            want = pam.alpha * (value @ row) + x.flatten(2)[0, :, index]
            torch.testing.assert_close(y.flatten(2)[0, :, index], want, rtol=1e-3, atol=1e-4)
