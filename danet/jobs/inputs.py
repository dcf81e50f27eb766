"""What the jobs read: which images to process, the folder name each gets, query points, and the
model fingerprint a manifest records.

Nothing here knows about the command line; ``danet.cli.errors`` turns the ``DanetError``s raised
here into one-line ``error: ...`` messages. Writing is ``danet.safety.outputs``'s job.
"""
from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path
from typing import Iterator

import numpy as np

from danet.data.images import IMAGE_SUFFIXES
from danet.errors import InputError
from danet.safety.outputs import RESERVED_NAMES
from danet.safety.paths import file_sha256, regular_file

MAX_NAME_BYTES = 120            # per-image folder names (file systems allow 255 bytes)


# ---- inputs --------------------------------------------------------------------------------------
def collect_images(inputs: list[str | Path], recursive: bool = False) -> list[Path]:
    """Image files named directly or found in the named folders, sorted per folder, no duplicates.

    A missing path, a file that is not an image by its suffix, or no image at all is a
    ``InputError`` raised before any work starts. Suffixes are ``IMAGE_SUFFIXES`` (what
    ``load_image`` opens). ``recursive`` walks sub-folders iteratively (any depth), entering each
    real folder once, so a symlink loop ends the walk instead of running it forever.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputError(f"{path} does not exist")
        if path.is_dir():
            candidates = sorted(_walk(path) if recursive else
                                (p for p in path.iterdir() if _is_image_name(p.name) and p.is_file()))
        elif _is_image_name(path.name):
            candidates = [regular_file(path, "an image file")]     # a FIFO or /dev/zero link: refused now
        else:
            raise InputError(f"{path} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    if not found:
        raise InputError("no images found in " + ", ".join(str(p) for p in inputs))
    return found


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES      # pathlib's rule, as ``.stem`` uses


def _walk(root: Path) -> Iterator[Path]:
    """Image files under ``root``: a stack, not recursion; each folder entered once by (device, inode)."""
    visited: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in visited:
                continue
            visited.add((info.st_dev, info.st_ino))
            entries = list(os.scandir(folder))
        except OSError:
            continue                      # unreadable or vanished: nothing to collect there
        for entry in entries:
            try:
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif _is_image_name(entry.name) and entry.is_file():
                    yield Path(entry.path)
            except OSError:
                continue


def safe_name(stem: str) -> str:
    """``stem`` as one harmless folder name: no separators or control characters, not '.', '..'
    or hidden, at most ``MAX_NAME_BYTES`` bytes (a too-long stem keeps a hash of the rest)."""
    cleaned = "".join("_" if ch in "/\\" or unicodedata.category(ch).startswith("C") else ch for ch in stem)
    cleaned = cleaned.strip()
    if cleaned.startswith("."):
        cleaned = "_" + cleaned.lstrip(".")
    cleaned = cleaned or "image"
    encoded = cleaned.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_NAME_BYTES:
        digest = hashlib.sha1(encoded).hexdigest()[:8]
        head = encoded[:MAX_NAME_BYTES - 9].decode("utf-8", "ignore")
        cleaned = f"{head}-{digest}"
    if cleaned.casefold() in RESERVED_NAMES:
        cleaned = "_" + cleaned
    return cleaned


def output_names(images: list[Path]) -> list[str]:
    """One output folder name per image: its stem made safe (``safe_name``), plus a short path hash
    where two names collide (compared case-insensitively, as some file systems do).

    Deterministic for the same inputs, so a rerun finds the outputs of an earlier run.
    """
    stems = [safe_name(image.stem) for image in images]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem.casefold()] = counts.get(stem.casefold(), 0) + 1
    names = []
    for image, stem in zip(images, stems):
        if counts[stem.casefold()] > 1:
            digest = hashlib.sha1(str(image.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
            stem = f"{stem}-{digest}"
        names.append(stem)
    taken: set[str] = set()
    for index, name in enumerate(names):      # a hashed name meeting a natural one (vanishingly rare)
        unique, n = name, 1
        while unique.casefold() in taken:
            n += 1
            unique = f"{name}-{n}"
        taken.add(unique.casefold())
        names[index] = unique
    return names


def parse_point(text: str) -> tuple[float, float]:
    """``"X,Y"`` (input pixels, x to the right, y down) -> (x, y)."""
    parts = text.replace(" ", "").split(",")
    if len(parts) != 2:
        raise InputError(f"point {text!r} is not X,Y")
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise InputError(f"point {text!r} is not X,Y with numbers") from None
    if not (np.isfinite(x) and np.isfinite(y)):
        raise InputError(f"point {text!r} is not finite")
    return x, y


def check_points(points: list[tuple[float, float]], size_wh: tuple[int, int]) -> None:
    width, height = size_wh
    if not points:
        raise InputError("give at least one --point X,Y")
    for x, y in points:
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(f"point ({x:g}, {y:g}) lies outside the {width}x{height} image")


# ---- fingerprints --------------------------------------------------------------------------------


def model_fingerprint(source: str | Path) -> str:
    """sha256 of the checkpoint file a model came from (``""`` when it has no file)."""
    return file_sha256(source) if source and Path(source).is_file() else ""


def describe_model(loaded) -> dict:
    """What a manifest says about a ``LoadedModel``: enough to tell two models apart.

    The embedded default is fingerprinted by its packaged file, so a new release's weights do
    not count as the outputs of the old ones.
    """
    from danet.loader import DEFAULT_SOURCE
    from danet.weights import default_weights_path

    meta = loaded.meta
    source_file = default_weights_path() if loaded.source == DEFAULT_SOURCE else loaded.source
    return {"source": loaded.source, "sha256": model_fingerprint(source_file), "layout": meta.layout,
            "dataset": meta.dataset.name, "classes": list(meta.classes), "config": meta.config.to_dict()}


# ---- atomic writes -------------------------------------------------------------------------------


# ---- outputs -------------------------------------------------------------------------------------


