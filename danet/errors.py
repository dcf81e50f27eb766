"""The package's errors: every refusal of bad input is a ``DanetError`` with a one-line message.

Subclasses say which input was at fault; each also derives from ``ValueError`` (and
``KeyError`` for an unknown name) so callers written against the older, separate classes
keep working.
"""
from __future__ import annotations


class DanetError(ValueError):
    """Bad input to danet-lens; ``str(error)`` is a one-line message meant for the user."""

    def __str__(self) -> str:  # a KeyError subclass would otherwise print its message quoted
        return " ".join(str(self.args[0]).split()) if self.args else ""


class CheckpointError(DanetError):
    """A checkpoint that cannot be read or loaded safely."""


class ImageLoadError(DanetError):
    """An image that cannot be decoded within the size and time rules."""


class LabelMapError(DanetError):
    """A label map that does not fit its image or the model's classes."""


class InputError(DanetError):
    """A path, point or option the user named that cannot be used."""


class UnknownNameError(DanetError, KeyError):
    """A dataset, model or backbone name that is not registered."""


def one_line(error: BaseException | str) -> str:
    """An exception's message on one line, without the quotes ``KeyError`` adds."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())
