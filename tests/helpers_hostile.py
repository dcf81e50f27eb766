"""Generators of hostile files shared by the hostile tests: pickles that crash, hang or allocate
what they name, wrapped in torch's zip or legacy format; a torch zip inflating to 2 GB; a
progressive JPEG with as many scans as asked (tests/test_hostile.py, tests/test_hostile_app.py).
"""
from __future__ import annotations

import collections
import functools
import io
import pickle
import zipfile

import numpy as np
import torch
from PIL import Image


def torch_bytes(obj, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def zip_with_pickle(pickled: bytes) -> bytes:
    """A genuine torch zip whose ``data.pkl`` is ``pickled``."""
    source = zipfile.ZipFile(io.BytesIO(torch_bytes({"x": 1})))
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            target.writestr(info.filename, pickled if info.filename.endswith("data.pkl") else source.read(info))
    return output.getvalue()


def legacy_with_pickle(pickled: bytes) -> bytes:
    """torch's legacy format (magic, protocol, sys info, object, storage keys) around ``pickled``."""
    head = b"".join(pickle.dumps(v, protocol=2) for v in (
        0x1950A86A20F9469CFC6C, 1001,
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    return head + pickled + pickle.dumps([], protocol=2)


def nested_tuple_pickle(depth: int = 1_000_000) -> bytes:
    return b"\x80\x02)" + b"\x85" * depth + b"."            # EMPTY_TUPLE, then TUPLE1 ``depth`` times


def hash_bomb_pickle(count: int = 60_000) -> bytes:
    """A dict whose int keys all hash to 0 (multiples of 2**61 - 1): each insert compares with all before."""
    prime = (1 << 61) - 1
    keys = b"".join(b"\x8a\x0a" + (k * prime).to_bytes(10, "little", signed=True) + b"N" for k in range(1, count))
    return b"\x80\x02}(" + keys + b"u."


BYTEARRAY_PICKLE = b"\x80\x02c__builtin__\nbytearray\nJ\x00\x94\x35\x77\x85R."     # bytearray(2_000_000_000)


@functools.cache
def inflating_zip(n_bytes: int = 2_000_000_000) -> bytes:
    """A ~2 MB torch zip whose one storage is a DEFLATE entry of ``n_bytes`` zeros."""
    numel, marker = n_bytes // 4, object()

    class Rebuild:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (marker, 0, (numel,), (1,), False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if obj is marker else None

    pickled = io.BytesIO()
    Pickler(pickled, protocol=2).dump({"state_dict": {"w": Rebuild()}})
    source = zipfile.ZipFile(io.BytesIO(torch_bytes({"w": torch.zeros(1)})))
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w") as target:
        for info in source.infolist():
            if info.filename.endswith("data.pkl"):
                target.writestr(info.filename, pickled.getvalue())
            elif "/data/" in info.filename:
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED
                chunk = bytes(1 << 24)
                with target.open(entry, "w", force_zip64=True) as handle:
                    for _ in range(n_bytes // len(chunk)):
                        handle.write(chunk)
            else:
                target.writestr(info, source.read(info))
    return output.getvalue()


def progressive_jpeg(scans: int, size: int = 1024) -> bytes:
    """A progressive JPEG whose last scan is repeated until it has ``scans`` scans."""
    pixels = np.random.default_rng(0).integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.repeat(8, 0).repeat(8, 1)).save(buffer, "JPEG", progressive=True, quality=80)
    data = buffer.getvalue()
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * max(0, scans - data.count(b"\xff\xda")) + data[-2:]
