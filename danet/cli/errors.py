"""How the command line reports trouble: one ``error: ...`` line on stderr and exit code 1.

Every refusal of bad input in the library is a ``DanetError`` with a one-line message, and
unreadable files surface as ``OSError``; ``reported`` turns both into that line, and a failed
allocation too (``MemoryError``, PyTorch's allocator errors) when a memory estimate missed it.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Callable, Iterator, NoReturn, TypeVar

import typer

from danet.errors import one_line
from danet.errors import DanetError
from danet.runtime.memory import is_out_of_memory

REPORTED = (DanetError, OSError)
F = TypeVar("F", bound=Callable)


def fail(message: BaseException | str) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with code 1."""
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(1)


def warn(message: BaseException | str) -> None:
    typer.echo(f"warning: {one_line(message)}", err=True)


@contextmanager
def reported() -> Iterator[None]:
    """Inside this block a ``DanetError`` or ``OSError`` ends the command with one error line."""
    try:
        yield
    except REPORTED as error:
        fail(error)
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        fail(f"ran out of memory ({one_line(error)[:200] or type(error).__name__}); the estimate before the "
             "work did not cover it: use a smaller image, or free memory")


def reports_errors(command: F) -> F:
    """Decorator form of ``reported`` for a whole command (typer reads the wrapped signature)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        with reported():
            return command(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
