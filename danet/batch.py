"""Plumbing shared by the batch jobs (``danet.predict``, ``danet.attention_export``, ...): which
images to process, how to name their outputs, and how to write files so that nothing half-written
ever looks complete.

Nothing here knows about the command line; ``danet.cli.errors`` turns the ``DanetError``s raised
here into one-line ``error: ...`` messages. Models are loaded with ``danet.load``.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


BatchInputError = InputError   # the name the batch commands grew up with


# ---- inputs --------------------------------------------------------------------------------------
def collect_images(inputs: list[str | Path], recursive: bool = False) -> list[Path]:
    """Image files named directly or found in the named folders, sorted per folder, no duplicates.

    A missing path, a file that is not an image by its suffix, or no image at all is a
    ``BatchInputError`` raised before any work starts.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise BatchInputError(f"{path} does not exist")
        if path.is_dir():
            pattern = path.rglob("*") if recursive else path.iterdir()
            candidates = sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            candidates = [path]
        else:
            raise BatchInputError(f"{path} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    if not found:
        raise BatchInputError("no images found in " + ", ".join(str(p) for p in inputs))
    return found


def output_names(images: list[Path]) -> list[str]:
    """One output name per image: its stem, plus a short path hash where two stems collide.

    Deterministic for the same inputs, so a rerun finds the outputs of an earlier run.
    """
    stems = [image.stem for image in images]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    names = []
    for image, stem in zip(images, stems):
        if counts[stem] > 1:
            digest = hashlib.sha1(str(image.resolve()).encode()).hexdigest()[:8]
            stem = f"{stem}-{digest}"
        names.append(stem)
    return names


def parse_point(text: str) -> tuple[float, float]:
    """``"X,Y"`` (input pixels, x to the right, y down) -> (x, y)."""
    parts = text.replace(" ", "").split(",")
    if len(parts) != 2:
        raise BatchInputError(f"point {text!r} is not X,Y")
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise BatchInputError(f"point {text!r} is not X,Y with numbers") from None
    if not (np.isfinite(x) and np.isfinite(y)):
        raise BatchInputError(f"point {text!r} is not finite")
    return x, y


def check_points(points: list[tuple[float, float]], size_wh: tuple[int, int]) -> None:
    width, height = size_wh
    if not points:
        raise BatchInputError("give at least one --point X,Y")
    for x, y in points:
        if not (0 <= x < width and 0 <= y < height):
            raise BatchInputError(f"point ({x:g}, {y:g}) lies outside the {width}x{height} image")


# ---- fingerprints --------------------------------------------------------------------------------
def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(source: str | Path) -> str:
    """sha256 of the checkpoint file a model came from (``""`` when it has no file)."""
    return file_sha256(source) if source and Path(source).is_file() else ""


def describe_model(loaded) -> dict:
    """What a manifest says about a ``LoadedModel``: enough to tell two models apart.

    The embedded default is fingerprinted by its packaged file, so a new release's weights do
    not count as the outputs of the old ones.
    """
    from .loader import DEFAULT_SOURCE
    from .weights import default_weights_path

    meta = loaded.meta
    source_file = default_weights_path() if loaded.source == DEFAULT_SOURCE else loaded.source
    return {"source": loaded.source, "sha256": model_fingerprint(source_file), "layout": meta.layout,
            "dataset": meta.dataset.name, "classes": list(meta.classes), "config": meta.config.to_dict()}


# ---- atomic writes -------------------------------------------------------------------------------
@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so writers pick the right format);
    it is renamed onto ``path`` only when the block finishes without an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, unique per writer; created by the writer itself so the usual permissions apply.
    temporary = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def save_png(path: str | Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as temporary:
        Image.fromarray(np.ascontiguousarray(array)).save(temporary, format="PNG")


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, np.asarray(array))


def save_npz(path: str | Path, compress: bool = False, **arrays) -> None:
    """Uncompressed by default: float maps barely compress (about 13 %) and zlib costs seconds."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            (np.savez_compressed if compress else np.savez)(handle, **arrays)


def save_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def save_json(path: str | Path, data) -> None:
    save_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def save_figure(figure, path: str | Path, dpi: int | None = None) -> None:
    """A matplotlib ``Figure`` written atomically; the format follows the suffix."""
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=path.suffix.lstrip(".").lower(), dpi=dpi, bbox_inches="tight")


def read_json(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` when it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---- outputs -------------------------------------------------------------------------------------
def prepare_output_dir(path: str | Path) -> Path:
    """Create the output folder (and parents); a file in its place is a ``BatchInputError``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BatchInputError(f"--out {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BatchInputError(f"cannot create {path}: {one_line(error)}") from error
    return path


def one_line(error: BaseException | str) -> str:
    """An exception's message on one line, without the quotes ``KeyError`` adds."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())
