"""Tables for the console and the markdown results file, and the log-log fit."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Table:
    """One section's result: a title, column names, rows of cells and notes under it."""

    key: str
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.key}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(format_cell(c) for c in row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def format_cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.01:
            return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
        return f"{value:.2g}"
    return str(value)


def seconds_text(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def megabytes(n_bytes: float) -> float:
    return n_bytes / 2 ** 20


def fit_exponent(sizes, values) -> float:
    """Slope of log(value) against log(size) by least squares (value ~ size ** slope)."""
    sizes, values = np.asarray(sizes, float), np.asarray(values, float)
    keep = (sizes > 0) & (values > 0)
    if keep.sum() < 2:
        return float("nan")
    slope, _ = np.polyfit(np.log(sizes[keep]), np.log(values[keep]), 1)
    return float(slope)
