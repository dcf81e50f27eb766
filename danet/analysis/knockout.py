"""Knockout faithfulness of one query's PAM row: a deletion curve on the attention map.

For the query cell q with PAM row a = softmax(e), e_j = Q_q . K_j, remove a set S of k cells
from its softmax (e_j = -inf for j in S, the rest renormalised), recompute q's PAM output
E'_q = alpha * sum_j a'_j V_j + A_q and the class logits at q. After PAM the head is local (a 3x3
conv-BN-ReLU, then 1x1 classifiers), so only q's 3x3 neighbourhood of E is needed, with E_q
replaced. The drop of the predicted class's logit, z_c(full row) - z_c(without S), is taken for

* ``top``: S = the k most attended cells,
* ``random``: S = k cells drawn at random (seeded), averaged over ``draws`` draws,
* ``least``: S = the k least attended cells,

for k = 1..``max_k``. ``auc`` is each curve's mean drop over k (area under the curve / max_k).
For scale, ``pam_off_drop`` is the drop when PAM's whole term is removed at q (E'_q = A_q).

Verdict (``RULE``): "no effect" when no curve moves the logit by ``effect_tol`` or more at any k;
"faithful" when AUC_top >= 2 * AUC_random and AUC_top - AUC_random >= ``effect_tol``; otherwise
"not faithful" (removing the cells the map highlights hurts no more than removing random ones).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from danet.analysis.ablation import check_model
from danet.analysis.common import as_tensor, check_seed, require
from danet.errors import InputError

MAX_K = 64
DRAWS = 5
MAX_K_LIMIT = 4096
"""The command line's largest ``--max-k`` (a 512x512 image at stride 8 has 4,096 cells): the removal
masks are (k, N) per draw. The library takes any ``max_k`` >= 1 and stops at N - 1 anyway."""
MAX_DRAWS = 100
"""Largest ``draws``: the random curves hold draws x k x K logits (100 x 1024 x 3,000 classes: 1.2 GB)."""
EFFECT_TOL = 0.05
RULE = ("faithful when AUC_top >= 2 x AUC_random and AUC_top - AUC_random >= {tol:g} logits; "
        "no effect when no removal moves the logit by {tol:g} or more; otherwise not faithful")
STRATEGIES = ("top", "random", "least")


@dataclass(frozen=True)
class Knockout:
    """Deletion curves of one query cell's attention row."""

    cell: tuple[int, int]
    output: str                     # which classifier: "fused" or "pam"
    predicted_class: int            # argmax of the recomputed logits at the cell (full row)
    base_logits: np.ndarray         # (K,) logits at the cell with the full row
    ks: np.ndarray                  # (k_max,) 1..k_max
    drops: dict[str, np.ndarray]    # strategy -> (k_max,) drop of the predicted class's logit
    random_std: np.ndarray          # (k_max,) spread of the random drop over the draws
    logits: dict[str, np.ndarray]   # strategy -> (k_max, K) logits (random: mean over draws)
    removed_mass: dict[str, np.ndarray]  # strategy -> (k_max,) attention mass the removed cells had
    effect_tol: float = EFFECT_TOL
    pam_off_logits: np.ndarray | None = None   # (K,) logits at the cell with E_q = A_q (no PAM term there)

    @property
    def pam_off_drop(self) -> float:
        """Drop of the predicted class's logit when PAM adds nothing at the cell: the scale of the curves."""
        if self.pam_off_logits is None:
            return float("nan")
        return float(self.base_logits[self.predicted_class] - self.pam_off_logits[self.predicted_class])

    @property
    def auc(self) -> dict[str, float]:
        return {name: float(np.mean(curve)) for name, curve in self.drops.items()}

    @property
    def flip_k(self) -> int | None:
        """Smallest k at which removing the top-k cells changes the predicted class (None: never)."""
        flips = np.flatnonzero(self.logits["top"].argmax(1) != self.predicted_class)
        return int(self.ks[flips[0]]) if flips.size else None

    @property
    def verdict(self) -> str:
        if max(float(np.max(np.abs(curve))) for curve in self.drops.values()) < self.effect_tol:
            return "no effect"
        auc = self.auc
        faithful = auc["top"] >= 2 * auc["random"] and auc["top"] - auc["random"] >= self.effect_tol
        return "faithful" if faithful else "not faithful"

    @property
    def rule(self) -> str:
        return RULE.format(tol=self.effect_tol)

    def summary(self) -> dict[str, float | str | int | None]:
        auc = self.auc
        return {"row": self.cell[0], "col": self.cell[1], "predicted_class": self.predicted_class,
                "auc_top": auc["top"], "auc_random": auc["random"], "auc_least": auc["least"],
                "drop_top_max_k": float(self.drops["top"][-1]), "removed_mass_top_max_k": float(
                    self.removed_mass["top"][-1]) if "top" in self.removed_mass else float("nan"),
                "pam_off_drop": self.pam_off_drop, "flip_k": self.flip_k, "verdict": self.verdict}


def removal_masks(order: np.ndarray, ks: np.ndarray) -> torch.Tensor:
    """(len(ks), N) bool: row i removes the first ks[i] cells of ``order``."""
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return torch.from_numpy(rank[None, :] < ks[:, None])


def removed_context(energy: torch.Tensor, value: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(M, C) softmax(e without the masked cells) V for an (N,) energy row and (M, N) masks."""
    masked = energy.unsqueeze(0).masked_fill(masks, float("-inf"))
    return torch.softmax(masked, dim=-1) @ value


def _patch(maps: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """(C, 3, 3) neighbourhood of (row, col), zero outside the grid (as the convs' padding)."""
    padded = torch.nn.functional.pad(maps, (1, 1, 1, 1))
    return padded[:, row:row + 3, col:col + 3]


class LocalHead:
    """The head after PAM at one cell: logits there for any replacement of E at the cell."""

    def __init__(self, model, result, cell: tuple[int, int], output: str = "fused"):
        if output not in ("fused", "pam"):
            raise InputError(f"output must be 'fused' or 'pam', got {output!r}")
        self.model, self.output = model, output
        self.head = model.head
        parameter = next(self.head.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        row, col = cell
        gh, gw = result.grid_size
        self.query, self.key = as_tensor(result.pam_query), as_tensor(result.pam_key)
        self.value = as_tensor(result.pam_value)
        self.alpha = float(result.alpha)
        inputs = as_tensor(result.pam_input)                                   # (C, h, w)
        # E on the 3x3 neighbourhood: its rows from Q and K, the unmodified maths.
        rows = [(r, c) for r in range(row - 1, row + 2) for c in range(col - 1, col + 2)
                if 0 <= r < gh and 0 <= c < gw]
        index = torch.tensor([r * gw + c for r, c in rows])
        context = torch.softmax(self.query[index] @ self.key.t(), dim=-1) @ self.value
        self.pam_patch = torch.zeros(inputs.shape[0], 3, 3)          # zero outside the grid: the conv's padding
        for (r, c), ctx in zip(rows, context):
            self.pam_patch[:, r - row + 1, c - col + 1] = self.alpha * ctx + inputs[:, r, c]
        self.inputs_at = inputs[:, row, col]
        self.cam_patch = _patch(as_tensor(result.cam_output), row, col)
        self.flat = row * gw + col

    @torch.inference_mode()
    def logits(self, centres: torch.Tensor) -> torch.Tensor:
        """(M, K) logits at the cell for (M, C) replacements of E there."""
        patches = self.pam_patch.unsqueeze(0).repeat(len(centres), 1, 1, 1)
        patches[:, :, 1, 1] = centres
        cast = dict(device=self.device, dtype=self.dtype)
        pam_feat = self.head.pam_out_conv(patches.to(**cast))[:, :, 1:2, 1:2]
        if self.output == "pam":
            return self.head.pam_classifier(pam_feat)[:, :, 0, 0].float().cpu()
        cam_feat = self.head.cam_out_conv(self.cam_patch[None].to(**cast))[:, :, 1:2, 1:2]
        return self.head.fused_classifier(pam_feat + cam_feat)[:, :, 0, 0].float().cpu()

    def energy(self) -> torch.Tensor:
        return self.query[self.flat] @ self.key.t()

    def centres(self, masks: torch.Tensor) -> torch.Tensor:
        """E'_q for each removal mask (M, N)."""
        return self.alpha * removed_context(self.energy(), self.value, masks) + self.inputs_at


@torch.inference_mode()
def check_knockout_settings(max_k, draws, seed) -> None:
    """``max_k`` at least 1 (the curve stops at N - 1 cells), ``draws`` in 1..``MAX_DRAWS``, a valid
    seed; else ``InputError`` (a billion draws was a ``MemoryError``, seed -1 numpy's ``ValueError``)."""
    if isinstance(max_k, bool) or not isinstance(max_k, (int, np.integer)) or max_k < 1:
        raise InputError(f"max_k must be a whole number of at least 1, not {max_k!r}")
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or not 1 <= draws <= MAX_DRAWS:
        raise InputError(f"draws must be a whole number from 1 to {MAX_DRAWS:,}, not {draws!r}")
    check_seed(seed)


def knockout_curve(model, result, point: tuple[float, float] | None = None, *, cell: tuple[int, int] | None = None,
                   max_k: int = MAX_K, draws: int = DRAWS, seed: int = 0, output: str = "fused",
                   effect_tol: float = EFFECT_TOL) -> Knockout:
    """Deletion curves of the PAM row of input pixel ``point`` = (x, y) (or of grid ``cell`` = (row, col))."""
    require(result, "pam_input", "pam_value", "pam_query", "pam_key", "cam_output")
    check_model(model, result)
    if (point is None) == (cell is None):
        raise InputError("give exactly one of point=(x, y) in input pixels or cell=(row, col)")
    if point is not None:
        try:
            cell = result.pixel_to_cell(*point)
        except ValueError as error:
            raise InputError(str(error)) from None
    cell = result.grid.check_cell(cell)
    n = result.num_positions
    if n < 2:
        raise InputError("a knockout needs a feature grid of at least 2 cells")
    check_knockout_settings(max_k, draws, seed)
    local = LocalHead(model, result, cell, output)
    ks = np.arange(1, min(max_k, n - 1) + 1)
    energy = local.energy()
    row = torch.softmax(energy, dim=-1).numpy().astype(np.float64)
    base = local.logits(local.centres(torch.zeros(1, n, dtype=torch.bool)))[0]
    pam_off = local.logits(local.inputs_at[None])[0]
    predicted = int(base.argmax())
    orders = {"top": np.argsort(-row, kind="stable"), "least": np.argsort(row, kind="stable")}
    rng = np.random.default_rng(seed)
    random_orders = [rng.permutation(n) for _ in range(draws)]
    logits, drops, mass = {}, {}, {}
    for name, order in orders.items():
        logits[name] = local.logits(local.centres(removal_masks(order, ks))).numpy()
        drops[name] = float(base[predicted]) - logits[name][:, predicted]
        mass[name] = np.cumsum(row[order])[ks - 1]
    random_logits = np.stack([local.logits(local.centres(removal_masks(order, ks))).numpy()
                              for order in random_orders])                       # (draws, k, K)
    random_drops = float(base[predicted]) - random_logits[:, :, predicted]
    logits["random"] = random_logits.mean(0)
    drops["random"] = random_drops.mean(0)
    mass["random"] = np.mean([np.cumsum(row[order])[ks - 1] for order in random_orders], axis=0)
    return Knockout(cell=cell, output=output, predicted_class=predicted, base_logits=base.numpy(), ks=ks,
                    drops={name: drops[name] for name in STRATEGIES}, random_std=random_drops.std(0),
                    logits=logits, removed_mass={name: mass[name] for name in STRATEGIES}, effect_tol=effect_tol,
                    pam_off_logits=pam_off.numpy())
