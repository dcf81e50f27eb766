"""One forward pass -> an immutable record of everything the UIs show, for any head.

The record keeps what the head says it needs (for DANet: PAM query/key/value and branch
inputs, O(N d) and O(N C); never an N x N matrix) and the head's attention maps built on it:
any row is rebuilt on demand in O(N) memory. No hooks are installed, so one model object can
serve many threads/sessions at once, each getting its own result.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from danet.data.normalise import IMAGENET_MEAN, IMAGENET_STD, to_tensor
from danet.errors import InputError
from danet.inspection.memory import check_inspection_fits
from danet.maps import AttentionMap, Grid, upsample
from danet.maps.base import as_float
from danet.models.segmentor import Segmentor


@dataclass(frozen=True, eq=False)
class InspectionResult:
    """Outputs and attention of one forward on one image (all tensors on the CPU).

    ``logits`` are (K, H, W) at input size by output name, main output first. ``kept`` is what
    the head keeps for its maps and measures (one image's, float32); ``maps`` its attention
    maps by name, the default first; ``gains`` its terms' learnt gains (DANet: pam -> alpha,
    cam -> beta). DANet's 0.2 fields (``pam_query``, ``cam_attention``, ``alpha``...) remain as
    properties.
    """

    image_size: tuple[int, int]          # (H, W) of the input
    grid_size: tuple[int, int]           # (h, w) of the head's feature grid
    logits: dict[str, torch.Tensor]
    kept: dict[str, torch.Tensor] = field(default_factory=dict)
    maps: dict[str, AttentionMap] = field(default_factory=dict)
    gains: dict[str, float] = field(default_factory=dict)
    head: str = "da"
    align_corners: bool = True
    seconds: float = 0.0                 # wall time of the forward
    device: str = "cpu"
    map_builder: Callable | None = field(default=None, repr=False)   # the head's ``maps``: kept, grid -> maps
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def for_da(cls, *, image_size, grid_size, fused_logits, pam_logits, cam_logits, pam_query, pam_key,
               cam_attention, cam_input, cam_output, alpha: float, beta: float, align_corners: bool = True,
               pam_input=None, pam_value=None, **rest) -> "InspectionResult":
        """A DANet result from its 0.2 fields (e.g. built by hand in a test or a notebook)."""
        from danet.models.heads.da import da_maps

        kept = {name: as_float(value) for name, value in (
            ("pam_query", pam_query), ("pam_key", pam_key), ("pam_value", pam_value), ("pam_input", pam_input),
            ("cam_attention", cam_attention), ("cam_input", cam_input), ("cam_output", cam_output)) if value is not None}
        grid = Grid(tuple(image_size), tuple(grid_size))
        return cls(image_size=tuple(image_size), grid_size=tuple(grid_size),
                   logits={"fused": fused_logits, "pam": pam_logits, "cam": cam_logits}, kept=kept,
                   maps=da_maps(kept, grid), gains={"pam": float(alpha), "cam": float(beta)}, head="da",
                   align_corners=align_corners, map_builder=da_maps, **rest)

    def with_kept(self, **changes) -> "InspectionResult":
        """A copy with kept tensors replaced (None removes one) and the maps rebuilt from them."""
        kept = {**self.kept, **{k: as_float(v) for k, v in changes.items() if v is not None}}
        kept = {k: v for k, v in kept.items() if changes.get(k, 0) is not None}
        maps = self.map_builder(kept, self.grid) if self.map_builder else self.maps
        return dataclasses.replace(self, kept=kept, maps=maps, _cache={})

    # ---- predictions -------------------------------------------------------------------
    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self.logits)

    @property
    def main_output(self) -> str:
        return next(iter(self.logits))

    def prediction(self, which: str | None = None) -> np.ndarray:
        """(H, W) int class map of one output (the main one by default)."""
        which = which or self.main_output
        if which not in self.logits:
            raise InputError(f"no output {which!r}; this head has {', '.join(self.logits)}")
        if which not in self._cache:
            self._cache[which] = self.logits[which].argmax(0).numpy().astype(np.int64)
        return self._cache[which]

    def probabilities(self, which: str | None = None) -> np.ndarray:
        return torch.softmax(self.logits[which or self.main_output], 0).numpy()

    @property
    def num_classes(self) -> int:
        return int(next(iter(self.logits.values())).shape[0])

    # ---- geometry ----------------------------------------------------------------------
    @property
    def grid(self) -> Grid:
        return Grid(tuple(self.image_size), tuple(self.grid_size))

    @property
    def num_positions(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def pixel_to_cell(self, x: float, y: float) -> tuple[int, int]:
        """Grid cell (row, col) that covers input pixel (x, y); pixels scale proportionally."""
        return self.grid.pixel_to_cell(x, y)

    def cell_to_pixel_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the input region a grid cell stands for."""
        return self.grid.cell_to_pixel_box(row, col)

    # ---- attention on demand -----------------------------------------------------------
    def map(self, name: str | None = None) -> AttentionMap:
        """One of the head's maps by name (the default map when None)."""
        if not self.maps:
            raise InputError(f"the {self.head} head offers no attention map")
        if name is None:
            return next(iter(self.maps.values()))
        if name not in self.maps:
            raise InputError(f"no attention map {name!r}; this head offers {', '.join(self.maps)}")
        return self.maps[name]

    def rows(self, points, map_name: str | None = None) -> np.ndarray:
        """The default map's rows for input-pixel points (x, y), as (P, h, w) grid maps
        (DANet: PAM softmax rows summing to 1). Each row is O(N) memory, never N x N."""
        return self.map(map_name).rows(points)

    def upsample_maps(self, maps: np.ndarray, mode: str = "bilinear") -> np.ndarray:
        """(P, h, w) grid maps -> (P, H, W) at input size (``"bilinear"`` or ``"nearest"``)."""
        return upsample(maps, tuple(self.image_size), self.align_corners, mode)

    def rows_upsampled(self, points, mode: str = "bilinear", map_name: str | None = None) -> np.ndarray:
        return self.upsample_maps(self.rows(points, map_name), mode)

    def channel_mix(self, channel: int, top_k: int = 5) -> list[tuple[int, float]]:
        """The ``top_k`` channels that CAM mixes most strongly into ``channel``."""
        weights = np.asarray(self.cam_attention[channel])
        order = np.argsort(-weights, kind="stable")[:top_k]
        return [(int(i), float(weights[i])) for i in order]

    # ---- DANet's 0.2 fields ------------------------------------------------------------
    def _kept(self, name: str, as_numpy: bool):
        value = self.kept.get(name)
        return value.numpy() if as_numpy and value is not None else value

    fused_logits = property(lambda self: self.logits.get("fused"))
    pam_logits = property(lambda self: self.logits.get("pam"))
    cam_logits = property(lambda self: self.logits.get("cam"))
    pam_query = property(lambda self: self._kept("pam_query", False))      # (N, d) tensor
    pam_key = property(lambda self: self._kept("pam_key", False))          # (N, d) tensor
    pam_value = property(lambda self: self._kept("pam_value", False))      # (N, C) tensor
    pam_input = property(lambda self: self._kept("pam_input", True))       # (C, h, w) array
    cam_attention = property(lambda self: self._kept("cam_attention", True))  # (C, C) array, rows sum to 1
    cam_input = property(lambda self: self._kept("cam_input", True))       # (C, h, w) before CAM
    cam_output = property(lambda self: self._kept("cam_output", True))     # (C, h, w) after CAM
    alpha = property(lambda self: self.gains.get("pam"))
    beta = property(lambda self: self.gains.get("cam"))


def _per_image(value: torch.Tensor) -> torch.Tensor:
    return value[0].detach().float().cpu().contiguous()


def make_result(head, state_logits: dict, kept: dict, image_size, grid_size, *, align_corners: bool,
                seconds: float = 0.0, device: str = "cpu") -> InspectionResult:
    """An ``InspectionResult`` from one image's logits at input size and kept tensors (batch removed)."""
    grid = Grid(tuple(image_size), tuple(grid_size))
    return InspectionResult(image_size=tuple(image_size), grid_size=tuple(grid_size), logits=state_logits, kept=kept,
                            maps=head.maps(kept, grid), gains=head.gains(), head=head.name,
                            align_corners=align_corners, seconds=seconds, device=device, map_builder=head.maps)


@torch.inference_mode()
def inspect_image(model: Segmentor, image: np.ndarray | torch.Tensor, mean=IMAGENET_MEAN,
                  std=IMAGENET_STD, *, check_memory: bool = True) -> InspectionResult:
    """Run ``model`` once on ``image`` (HxWx3 uint8, or a normalised (1,3,H,W) tensor).

    The model must already be in eval mode on its device; it is not modified, so
    concurrent calls on one model are safe. Before anything is allocated, the forward's memory
    (class scores included) is estimated and a forward that will not fit is refused with an
    ``InputError`` (``check_memory=False`` skips the estimate, e.g. in tight benchmark loops).
    """
    if model.training:
        raise InputError("inspect_image needs a model in eval mode (call model.eval() once after loading)")
    device = next(model.parameters()).device
    if check_memory:   # before the input tensor itself is made
        height, width = image.shape[:2] if isinstance(image, np.ndarray) else image.shape[-2:]
        check_inspection_fits(model.config, (width, height), device.type)
    x = to_tensor(image, mean, std) if isinstance(image, np.ndarray) else image
    start = time.perf_counter()
    x = x.to(device)
    features = model.backbone(x)
    state = model.head.inspect(features)
    size = tuple(x.shape[-2:])
    logits = {name: model.upsample(t, size)[0].float().cpu() for name, t in state.logits.items()}
    kept = {name: _per_image(t) for name, t in state.kept.items()}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return make_result(model.head, logits, kept, size, tuple(features.shape[-2:]),
                       align_corners=model.config.align_corners, seconds=seconds, device=str(device))
