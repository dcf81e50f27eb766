"""CAM saturation: how many channels does each CAM row really mix?

For a row x_c of the C x C CAM attention (sums to 1):

* ``entropy_bits``: H_c = -sum_k x_ck log2 x_ck (0 = one channel, log2 C = uniform).
* ``effective_channels``: 2^H_c = exp(entropy in nats), the perplexity: how many channels an
  equally weighted mix with the same entropy would have (1 = a copy of one channel).
* A row is **one-hot** when its effective number is below ``ONE_HOT_PERPLEXITY`` (1.1: its largest
  weight is about 0.98 or more); the matrix is **effectively one-hot** when at least
  ``ONE_HOT_SHARE`` of its rows are. Then CAM adds beta times one other channel to each channel,
  and DANet's softmax(rowmax(E) - E) picks the channel *least* correlated with it.
* The matrix is **saturated** when its rows mix fewer than ``SATURATED_MEAN`` (2) effective channels
  on average: CAM then copies one or two channels into each channel rather than averaging many.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from danet.errors import InputError
from danet.maps.base import entropy_bits

ONE_HOT_PERPLEXITY = 1.1
ONE_HOT_SHARE = 0.9
SATURATED_MEAN = 2.0
NEGLIGIBLE = 0.01


@dataclass(frozen=True)
class CamSaturation:
    """Per-row entropy and effective number of channels of the CAM matrix."""

    entropy_bits: np.ndarray        # (C,)
    effective_channels: np.ndarray  # (C,) 2 ** entropy_bits
    top_channel: np.ndarray         # (C,) the channel each row weights most
    top_weight: np.ndarray          # (C,) that weight
    one_hot_rows: np.ndarray        # (C,) bool: effective number < ONE_HOT_PERPLEXITY

    @property
    def one_hot(self) -> bool:
        """True when the matrix is effectively one-hot (see the module docstring)."""
        return bool(self.one_hot_rows.mean() >= ONE_HOT_SHARE)

    @property
    def saturated(self) -> bool:
        """True when rows mix fewer than ``SATURATED_MEAN`` effective channels on average."""
        return bool(self.effective_mean < SATURATED_MEAN)

    @property
    def entropy_mean(self) -> float:
        return float(self.entropy_bits.mean())

    @property
    def effective_mean(self) -> float:
        return float(self.effective_channels.mean())

    @property
    def self_share(self) -> float:
        """Share of rows whose largest weight is on the channel itself."""
        return float(np.mean(self.top_channel == np.arange(self.top_channel.size)))

    def sentence(self) -> str:
        c, share = self.top_channel.size, self.one_hot_rows.mean()
        figures = (f"{share:.0%} of its {c} rows put nearly all their weight on one channel; rows mix "
                   f"{self.effective_mean:.2f} effective channels on average (entropy {self.entropy_mean:.2f} bits)")
        if self.one_hot:
            return (f"CAM is effectively one-hot: {figures}. Each channel gets beta times one other channel "
                    f"added, not a mix.")
        if self.saturated:
            return (f"CAM is saturated: {figures}. Each channel gets one or two other channels added, "
                    f"not a mix of many.")
        return f"CAM mixes several channels per row: {figures}."

    def summary(self) -> dict[str, float]:
        return {"cam_entropy_bits_mean": self.entropy_mean, "cam_effective_channels_mean": self.effective_mean,
                "cam_one_hot_rows": float(self.one_hot_rows.mean()), "cam_one_hot": float(self.one_hot),
                "cam_saturated": float(self.saturated),
                "cam_self_share": self.self_share}


def _matrix(attention) -> np.ndarray:
    matrix = np.asarray(getattr(attention, "cam_attention", attention), dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.size == 0:
        raise InputError(f"CAM attention must be a square C x C matrix, got shape {matrix.shape}")
    return matrix


def cam_saturation(attention) -> CamSaturation:
    """``CamSaturation`` of a (C, C) CAM matrix (or of an ``InspectionResult``'s)."""
    matrix = _matrix(attention)
    entropy = np.maximum(entropy_bits(matrix), 0.0)
    effective = np.exp2(entropy)
    top = matrix.argmax(1)
    return CamSaturation(entropy_bits=entropy, effective_channels=effective, top_channel=top,
                         top_weight=matrix[np.arange(len(top)), top], one_hot_rows=effective < ONE_HOT_PERPLEXITY)


def mixed_channels(attention, channel: int, threshold: float = NEGLIGIBLE) -> list[tuple[int, float]]:
    """Channels CAM mixes into ``channel`` with weight >= ``threshold``, heaviest first."""
    matrix = _matrix(attention)
    if not 0 <= channel < matrix.shape[0]:
        raise InputError(f"channel {channel} does not exist (the CAM has {matrix.shape[0]} channels)")
    weights = matrix[channel]
    order = np.argsort(-weights, kind="stable")
    return [(int(k), float(weights[k])) for k in order if weights[k] >= threshold]
