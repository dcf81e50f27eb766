"""Opening an untrusted path as a regular file, the one way checkpoints and images are opened.

``O_NONBLOCK`` keeps a FIFO from blocking the open; type and size are checked on the opened
descriptor (``fstat``), so a path swapped after a check cannot slip through. Callers turn a
``FileRefused`` into their own one-line error, worded for what the file should have been.
"""
from __future__ import annotations

import hashlib
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from danet.errors import DanetError, InputError

MAX_HASH_BYTES = 1 << 40
"""``file_sha256`` hashes regular files of any practical size; the type check is what matters."""


class FileRefused(Exception):
    """Why a path was not opened: ``reason`` is missing, folder, special, too large or unreadable."""

    def __init__(self, reason: str, detail: str = "", size: int = 0):
        super().__init__(reason)
        self.reason, self.detail, self.size = reason, detail, size


@contextmanager
def open_regular(path: Path, max_bytes: int) -> Iterator[tuple[int, int]]:
    """Yield ``(fd, size)`` of a regular file of at most ``max_bytes``; the descriptor is closed after."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise FileRefused("missing") from None
    except IsADirectoryError:
        raise FileRefused("folder") from None
    except OSError as error:
        raise FileRefused("unreadable", error.strerror or str(error)) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise FileRefused("folder")
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused("special")
        if info.st_size > max_bytes:
            raise FileRefused("too large", size=info.st_size)
        yield fd, info.st_size
    finally:
        os.close(fd)


def refusal(path: str | Path, refused: FileRefused, what: str = "a file") -> str:
    """One line saying why ``path`` (meant to be ``what``, e.g. "an image file") was not opened."""
    return {
        "missing": f"{path} does not exist",
        "folder": f"{path} is a folder, not {what}",
        "special": f"{path} is not a regular file (a pipe, socket or device); save it to a file first",
        "too large": f"{Path(path).name} is {refused.size / 2**20:,.0f} MB, more than danet-lens reads",
        "unreadable": f"{path} could not be read: {refused.detail}",
    }[refused.reason]


def regular_file(path: str | Path, what: str = "a file", error: type[DanetError] = InputError,
                 max_bytes: int = MAX_HASH_BYTES) -> Path:
    """``path`` if it is a regular file now (opened without blocking, type checked on the descriptor);
    otherwise ``error`` with ``refusal``'s line. Commands check every single-file argument with this
    before any work, so a FIFO or a link to ``/dev/zero`` is refused at once instead of read forever."""
    path = Path(path)
    try:
        with open_regular(path, max_bytes):
            return path
    except FileRefused as refused:
        raise error(refusal(path, refused, what)) from None


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a regular file's bytes; a FIFO or device is an ``InputError``, never read (a link to
    ``/dev/zero`` would be hashed forever, a FIFO would block)."""
    digest = hashlib.sha256()
    try:
        with open_regular(Path(path), MAX_HASH_BYTES) as (fd, _size):
            while block := os.read(fd, chunk):
                digest.update(block)
    except FileRefused as refused:
        raise InputError(refusal(path, refused)) from None
    return digest.hexdigest()
