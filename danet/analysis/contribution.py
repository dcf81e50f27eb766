"""Contribution: how much each attention module changes the features it is added to.

PAM adds alpha * sum_j a_ij V_j to its input A_i (a C-vector per cell i); CAM adds
beta * (X A)_c to its input channel A_c (an N-vector per channel c, X the C x C attention):

* PAM, per cell:    |alpha| * ||sum_j a_ij V_j|| / ||A_i||
* CAM, per channel: |beta|  * ||(X A)_c|| / ||A_c||

0 means the module leaves the features as they were; 0.1 means its term is a tenth of the
input's size. Cells or channels whose input is all zero (dead after the ReLU) get NaN and are
left out of the means. ``*_overall`` is the same ratio over the whole tensor (Frobenius norms),
a mean weighted by the input's norm.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from danet.errors import InputError
from danet.maps.dot_softmax import aggregate as pam_aggregate
from danet.analysis.common import as_tensor, require


@dataclass(frozen=True)
class Contribution:
    """Relative size of the PAM and CAM residual terms."""

    pam: np.ndarray       # (h, w) per cell
    cam: np.ndarray       # (C,) per channel
    alpha: float
    beta: float
    pam_overall: float
    cam_overall: float

    @property
    def pam_mean(self) -> float:
        return _nanmean(self.pam)

    @property
    def cam_mean(self) -> float:
        return _nanmean(self.cam)

    def sentence(self) -> str:
        """'PAM changes the features by 9% on average, CAM by 2.4%.'"""
        return contribution_sentence(self.pam_mean, self.cam_mean)

    def summary(self) -> dict[str, float]:
        return {"alpha": self.alpha, "beta": self.beta, "pam_contribution_mean": self.pam_mean,
                "pam_contribution_overall": self.pam_overall, "cam_contribution_mean": self.cam_mean,
                "cam_contribution_overall": self.cam_overall}


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def percent(share: float) -> str:
    """0.09 -> '9%', 0.024 -> '2.4%', 0.0004 -> '0.04%': two significant digits below 10%."""
    if share != share:
        return "n/a"
    value = 100 * share
    return f"{value:.0f}%" if abs(value) >= 9.95 else f"{value:.2g}%"


def contribution_sentence(pam_mean: float, cam_mean: float) -> str:
    return f"PAM changes the features by {percent(pam_mean)} on average, CAM by {percent(cam_mean)}."


def _ratio(added: torch.Tensor, base: torch.Tensor, dim: int) -> np.ndarray:
    added_norm, base_norm = added.norm(dim=dim), base.norm(dim=dim)
    ratio = added_norm / base_norm.where(base_norm > 0, torch.ones_like(base_norm))
    return torch.where(base_norm > 0, ratio, torch.full_like(ratio, float("nan"))).numpy()


def pam_contribution(query, key, value, inputs, alpha: float) -> tuple[np.ndarray, float]:
    """Per-cell |alpha| ||a_i V|| / ||A_i|| (N,) and the overall ratio, for (N, d) Q/K, (N, C) V
    and the (N, C) input A."""
    query, key, value, inputs = (as_tensor(t) for t in (query, key, value, inputs))
    if value.shape != inputs.shape or query.shape[0] != value.shape[0]:
        raise InputError(f"PAM value {tuple(value.shape)} and input {tuple(inputs.shape)} do not match")
    with torch.inference_mode():
        added = abs(alpha) * pam_aggregate(query[None], key[None], value[None])[0]
    overall = float(added.norm() / inputs.norm()) if inputs.norm() > 0 else float("nan")
    return _ratio(added, inputs, 1), overall


def cam_contribution(attention, inputs, beta: float) -> tuple[np.ndarray, float]:
    """Per-channel |beta| ||(X A)_c|| / ||A_c|| (C,) and the overall ratio, for the (C, C)
    attention X and the (C, N) input A."""
    attention, inputs = as_tensor(attention), as_tensor(inputs)
    if attention.shape != (inputs.shape[0], inputs.shape[0]):
        raise InputError(f"CAM attention {tuple(attention.shape)} does not fit {inputs.shape[0]} channels")
    added = abs(beta) * (attention.double() @ inputs.double())
    overall = float(added.norm() / inputs.double().norm()) if inputs.norm() > 0 else float("nan")
    return _ratio(added.float(), inputs, 1), overall


def contribution(result) -> Contribution:
    """``Contribution`` of an ``InspectionResult`` (from its kept Q, K, V and branch inputs)."""
    require(result, "pam_query", "pam_key", "pam_value", "pam_input", "cam_attention", "cam_input")
    channels = result.pam_input.shape[0]
    pam_inputs = as_tensor(result.pam_input).reshape(channels, -1).t()
    pam, pam_overall = pam_contribution(result.pam_query, result.pam_key, result.pam_value, pam_inputs,
                                        result.alpha)
    cam_inputs = as_tensor(result.cam_input).reshape(result.cam_input.shape[0], -1)
    cam, cam_overall = cam_contribution(result.cam_attention, cam_inputs, result.beta)
    return Contribution(pam=pam.reshape(result.grid_size), cam=cam, alpha=float(result.alpha),
                        beta=float(result.beta), pam_overall=pam_overall, cam_overall=cam_overall)
