"""Attention heads, one module each, under one contract (``base.AttentionHead``) and a registry.

``register_head`` adds a head class by its ``name``; ``get_head``/``list_heads`` look heads up.
A new head is one module here that subclasses ``AttentionHead`` and is imported below.
"""
from danet.models.heads import cc, da, dnl, gc, nonlocal_  # noqa: F401  (registers the built-in heads)
from danet.models.heads.base import (
                                     AttentionHead,
                                     HeadKeys,
                                     HeadState,
                                     Term,
                                     get_head,
                                     list_heads,
                                     register_head,
                                     unregister_head,
)

__all__ = [
                                     "AttentionHead",
                                     "HeadKeys",
                                     "HeadState",
                                     "Term",
                                     "get_head",
                                     "list_heads",
                                     "register_head",
                                     "unregister_head",
]
