"""Decoding an untrusted image or label map in a short-lived, resource-limited child process.

``load_image``'s rules bound what a file may cost (64 MP declared at most, JPEG scans x pixels
at most ~4 s of decoding), but within them one upload can still hold a core and a few hundred
MB for seconds, and a decoder bug (a crash in libjpeg/libpng/libwebp) would take the whole
process with it. A server that many people share (the Streamlit app) therefore decodes uploads
through ``load_image_isolated`` / ``load_label_map_isolated``: the child is forked by the
sandbox's fork server (``danet.safety.sandbox.run_limited``: ``RLIMIT_AS``,
``RLIMIT_CPU``, a wall-clock kill), decodes with exactly the in-process rules, and hands back
only a checked uint8 / int64 array and its notices. The caller waits on a pipe (no lock, no
GIL held), so other sessions are not slowed, and whatever the child does ends as the loader's
own error type with one line. Where children cannot be forked (not POSIX) decoding stays
in-process, as before.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from danet.errors import ImageLoadError, InputError, LabelMapError
from danet.data.images import DEFAULT_MAX_PIXELS, MIN_SIDE, LoadedImage, load_image
from danet.data.labels import load_label_map
from danet.safety import sandbox
from danet.safety.records import bounded_loads

MEMORY_MB = 2048
"""Address space the child may add: a 64 MP 16-bit RGBA TIFF is 512 MB decoded, plus its conversions."""
CPU_LIMIT_S = 20
"""CPU seconds: the JPEG scan budget allows ~4 s of decoding, a 64 MP PNG takes ~1-2 s."""
WALL_LIMIT_S = 60
"""Wall seconds, looser than CPU time because a busy machine shares its cores."""


def _limits() -> sandbox.Limits:
    return sandbox.Limits(MEMORY_MB, CPU_LIMIT_S, WALL_LIMIT_S)


def _supported() -> bool:
    return sandbox.SUPPORTED


def _run(kind: str, data: bytes, name: str, params: dict, error) -> tuple[np.ndarray, dict]:
    """Decode ``data`` in a child; (array, info) or ``error`` with one line."""
    folder = tempfile.mkdtemp(prefix="danet-decode-")            # private (0700), removed below
    try:
        path = os.path.join(folder, "input")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
            handle.write(data)
        try:
            code = sandbox.run_limited(f"{__name__}:_decode_child", [kind, path, folder, json.dumps(params)],
                               _limits(), name, folder)
        except sandbox.SandboxError as exc:                # crash, hang, CPU or memory limit: one line
            raise error(str(exc)) from None
        info_path = os.path.join(folder, "info.json")
        if code != 0 or not os.path.isfile(info_path):
            raise error(f"{name} could not be read safely ({_child_note(folder) or f'exit status {code}'})")
        with open(info_path, "rb") as handle:          # the child's word: bounded like any stranger's
            try:
                info = bounded_loads(handle.read(1 << 20), "the decoder's reply", max_bytes=1 << 20)
            except InputError as exc:
                raise error(f"{name} could not be read safely ({exc})") from None
        if not isinstance(info, dict):
            raise error(f"{name} could not be read safely (the decoder's reply is not an object)")
        if "error" in info:
            raise error(str(info["error"]))
        array = np.load(os.path.join(folder, "array.npy"), allow_pickle=False)
        return array, info
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _child_note(folder: str) -> str:
    try:
        with open(os.path.join(folder, "error.txt"), encoding="utf-8") as handle:
            return " ".join(handle.read(400).split())
    except OSError:
        return ""


def load_image_isolated(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, *, name: str = "the upload",
                        min_side: int = MIN_SIDE) -> LoadedImage:
    """``load_image(data, max_pixels)`` decoded in a limited child; the same result or ``ImageLoadError``."""
    if not _supported():
        return load_image(data, max_pixels, min_side=min_side)
    array, info = _run("image", data, name, {"max_pixels": int(max_pixels), "min_side": int(min_side)},
                       ImageLoadError)
    height, width = array.shape[:2] if array.ndim == 3 else (0, 0)
    # what came back must be what load_image makes: RGB uint8 within the pixel budget
    ceiling = max(max_pixels, 64 * min_side * min_side) * 1.02 + 4 * max(height, width)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or height * width > ceiling:
        raise ImageLoadError(f"{name} could not be read safely (the decoder returned {array.dtype} {array.shape})")
    return LoadedImage(array, tuple(int(v) for v in info["original_size"]), [str(n) for n in info["notices"]])


def load_label_map_isolated(data: bytes, expected_size: tuple[int, int], num_classes: int,
                            ignore_index: int | None = 255, *, palette: np.ndarray | None = None,
                            name: str = "the label map") -> tuple[np.ndarray, list[str]]:
    """``load_label_map(data, ...)`` decoded in a limited child; the same result or ``LabelMapError``."""
    if not _supported():
        return load_label_map(data, expected_size, num_classes, ignore_index, palette=palette)
    params = {"expected_size": [int(v) for v in expected_size], "num_classes": int(num_classes),
              "ignore_index": None if ignore_index is None else int(ignore_index),
              "palette": None if palette is None else np.asarray(palette).astype(int).tolist()}
    ids, info = _run("labels", data, name, params, LabelMapError)
    width, height = expected_size
    if ids.dtype != np.int64 or ids.shape != (height, width):
        raise LabelMapError(f"{name} could not be read safely (the decoder returned {ids.dtype} {ids.shape})")
    return ids, [str(n) for n in info["notices"]]


# ---- the child's side ---------------------------------------------------------------------------
def _decode_child(kind: str, path: str, folder: str, params_json: str) -> None:
    """In the limited child: decode with the in-process rules, write the array and notices back."""
    params = json.loads(params_json)
    data = Path(path).read_bytes()
    try:
        if kind == "image":
            loaded = load_image(data, params["max_pixels"], min_side=params["min_side"])
            array, info = loaded.array, {"original_size": list(loaded.original_size), "notices": loaded.notices}
        else:
            palette = None if params["palette"] is None else np.asarray(params["palette"], dtype=np.uint8)
            array, notices = load_label_map(data, tuple(params["expected_size"]), params["num_classes"],
                                            params["ignore_index"], palette=palette)
            array, info = np.ascontiguousarray(array, dtype=np.int64), {"notices": list(notices)}
    except (ImageLoadError, LabelMapError) as exc:
        info = {"error": str(exc)}
    else:
        np.save(os.path.join(folder, "array.npy"), np.ascontiguousarray(array), allow_pickle=False)
    with open(os.path.join(folder, "info.json"), "w", encoding="utf-8") as handle:
        json.dump(info, handle)
