"""The head contract: what every attention head owns, so a new head is one module.

A head is an ``nn.Module`` on one backbone feature map that also states, as class data, its
outputs by name (main first), its switchable attention terms and their gains, and how each
public checkpoint source names its modules; and, as methods, how to read its options from
tensor shapes, what one forward keeps, the attention maps it offers from what was kept, and
how to recompute its outputs with terms switched off (the ablation measures). The segmentor,
the checkpoint pipeline, inspection and every consumer use only this contract.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from danet.errors import UnknownNameError
from danet.maps import AttentionMap, Grid


@dataclass(frozen=True)
class Term:
    """An attention term the head adds to its features, with the learnt gain that scales it."""

    name: str             # "pam"
    title: str            # "position attention (PAM)"
    gain: str             # the gain parameter's module path, e.g. "pam.alpha"
    gain_title: str = ""  # "alpha"


@dataclass(frozen=True)
class HeadKeys:
    """How one public source names this head's modules (relative to the source's head prefix).

    ``marker`` is a module name only this head has in that source (it identifies the layout);
    ``table`` maps the source's module names to ours; ``None`` means the source uses our names.
    ``optional`` are our modules the source may omit (e.g. auxiliary classifiers).
    """

    marker: str
    table: dict[str, str] | None = None
    optional: tuple[str, ...] = ()


@dataclass
class HeadState:
    """One forward of a head: logits by output name at grid size, and what it keeps for its maps."""

    logits: dict[str, torch.Tensor]
    kept: dict[str, torch.Tensor] = field(default_factory=dict)


ShapeOf = Callable[[str], tuple[int, ...]]     # our key (relative to "head.") -> its shape


class AttentionHead(nn.Module):
    """Base of every head. Subclasses set the class data and implement the methods below."""

    name: ClassVar[str] = ""                      # registry name, stored in our metadata
    title: ClassVar[str] = ""                     # "DANet's dual attention head (Fu et al., CVPR 2019)"
    outputs: ClassVar[tuple[str, ...]] = ()       # logits by name, main output first
    output_titles: ClassVar[dict[str, str]] = {}
    terms: ClassVar[tuple[Term, ...]] = ()
    keys: ClassVar[dict[str, HeadKeys]] = {}      # public source name -> how it names this head
    option_names: ClassVar[tuple[str, ...]] = ()  # options stored in the config (beyond num_classes)

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, in_channels: int, num_classes: int, options: dict) -> AttentionHead:
        """The head for ``in_channels`` backbone features; ``options`` as the config stores them."""
        raise NotImplementedError

    @classmethod
    def options_from_shapes(cls, shape: ShapeOf) -> dict:
        """``num_classes`` and the options a checkpoint's tensor shapes determine."""
        raise NotImplementedError

    # ---- running --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.inspect(x).logits

    def inspect(self, x: torch.Tensor) -> HeadState:
        """One forward that also keeps what ``maps`` and ``recompute`` need (never N x N)."""
        raise NotImplementedError

    def maps(self, kept: dict[str, torch.Tensor], grid: Grid) -> dict[str, AttentionMap]:
        """The attention maps this head offers, by name, first the one the view opens on.
        ``kept`` is one image's (the batch axis removed), as ``InspectionResult`` holds it."""
        raise NotImplementedError

    def recompute(self, kept: dict[str, torch.Tensor], off: frozenset[str]) -> dict[str, torch.Tensor]:
        """(K, h, w) CPU logits by output, with the terms named in ``off`` switched off, from one
        image's ``kept`` alone (never the backbone)."""
        raise NotImplementedError(f"the {self.name} head cannot recompute its outputs")

    # ---- reading --------------------------------------------------------------------------
    @property
    def main_output(self) -> str:
        return self.outputs[0]

    def gains(self) -> dict[str, float]:
        """Each term's learnt gain (DANet's alpha and beta), by term name."""
        return {term.name: float(self.get_parameter(term.gain).detach().reshape(-1)[0]) for term in self.terms}

    def attention_modules(self) -> list[nn.Module]:
        """Modules whose ``attend`` the memory estimate replaces (see ``danet.inspection.memory``)."""
        return [m for m in self.modules() if hasattr(m, "meta_attend")]


# ---- the registry: it knows no head; each head module registers itself when imported --------
_HEADS: dict[str, type[AttentionHead]] = {}


def register_head(cls: type[AttentionHead]) -> type[AttentionHead]:
    """Class decorator: make ``cls`` loadable by its ``name`` (checkpoints, configs, CLI)."""
    if not cls.name or not cls.outputs:
        raise ValueError(f"{cls.__name__} needs a name and at least one output to be registered")
    _HEADS[cls.name] = cls
    return cls


def unregister_head(name: str) -> None:
    _HEADS.pop(name, None)


def get_head(name: str) -> type[AttentionHead]:
    if name not in _HEADS:
        raise UnknownNameError(f"unknown attention head {name!r}; known heads: {', '.join(list_heads())}")
    return _HEADS[name]


def list_heads() -> list[str]:
    return sorted(_HEADS)
