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


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
