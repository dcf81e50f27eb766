"""Every numeric option's documented range, checked while the command line is parsed.

A number given on the command line is a request for memory and time: ``--draws 1000000000``
asked for a billion random orders (``MemoryError``), ``--seed -1`` ended in numpy's
``ValueError``. Each numeric option is declared with ``ranged(...)``: its help shows the range,
and a value that is not a number, not finite or outside the range ends the command before any
work with one line, ``error: --draws 1000000000 is outside its range 1 to 100``, exit code 1
(the same contract as every other refusal, ``danet.cli.errors``). ``RANGES`` is the one table;
docs/cli.md lists it and tests/test_hostile_cli.py runs every option at and beyond its bounds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import typer

from danet.analysis.common import SEED_MAX
from danet.analysis.knockout import MAX_DRAWS, MAX_K_LIMIT
from danet.checkpoints.read import MAX_DIM
from danet.cli.errors import fail


@dataclass(frozen=True)
class Range:
    """``low`` to ``high`` inclusive; ``whole`` for integers; ``choices`` when only some values mean anything."""

    low: float
    high: float
    whole: bool = True
    why: str = ""
    choices: tuple[int, ...] = ()

    def text(self) -> str:
        if self.choices:
            return ", ".join(str(c) for c in self.choices)
        return f"{_number(self.low)} to {_number(self.high)}"

    def check(self, option: str, raw) -> int | float:
        """``raw`` (a string from the command line, or the default) as a number in range; else exit 1."""
        if isinstance(raw, bool):
            fail(f"{option} {raw!r} is not a number")
        text = str(raw).strip()
        try:
            value = int(text) if self.whole else float(text)
        except (TypeError, ValueError, OverflowError):
            kind = "a whole number" if self.whole else "a number"
            fail(f"{option} {_quoted(text)} is not {kind} (its range is {self.text()})")
        if not self.whole and not math.isfinite(value):
            fail(f"{option} {text[:40]} is not finite (its range is {self.text()})")
        if self.choices and value not in self.choices:
            fail(f"{option} {text[:40]} is not one of {self.text()}")
        if not self.low <= value <= self.high:
            fail(f"{option} {text[:40]} is outside its range {self.text()}")
        return value


def _number(value) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:g}"
    value = int(value)
    return f"{value:,}" if abs(value) >= 10_000 else str(value)


def _quoted(text: str) -> str:
    shown = "".join(ch if ch.isprintable() else "?" for ch in text[:40])
    return repr(shown + ("..." if len(text) > 40 else ""))


def counts(high: int, why: str = "") -> Range:
    return Range(1, high, why=why)


SEED = Range(0, SEED_MAX, why="what numpy's and torch's generators accept everywhere")
SHARE = Range(0.0, 1.0, whole=False, why="a fraction")

RANGES: dict[str, Range] = {
    # predict
    "predict --batch-size": counts(256, "memory grows with the batch; 8 fills a GPU on CamVid frames"),
    "predict --opacity": SHARE,
    # attention, figure
    "attention --channel": Range(0, MAX_DIM - 1, why="no checkpoint has more channels (the model's own count "
                                                      "is checked after loading)"),
    "attention --top-k": counts(1000, "channels listed per --channel"),
    "attention --opacity": SHARE,
    "figure --dpi": Range(50, 1200, why="a 1200 dpi raster figure is already ~100 MP"),
    "figure --columns": Range(2, 8, why="panels per row that stay legible"),
    # measures
    "measures --max-k": counts(MAX_K_LIMIT, "a 512x512 image at stride 8 has 4,096 cells; each k is one "
                                          "head evaluation per draw"),
    "measures --draws": counts(MAX_DRAWS, "the random curves hold draws x k x classes logits"),
    "measures --seed": SEED,
    # attention-stats
    "attention-stats --points-per-image": counts(10_000, "a 64x64 feature grid has 4,096 cells"),
    "attention-stats --max-images": counts(1_000_000),
    "attention-stats --seed": SEED,
    "attention-stats --ignore-index": Range(0, 65_535, why="a 16-bit label map's ids"),
    # train
    "train --head-channels": Range(8, 4096, why="PAM's query/key width is an eighth of it; ResNet heads use 512"),
    "train --output-stride": Range(8, 32, choices=(8, 16, 32), why="the strides the backbones support"),
    "train --epochs": counts(10_000),
    "train --batch-size": counts(1024, "per process"),
    "train --lr": Range(1e-8, 10.0, whole=False, why="above 10 every run diverges"),
    "train --dropout": Range(0.0, 0.9, whole=False),
    "train --key-channels": counts(4096),
    "train --attention-lr-scale": Range(0.0, 1000.0, whole=False),
    "train --ohem-thresh": SHARE,
    "train --ohem-min-kept": counts(100_000_000, "pixels per batch"),
    "train --aux-weight": Range(0.0, 100.0, whole=False),
    "train --seed": SEED,
    "train --threads": counts(1024),
    "train --max-steps": counts(1_000_000_000),
}


class RangeCheck:
    """The parser typer calls with each value of one option (``spec.check``); tests find options by it."""

    def __init__(self, option: str, spec: Range):
        self.option, self.spec = option, spec
        self.__name__ = option                       # click names the parameter type after its function

    def __call__(self, raw):
        return self.spec.check(self.option, raw)


def ranged(command: str, option: str, default, help: str, **options):
    """A ``typer.Option`` for ``command``'s numeric ``option`` with its range from ``RANGES``, checked at parse time."""
    spec = RANGES[f"{command} {option}"]
    return typer.Option(default, option, parser=RangeCheck(option, spec), metavar="N" if spec.whole else "X",
                        help=f"{help} ({spec.text()})", **options)
