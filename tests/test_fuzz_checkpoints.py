"""Property tests: whatever bytes arrive as a checkpoint, ``load_model`` returns a usable model
or raises ``CheckpointError`` — never another exception type.

Seeds are real checkpoints made here, in the three containers the loader reads: our
``.safetensors`` (with danet-lens metadata), a ``torch.save`` zip and a legacy pickle
(``_use_new_zipfile_serialization=False``), each both as a whole small DANet and as a tiny
training-style wrapper. They are mutated blindly (flips, cuts, inserts, truncation, positions
biased towards headers and zip directories where the structure lives) and with knowledge of the
container (a rewritten safetensors header or metadata value, a mutated ``data.pkl`` inside a valid
zip). Uploads are read from bytes, files from a path; both are exercised, as the app does the
latter. 60 examples per property by default; ``FUZZ_EXAMPLES=1000`` for a longer hunt.
"""
from __future__ import annotations

import functools
import io
import json
import os
import socket
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_safetensors_bytes

from conftest import make_tiny_model, save_tiny
from danet.checkpoints import CheckpointError, load_model
from danet.checkpoints.meta import LoadedModel

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(300)]

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NAMES = ("upload.safetensors", "upload.pth", "upload.pth.tar", "model.bin")
STRUCTURE_BYTES = 64 * 1024        # pickles, safetensors headers and zip directories live at the ends


# ---- seeds ------------------------------------------------------------------------------------
def _torch_bytes(obj, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


@functools.cache
def seeds() -> dict[str, bytes]:
    """name -> file bytes; names ending in ``.safetensors`` are loaded under that suffix."""
    model = make_tiny_model(3)
    with tempfile.TemporaryDirectory() as folder:
        ours = save_tiny(model, Path(folder) / "tiny.safetensors", dtype=torch.float16, val_miou=1.0).read_bytes()
    metadata = split_safetensors(ours)[0]["__metadata__"]         # the strings save_model wrote
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    small = {"epoch": 3, "best_pred": np.float64(0.5), "meta": {"CLASSES": ["a", "b", "c"], "config": "x=1"},
             "state_dict": {"module.head.conv5a.0.weight": torch.ones(4, 2, 3, 3),
                            "module.head.sa.gamma": torch.zeros(1), "pretrained.conv1.weight": torch.ones(2, 3, 7, 7),
                            "steps": torch.tensor(7)},
             "optimizer": {"param_groups": [{"lr": 0.01, "params": [0, 1]}], "state": {}}}
    small_st = save_safetensors_bytes({"head.pam.alpha": torch.zeros(1), "backbone.body.conv_stem.weight":
                                       torch.ones(2, 3, 3, 3)}, metadata=metadata)
    return {
        "model.safetensors": ours,
        "model_zip.pth": _torch_bytes(state),
        "model_legacy.pth": _torch_bytes(state, legacy=True),
        "small.safetensors": small_st,
        "small_zip.pth.tar": _torch_bytes(small),
        "small_legacy.pth.tar": _torch_bytes(small, legacy=True),
    }


SEED_NAMES = ("model.safetensors", "model_zip.pth", "model_legacy.pth", "small.safetensors", "small_zip.pth.tar",
              "small_legacy.pth.tar")


# ---- the contract -----------------------------------------------------------------------------
def load_either_way(data: bytes, name: str, via: str) -> LoadedModel:
    if via == "bytes":
        return load_model(data, name=name)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        return load_model(path)


def note(outcome_text: str) -> None:
    if currently_in_test_context():                     # plain tests call check_contract too
        event(outcome_text)


def check_contract(data: bytes, name: str, via: str = "bytes") -> LoadedModel | None:
    """Loads to a finished model, or raises CheckpointError with a message; nothing else."""
    try:
        loaded = load_either_way(data, name, via)
    except CheckpointError as error:
        assert str(error).strip(), "a CheckpointError must say what is wrong"
        note(f"refused: {outcome(str(error))}")       # --hypothesis-show-statistics lists these
        return None
    note("loaded")
    assert isinstance(loaded, LoadedModel)
    assert not loaded.model.training
    tensors = list(loaded.model.parameters()) + list(loaded.model.buffers())
    assert tensors and not any(t.is_meta for t in tensors), "every weight must come from the file"
    assert loaded.meta.config.num_classes == len(loaded.meta.classes)
    assert all(isinstance(w, str) and w for w in loaded.warnings)
    return loaded


def outcome(message: str) -> str:
    """The kind of refusal, for the statistics: which stage of the loader stopped the file."""
    for words in ("truncated or corrupted", "not a valid safetensors", "not a checkpoint", "is empty",
                  "refused to load", "metadata that cannot be read", "cannot be built", "no known layout",
                  "no weights found", "have no place", "do not fit", "is missing", "not a dict", "holds a"):
        if words in message:
            return words
    return message[:60]


# ---- blind mutations --------------------------------------------------------------------------
def position(rng, size: int) -> int:
    """Uniform within a region (hypothesis' own integers favour 0, i.e. the magic bytes)."""
    if size <= 1:
        return 0
    region = rng.choice(["head", "tail", "anywhere"])
    if region == "head":
        return rng.randrange(min(size, STRUCTURE_BYTES))
    if region == "tail":
        return rng.randrange(max(size - STRUCTURE_BYTES, 0), size)
    return rng.randrange(size)


@st.composite
def mutated_bytes(draw, original: bytes) -> bytes:
    """``original`` with 1-4 edits: byte set, slice cut, bytes inserted, range zeroed, tail cut."""
    data, rng = bytearray(original), draw(st.randoms(use_true_random=False))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "set", "cut", "insert", "zero", "truncate"]))
        where = position(rng, len(data))
        if kind == "set" and data:
            data[where] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[where:where + draw(st.integers(1, 256))]
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "zero":
            length = draw(st.integers(1, 64))
            data[where:where + length] = bytes(len(data[where:where + length]))
        else:
            del data[where:]
    return bytes(data)


@st.composite
def mutated_seed(draw, names=SEED_NAMES) -> tuple[bytes, str]:
    name = draw(st.sampled_from(names))
    return draw(mutated_bytes(seeds()[name])), name


# ---- container-aware mutations ----------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def join_safetensors(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


@st.composite
def rewritten_safetensors(draw) -> tuple[bytes, str]:
    """A valid safetensors framing around a header whose entries or metadata were changed."""
    name = draw(st.sampled_from(["model.safetensors", "small.safetensors"]))
    header, body = split_safetensors(seeds()[name])
    tensors = sorted(k for k in header if k != "__metadata__")
    metadata = header["__metadata__"]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["meta_value", "meta_value", "config_field", "config_field", "config_field",
                                     "meta_drop", "dtype", "shape", "offsets", "drop_tensor"]))
        if kind == "meta_value":
            key = draw(st.sampled_from(sorted(metadata)))
            metadata[key] = draw(st.text(max_size=40) | JSON_VALUES.map(json.dumps))
        elif kind == "config_field":
            try:
                config = json.loads(metadata["config"])
            except (KeyError, ValueError):
                continue
            if not isinstance(config, dict):
                continue
            field = draw(st.sampled_from(sorted(config) + ["unknown_field"]))
            config[field] = draw(JSON_VALUES | st.sampled_from(
                ["resnet18", "resnet7", "resnet", "mobilenetv2_100", "hf-hub:someone/model", "local-dir:/tmp",
                 "vit_tiny_patch16_224", "deep32", "7x7", "nonsense"]) | st.integers(-3, 4096))
            metadata["config"] = json.dumps(config)
        elif kind == "meta_drop":
            metadata.pop(draw(st.sampled_from(sorted(metadata))), None)
        else:
            key = draw(st.sampled_from(tensors))
            entry = header.get(key)
            if entry is None:
                continue
            if kind == "dtype":
                entry["dtype"] = draw(st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "X"]))
            elif kind == "shape":
                entry["shape"] = draw(st.lists(st.integers(0, 70), max_size=5))
            elif kind == "offsets":
                entry["data_offsets"] = sorted(draw(st.lists(st.integers(0, len(body) + 16), min_size=2,
                                                             max_size=2)))
            else:
                del header[key]
    if not metadata:
        header.pop("__metadata__", None)
    return join_safetensors(header, body), name


@st.composite
def zip_with_mutated_pickle(draw) -> tuple[bytes, str]:
    """A well-formed torch zip whose ``data.pkl`` was mutated: the unpickler sees the damage."""
    name = draw(st.sampled_from(["model_zip.pth", "small_zip.pth.tar"]))
    source = zipfile.ZipFile(io.BytesIO(seeds()[name]))
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            content = source.read(info)
            if info.filename.endswith("data.pkl"):
                content = draw(mutated_bytes(content))
            target.writestr(info.filename, content)
    return output.getvalue(), name


# ---- properties -------------------------------------------------------------------------------
def test_every_seed_loads_or_is_refused_as_intended():
    """The seeds themselves: whole models load; the small wrappers are refused with a reason."""
    for name, data in seeds().items():
        loaded = check_contract(data, name)
        if name.startswith("model"):
            assert loaded is not None and loaded.meta.config.backbone == "mobilenetv2_100", name
        else:
            assert loaded is None, name


@FUZZ
@given(st.binary(max_size=4096), st.sampled_from(NAMES))
def test_any_bytes_load_or_raise_checkpoint_error(data, name):
    check_contract(data, name)


@FUZZ
@given(st.sampled_from([b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95", b"\x80\x05",
                        struct.pack("<Q", 16) + b"{", struct.pack("<Q", 2**62) + b"{\"", b"\x00" * 8]),
       st.binary(max_size=1024), st.sampled_from(NAMES))
@example(b"\x80\x02", b"\x85", "upload.pth")    # found here: the unpickler's IndexError escaped torch.load
def test_container_magic_followed_by_junk(magic, tail, name):
    check_contract(magic + tail, name)


@pytest.mark.slow       # 60 whole-model loads (pickles via the sandbox): 3-7 s on two busy cores
@FUZZ
@given(mutated_seed(), st.sampled_from(["bytes", "path"]))
def test_mutated_real_checkpoints(seed, via):
    data, name = seed
    check_contract(data, name, via)


@pytest.mark.slow       # 60 whole-model loads (pickles via the sandbox): 3-7 s on two busy cores
@FUZZ
@given(rewritten_safetensors(), st.sampled_from(["bytes", "path"]))
def test_rewritten_safetensors_headers(seed, via):
    data, name = seed
    check_contract(data, name, via)


@pytest.mark.slow       # 60 whole-model loads (pickles via the sandbox): 3-7 s on two busy cores
@FUZZ
@given(zip_with_mutated_pickle())
def test_torch_zip_with_mutated_pickle(seed):
    data, name = seed
    check_contract(data, name)


def with_metadata(key: str, value) -> bytes:
    """The model seed with one metadata entry (``classes``) or config field (``config.stem``) replaced."""
    header, body = split_safetensors(seeds()["model.safetensors"])
    metadata = header["__metadata__"]
    if key.startswith("config."):
        config = json.loads(metadata["config"])
        config[key[len("config."):]] = value
        metadata["config"] = json.dumps(config)
    else:
        metadata[key] = json.dumps(value)
    return join_safetensors(header, body)


# Found by test_rewritten_safetensors_headers: each of these escaped as AttributeError, TypeError,
# RuntimeError or FileNotFoundError, loaded a model that failed later, or (hf-hub:) made timm try
# to download a config from the network before failing.
BAD_METADATA = [
    ("config.backbone", 5), ("config.backbone", "hf-hub:someone/model"), ("config.backbone", "local-dir:/tmp"),
    ("config.backbone", "vit_tiny_patch16_224"), ("config.backbone", "resnet7"),
    ("config.head_channels", "16"), ("config.num_classes", -3), ("config.num_classes", 2**40),
    ("config.output_stride", 7), ("config.align_corners", "yes"), ("config.dropout", "x"), ("config", [1, 2]),
    ("classes", ["a", "b"]), ("palette", [[1, 2]] * 3), ("mean", [0.5]), ("std", [0, 1, 1]), ("extra", [1]),
]


@pytest.mark.parametrize("key, value", BAD_METADATA, ids=[f"{k}={v!r}"[:40] for k, v in BAD_METADATA])
def test_bad_values_in_our_metadata_are_checkpoint_errors(key, value, monkeypatch):
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(CheckpointError, match="danet-lens metadata that cannot be read|cannot be built"):
        load_model(with_metadata(key, value), name="tiny.safetensors")
    assert attempts == [], "loading a checkpoint must never touch the network"


def test_good_metadata_variants_still_load():
    """The checks refuse nonsense only: other valid strides, no key width, dropout 0 all load."""
    for key, value in [("config.output_stride", 16), ("config.key_channels", None), ("config.dropout", 0)]:
        assert check_contract(with_metadata(key, value), "tiny.safetensors") is not None, (key, value)
