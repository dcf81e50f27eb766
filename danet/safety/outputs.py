"""Writing outputs so that nothing half-written ever looks complete, inside one locked output folder.

Every file goes to a hidden partial name, is fsynced and renamed into place (``atomic_path``);
an output folder is held by one run at a time (``output_lock``); per-image folders are real
folders directly inside it (``child_folder``). A failed write is one ``OutputError`` line.
"""
from __future__ import annotations

import errno
import json
import os
import re
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from danet.errors import DanetError, InputError, one_line
from danet.safety.paths import FileRefused, open_regular
from danet.safety.records import MAX_RECORD_BYTES, bounded_loads

LOCK_NAME = ".danet.lock"
RESERVED_NAMES = ("legend.png", "manifest.json", LOCK_NAME)   # what the output root itself holds
PARTIAL = re.compile(r"^\..*\.(\d+)-[0-9a-f]{8}\.partial(\.[^.]*)?$")


class OutputError(DanetError):
    """An output that cannot be written (disk full, read-only, a folder in the way, locked)."""


class OutputBusyError(OutputError):
    """The output folder is locked by another danet run."""


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


def read_json(path: str | Path, max_bytes: int = MAX_RECORD_BYTES) -> dict | None:
    """The JSON object in ``path``, or ``None`` when it is missing, unreadable or not a bounded,
    finite JSON object (a record in ``--out`` may have been edited: it is then redone, not trusted)."""
    try:
        with open_regular(Path(path), max_bytes) as (fd, size):
            data = bounded_loads(os.read(fd, size + 1), str(path), max_bytes=max_bytes)
    except (FileRefused, OSError, InputError):
        return None
    return data if isinstance(data, dict) else None


def prepare_output_dir(path: str | Path) -> Path:
    """Create the output folder (and parents); a file in its place is a ``InputError``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create {path}: {one_line(error)}") from error
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
