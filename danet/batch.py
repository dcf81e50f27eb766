"""Plumbing shared by the batch jobs (``danet.predict``, ``danet.attention_export``, ...): which
images to process, how to name their outputs, and how to write files so that nothing half-written
ever looks complete.

Nothing here knows about the command line; ``danet.cli.errors`` turns the ``DanetError``s raised
here into one-line ``error: ...`` messages. Models are loaded with ``danet.load``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import unicodedata
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .data.images import IMAGE_SUFFIXES
from .errors import DanetError, InputError

BatchInputError = InputError   # the name the batch commands grew up with
LOCK_NAME = ".danet.lock"
RESERVED_NAMES = ("legend.png", "manifest.json", LOCK_NAME)   # what the output root itself holds
MAX_NAME_BYTES = 120            # per-image folder names (file systems allow 255 bytes)
PARTIAL = re.compile(r"^\..*\.(\d+)-[0-9a-f]{8}\.partial(\.[^.]*)?$")


class OutputError(DanetError):
    """An output that cannot be written (disk full, read-only, a folder in the way, locked)."""


class OutputBusyError(OutputError):
    """The output folder is locked by another danet run."""


# ---- inputs --------------------------------------------------------------------------------------
def collect_images(inputs: list[str | Path], recursive: bool = False) -> list[Path]:
    """Image files named directly or found in the named folders, sorted per folder, no duplicates.

    A missing path, a file that is not an image by its suffix, or no image at all is a
    ``BatchInputError`` raised before any work starts. Suffixes are ``IMAGE_SUFFIXES`` (what
    ``load_image`` opens). ``recursive`` walks sub-folders iteratively (any depth), entering each
    real folder once, so a symlink loop ends the walk instead of running it forever.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise BatchInputError(f"{path} does not exist")
        if path.is_dir():
            candidates = sorted(_walk(path) if recursive else
                                (p for p in path.iterdir() if _is_image_name(p.name) and p.is_file()))
        elif _is_image_name(path.name):
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
def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "no space left on device"
    if isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "the folder is read-only or not writable" + (f" ({error.strerror})" if error.strerror else "")
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return one_line(error) or type(error).__name__


def write_error(path: str | Path, error: BaseException) -> OutputError:
    """The one-line ``OutputError`` for a failed write of ``path`` (disk full, read-only, ...)."""
    return OutputError(f"cannot write {path}: {_reason(error)}")


def partial_name(path: Path) -> Path:
    """A hidden, unique temporary name next to ``path`` (same suffix, so writers pick the format);
    ``clean_partials`` recognises it by its pattern."""
    return path.with_name(f".{path.stem[:80]}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{path.suffix}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block finishes it is fsynced and renamed
    onto ``path`` (a symlink at ``path`` is replaced, never written through).

    A failure to write (disk full, read-only folder, a folder in the way) is an ``OutputError``
    naming ``path``, and the temporary file is removed: nothing half-written looks complete.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(path, error) from None
    temporary = partial_name(path)
    try:
        try:
            yield temporary
            _fsync(temporary)
            os.replace(temporary, path)
        except OSError as error:
            raise write_error(path, error) from None
    finally:
        try:
            os.unlink(temporary)
        except OSError:
            pass


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


def child_folder(out: Path, name: str) -> Path:
    """``out/name`` as a real folder directly inside ``out``.

    ``name`` must be one plain component (``safe_name`` makes it so); a symlink in its place is
    removed (never followed), a file in its place is an ``OutputError``.
    """
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise OutputError(f"refusing the output name {name!r}: it would leave {out}")
    folder = out / name
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        info = None
    except OSError as error:
        raise write_error(folder, error) from None
    try:
        if info is not None and stat.S_ISLNK(info.st_mode):
            os.unlink(folder)                     # replace the link, do not write through it
            info = None
        if info is None:
            os.mkdir(folder)
        elif not stat.S_ISDIR(info.st_mode):
            raise OutputError(f"cannot write into {folder}: it is a file, not a folder")
    except FileExistsError:
        return child_folder(out, name)            # another writer made it in between: check it again
    except OSError as error:
        raise write_error(folder, error) from None
    return folder


def clean_partials(out: Path) -> int:
    """Remove the hidden temporary files killed runs left in ``out`` and its sub-folders (not
    following links); only call it while holding ``output_lock(out)``. Returns how many."""
    removed = 0
    folders = [out]
    try:
        folders += [Path(e.path) for e in os.scandir(out) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return 0
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if PARTIAL.match(entry.name) and not entry.is_dir(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except OSError:
                    pass
    return removed


def clean_stale_partials(path: Path) -> None:
    """Remove temporary files of ``path`` left by processes that no longer run (for single-file
    outputs such as ``convert`` and ``figure``, which take no folder lock)."""
    prefix = f".{path.stem[:80]}."
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        match = PARTIAL.match(entry.name)
        if match and entry.name.startswith(prefix) and not _pid_alive(int(match.group(1))):
            try:
                os.unlink(entry.path)
            except OSError:
                pass


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextmanager
def output_lock(out: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on the folder ``out`` (``out/.danet.lock``, ``fcntl.flock``).

    A second run raises ``OutputBusyError`` ("... is in use by another danet run (pid N)"). The
    kernel drops the lock when its process dies, so a killed run's lock file is simply taken
    over. Leftover temporary files of killed runs are removed once the lock is held.
    """
    import fcntl

    out = Path(out)
    lock = out / LOCK_NAME
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
                         0o644)
        except OSError as error:
            if error.errno == errno.ELOOP:            # a symlink planted as the lock file
                os.unlink(lock)
                continue
            raise OutputError(f"cannot write to {out}: {_reason(error)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise OutputBusyError(f"{out} is in use by another danet run "
                                  f"(pid {holder if holder.isdigit() else 'unknown'}); wait for it to finish "
                                  "or choose another --out") from None
        except OSError as error:
            os.close(fd)
            raise write_error(lock, error) from None
        try:                                          # the file we locked may have been removed meanwhile
            same = os.fstat(fd).st_ino == os.stat(lock, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        clean_partials(out)
        yield out
    finally:
        try:
            os.unlink(lock)                           # still holding it, so nobody else has it
        except OSError:
            pass
        os.close(fd)


def one_line(error: BaseException | str) -> str:
    """An exception's message on one line, without the quotes ``KeyError`` adds."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())
