"""The inspector's one-line verdict: what a researcher most needs to know about this model's
attention, with its numbers, next to the map (issue 24).

From what the page already has, at no cost: where a typical query puts its attention (the
image's mean row, which the view's payload carries, by the predicted class of each cell), how
strong the strongest sink is, where the pinned points put theirs, alpha, and the cost of PAM off
if the model card records it. From ``danet.analysis`` once per (model, image), computed after the
view is drawn and cached: query specificity (the share of a row the mean row explains), the
pixels PAM off changes here, and the knockout verdict of the first pinned point. The headline
follows the readings of the "Does attention matter?" page (``measures_view``). Nothing here runs
the network or imports Streamlit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from danet_app.literal import md
from danet_app.measures_view import SAME_SHARE, SPECIFIC_SHARE

VERDICT_MAX_CELLS = 4096   # above this many grid cells the measured part waits for the measures page
BARELY = 0.02        # PAM off changing less than 2% of the pixels "barely changes" the prediction
_CARD_COST = re.compile(r"PAM off costs? (?:about )?(\d+(?:\.\d+)?) (?:val )?mIoU", re.IGNORECASE)


@dataclass(frozen=True)
class Measured:
    """What the verdict takes from ``danet.analysis`` (small numbers only, cheap to cache)."""

    share: float | None = None              # mean over queries of sum_j min(a_ij, m_j)
    changed_fraction: float | None = None   # pixels whose fused class changes with PAM off
    miou_change: float | None = None        # fused mIoU change with PAM off, against a label map
    knockout: str | None = None             # the first pinned point's knockout verdict


def class_mass(row: np.ndarray, cell_classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Attention mass of a grid row on the cells predicted as each class."""
    weights = np.asarray(row, dtype=np.float64).ravel()
    ids = np.asarray(cell_classes, dtype=np.int64).ravel()
    keep = ids < num_classes
    return np.bincount(ids[keep], weights=weights[keep], minlength=num_classes)


def typical_query(mean_row: np.ndarray, cell_classes: np.ndarray, classes: tuple[str, ...]) -> tuple[str, float]:
    """(class, share): where the image's mean row (what a typical query sees) puts most attention."""
    mass = class_mass(mean_row, cell_classes, len(classes))
    top = int(mass.argmax())
    return classes[top], float(mass[top] / max(mass.sum(), 1e-30))


def sink_peak(mean_row: np.ndarray) -> float:
    """The most attended cell's mean attention, in multiples of uniform (1/N)."""
    row = np.asarray(mean_row, dtype=np.float64).ravel()
    return float(row.max() * row.size)


def card_pam_off_cost(note: str) -> float | None:
    """The val mIoU PAM off costs, as a model card's note states it ("switching PAM off costs
    1.08 mIoU"), or None."""
    match = _CARD_COST.search(note or "")
    return float(match.group(1)) if match else None


def pinned_summary(stats) -> str:
    """Where the pinned points put their attention: "64-94% on Building" (per most attended class)."""
    groups: dict[str, list[float]] = {}
    for s in stats:
        groups.setdefault(s.top_class_name, []).append(s.top_class_share)
    parts = []
    for name, shares in sorted(groups.items(), key=lambda item: -len(item[1])):
        low, high = min(shares), max(shares)
        span = f"{low:.0%}" if round(low * 100) == round(high * 100) else f"{low * 100:.0f}-{high:.0%}"
        count = f" ({len(shares)} points)" if len(groups) > 1 and len(shares) > 1 else ""
        parts.append(f"{span} on {md(name, 40)}{count}")
    return ", ".join(parts)


def headline(measured: Measured) -> str:
    """The judgement, in the words of the measures page's readings."""
    parts = []
    if measured.share is not None:
        parts.append("most queries attend to the same cells" if measured.share >= SAME_SHARE
                     else "queries are only partly specific" if measured.share >= SPECIFIC_SHARE
                     else "queries attend to different cells")
    if measured.changed_fraction is not None:
        parts.append("PAM barely changes this prediction" if measured.changed_fraction < BARELY
                     else "PAM changes this prediction")
    text = "; ".join(parts) if parts else "attention at a glance"
    return text[0].upper() + text[1:]


def verdict_line(*, alpha: float | None, typical: tuple[str, float] | None = None, sink: float | None = None,
                 pinned: str = "", card_cost: float | None = None, measured: Measured | None = None,
                 pending: bool = False) -> str:
    """The verdict as one markdown line (outside text escaped): headline, then the numbers."""
    measured = measured or Measured()
    facts = []
    if typical is not None:
        name, share = typical
        facts.append(f"typical query {share:.0%} on {md(name, 40)}"
                     + (f", strongest sink {sink:.0f}x uniform" if sink is not None else ""))
    if pinned:
        facts.append(f"pinned {pinned}")
    if measured.share is not None:
        facts.append(f"mean row {measured.share:.0%} of a row")
    if alpha is not None:                   # DANet's PAM gain; other heads have their own or none
        facts.append(f"alpha {alpha:.3f}")
    off = []
    if measured.changed_fraction is not None:
        off.append(f"{measured.changed_fraction:.1%} of pixels change"
                   + (f", mIoU {100 * measured.miou_change:+.2f} here" if measured.miou_change is not None else ""))
    if card_cost is not None:
        off.append(f"-{card_cost:.2f} val mIoU (model card)")
    if off:
        facts.append("PAM off: " + "; ".join(off))
    if measured.knockout is not None:
        facts.append(f"knockout of point 1: {md(measured.knockout, 40)}")
    tail = " (measuring…)" if pending else ""
    return f"**{headline(measured)}.** " + " · ".join(facts) + tail
