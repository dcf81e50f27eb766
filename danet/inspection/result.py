"""One forward pass -> an immutable record of everything the UIs show.

The record keeps the PAM query/key projections (O(N d)), never the N x N matrix: any
attention row is rebuilt on demand in O(N) memory. No hooks are installed, so one model
object can serve many threads/sessions at once, each getting its own result.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from danet.errors import InputError
from danet.inspection.memory import check_inspection_fits
from danet.data.normalise import IMAGENET_MEAN, IMAGENET_STD, to_tensor
from danet.models import DANet


@dataclass(frozen=True, eq=False)
class InspectionResult:
    """Outputs and attention of one DANet forward on one image (all tensors on the CPU).

    Logits are (K, H, W) at input size in the order fused, PAM, CAM. ``pam_query`` and
    ``pam_key`` are (N, d) with N = grid_h * grid_w, row-major over the feature grid.
    ``pam_input``/``pam_value`` with ``cam_input``/``cam_output`` are what the measures of
    ``danet.analysis`` need: O(N C) each, like the CAM maps, never O(N^2).
    """

    image_size: tuple[int, int]          # (H, W) of the input
    grid_size: tuple[int, int]           # (h, w) of the head's feature grid
    fused_logits: torch.Tensor
    pam_logits: torch.Tensor
    cam_logits: torch.Tensor
    pam_query: torch.Tensor
    pam_key: torch.Tensor
    cam_attention: np.ndarray            # (C, C) float32, rows sum to 1
    cam_input: np.ndarray                # (C, h, w) float32 channel maps before CAM
    cam_output: np.ndarray               # (C, h, w) float32 channel maps after CAM (beta * attn A + A)
    alpha: float
    beta: float
    align_corners: bool
    seconds: float = 0.0                 # wall time of the forward
    device: str = "cpu"
    # What ``danet.analysis`` recomputes the head from (None in results built by hand). These are
    # the head's state right after its only layers that read the backbone features, so ablation
    # and knockout never need the features themselves, nor a second backbone forward.
    pam_input: np.ndarray | None = None      # (C, h, w) float32 PAM input A
    pam_value: torch.Tensor | None = None    # (N, C) PAM value projection V, row-major cells
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ---- predictions -------------------------------------------------------------------
    @property
    def logits(self) -> dict[str, torch.Tensor]:
        return {"fused": self.fused_logits, "pam": self.pam_logits, "cam": self.cam_logits}

    def prediction(self, which: str = "fused") -> np.ndarray:
        """(H, W) int class map of one output: ``"fused"``, ``"pam"`` or ``"cam"``."""
        if which not in self._cache:
            self._cache[which] = self.logits[which].argmax(0).numpy().astype(np.int64)
        return self._cache[which]

    def probabilities(self, which: str = "fused") -> np.ndarray:
        return torch.softmax(self.logits[which], 0).numpy()

    # ---- geometry ----------------------------------------------------------------------
    @property
    def num_positions(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def pixel_to_cell(self, x: float, y: float) -> tuple[int, int]:
        """Grid cell (row, col) that covers input pixel (x, y); pixels scale proportionally."""
        height, width = self.image_size
        gh, gw = self.grid_size
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"point ({x}, {y}) lies outside the {width}x{height} image")
        return min(int(y * gh / height), gh - 1), min(int(x * gw / width), gw - 1)

    def cell_to_pixel_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the input region a grid cell stands for."""
        height, width = self.image_size
        gh, gw = self.grid_size
        return (col * width / gw, row * height / gh, (col + 1) * width / gw, (row + 1) * height / gh)

    # ---- attention on demand -----------------------------------------------------------
    def rows(self, points: list[tuple[float, float]]) -> np.ndarray:
        """PAM softmax rows for input-pixel points (x, y), as (P, h, w) maps summing to 1.

        Each row costs one (N, d) x (d,) product: O(N) memory, no N x N matrix.
        """
        cells = [self.pixel_to_cell(x, y) for x, y in points]
        index = torch.tensor([r * self.grid_size[1] + c for r, c in cells], dtype=torch.long)
        energy = self.pam_query[index] @ self.pam_key.T          # (P, N)
        attention = torch.softmax(energy.float(), dim=-1)
        return attention.reshape(len(points), *self.grid_size).numpy()

    def upsample_maps(self, maps: np.ndarray, mode: str = "bilinear") -> np.ndarray:
        """(P, h, w) grid maps -> (P, H, W) at input size (``"bilinear"`` or ``"nearest"``)."""
        tensor = torch.from_numpy(np.asarray(maps, dtype=np.float32)).unsqueeze(1)
        kwargs = {"align_corners": self.align_corners} if mode == "bilinear" else {}
        return F.interpolate(tensor, size=self.image_size, mode=mode, **kwargs)[:, 0].numpy()

    def rows_upsampled(self, points, mode: str = "bilinear") -> np.ndarray:
        return self.upsample_maps(self.rows(points), mode)

    def channel_mix(self, channel: int, top_k: int = 5) -> list[tuple[int, float]]:
        """The ``top_k`` channels that CAM mixes most strongly into ``channel``."""
        weights = np.asarray(self.cam_attention[channel])
        order = np.argsort(-weights, kind="stable")[:top_k]
        return [(int(i), float(weights[i])) for i in order]


@torch.inference_mode()
def inspect_image(model: DANet, image: np.ndarray | torch.Tensor, mean=IMAGENET_MEAN,
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
    head = model.head.inspect(features)
    size = tuple(x.shape[-2:])
    fused, pam, cam = (model.upsample(t, size)[0].float().cpu() for t in (head.fused, head.pam, head.cam))
    # V is the PAM's own 1x1 projection of its input (PAM.attend does not hand it out): one
    # C x C x N product, small next to the head's 3x3 convolutions.
    value = model.head.pam.value(head.pam_input).flatten(2).transpose(1, 2)[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return InspectionResult(
        image_size=size, grid_size=tuple(features.shape[-2:]),
        fused_logits=fused, pam_logits=pam, cam_logits=cam,
        pam_query=head.pam_query[0].float().cpu(), pam_key=head.pam_key[0].float().cpu(),
        cam_attention=head.cam_attention[0].float().cpu().numpy(),
        cam_input=head.cam_input[0].float().cpu().numpy(), cam_output=head.cam_output[0].float().cpu().numpy(),
        alpha=float(model.head.pam.alpha), beta=float(model.head.cam.beta),
        align_corners=model.config.align_corners, seconds=seconds, device=str(device),
        pam_input=head.pam_input[0].float().cpu().numpy(), pam_value=value.float().cpu().contiguous(),
    )
