"""How much memory one forward will need, known before running it.

The estimate walks the model once on PyTorch's ``meta`` device (shapes only: no memory, no
compute, a few tens of milliseconds) and adds up, at every layer, the tensors that are alive
at that moment in an inference-mode forward:

* the input and output of the layer;
* on the CPU, one more output-sized buffer per convolution (oneDNN's blocked-layout result);
* the input of every enclosing block that keeps it for later (a residual block keeps its
  input for the shortcut, ``DAHead`` keeps the backbone features for the CAM branch); plain
  ``nn.Sequential`` containers keep nothing;
* inside PAM, the attention working set, which is what decides the peak on large grids:
  ``explicit`` holds the N x N energy and its softmax at once (2 * 4 * N^2 bytes);
  ``chunked`` (the CPU's large-grid path) holds one block of queries' energies at a time
  (``CHUNK_ELEMENTS``); ``sdpa`` (the GPU's) runs PyTorch's fused kernel in O(N) memory:
  ``pam_aggregate`` makes q/k/v contiguous and, on the CPU, zero-pads q/k to the value's
  width (the CPU kernel needs one head size; without that PyTorch falls back to a math path
  that builds the N x N matrix anyway).
  ``pam_working_bytes`` mirrors that code; ``tests/test_memory.py`` measures both paths, so a
  change in ``attention.py`` that moves the peak shows up there.

The peak of those sums plus the three logit maps kept at input size is the live-tensor peak
(``ForwardMemory.peak``). The process needs more than that: the C allocator keeps freed blocks
and fragments, libraries keep workspaces. Measured on the CPU (fresh process, peak RSS minus
RSS before the forward, six configs from ResNet-18 to ResNet-50 and 256x256 to 1024x512), the
RSS delta was 1.3 to 2.2 times the live peak, so ``estimate_forward_bytes`` -- the figure to
plan with -- is the live peak times ``ALLOCATOR_SLACK``. ``tests/test_memory.py`` holds it to
a measured RSS delta within a factor of two either way.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from danet.models.segmentor import Segmentor, DANetConfig
from danet.maps.dot_softmax import method_for
from danet.models.heads.da import pam_working_bytes  # noqa: F401  (re-exported: the tests measure it)

ALLOCATOR_SLACK = {"cpu": 1.6, "cuda": 1.2}   # process memory / live tensors (see module docstring)


@dataclass(frozen=True)
class ForwardMemory:
    """Bytes one forward needs, by part. ``peak`` excludes the weights (already resident)."""

    parameters: int          # weights and buffers of the model
    backbone_peak: int       # largest live set while the backbone runs
    head_peak: int           # largest live set in the head, PAM working set included
    pam_working: int         # PAM's own temporary memory (N x N matrices on the explicit path)
    outputs: int             # fused/PAM/CAM logits at input size, kept by ``InspectionResult``
    pam_method: str          # "explicit" or "sdpa" as ``pam_aggregate(method="auto")`` picks
    positions: int           # N = grid_h * grid_w
    grid: tuple[int, int]
    device: str = "cpu"

    @property
    def peak(self) -> int:
        """Largest sum of live tensors during the forward (weights excluded)."""
        return max(self.backbone_peak, self.head_peak) + self.outputs

    @property
    def process_peak(self) -> int:
        """What the process will need on top of the loaded model: ``peak`` plus allocator slack."""
        return int(self.peak * ALLOCATOR_SLACK.get(self.device, 1.2))

    @property
    def total(self) -> int:
        return self.parameters + self.process_peak


def pam_method_for(positions: int, method: str = "auto", device: str = "cpu") -> str:
    """The path ``pam_aggregate`` takes for ``positions`` (its own ``auto`` rule)."""
    return method_for(positions, device) if method == "auto" else method


def _bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_bytes(v) for v in value.values())
    if hasattr(value, "logits") and hasattr(value, "kept"):      # a HeadState
        return _bytes(value.logits) + _bytes(value.kept)
    return 0


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _keeps_input(module: nn.Module) -> bool:
    """Containers that just pass a tensor along (Sequential, timm's feature dicts) keep nothing."""
    return not isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict))


class _LiveSetTracer:
    """Forward hooks that record the largest live set, split into backbone and head."""

    def __init__(self, model: Segmentor, device: str, element_bytes: int):
        self.model, self.device, self.element_bytes = model, device, element_bytes
        self.stack: list[tuple[nn.Module, list[torch.Tensor]]] = []
        self.peaks = {"backbone": 0, "head": 0}
        self.pam_working = 0
        self.pam_method = "explicit"
        self.handles = []

    def __enter__(self):
        for module in self.model.modules():
            self.handles.append(module.register_forward_pre_hook(self.enter))
            self.handles.append(module.register_forward_hook(self.leave))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def enter(self, module, args):
        self.stack.append((module, _tensors(args)))

    def part(self) -> str | None:
        for module, _ in self.stack:
            if module is self.model.backbone:
                return "backbone"
            if module is self.model.head:
                return "head"
        return None

    def leave(self, module, args, output):
        part = self.part()
        self.stack.pop()
        if part is not None and not any(True for _ in module.children()):
            # CPU convolutions (oneDNN) write into a blocked-layout buffer and reorder it into the
            # output: one more output-sized buffer while the layer runs (measured per layer).
            extra = _bytes(output) if isinstance(module, nn.Conv2d) and self.device == "cpu" else 0
            self.record(part, args, output, extra=extra)

    def record(self, part: str, args, output, extra: int) -> None:
        """Live bytes now: this step's input/output, inputs held by enclosing blocks, ``extra``."""
        live = {}
        for ancestor, inputs in self.stack:
            if _keeps_input(ancestor) and ancestor is not self.model:
                live.update((id(t), t) for t in inputs)
        live.update((id(t), t) for t in _tensors(args))
        live.update((id(t), t) for t in _tensors(output))
        total = sum(_bytes(t) for t in live.values()) + extra
        self.peaks[part] = max(self.peaks[part], total)

    def wrap_attention(self, module: nn.Module) -> None:
        """Heads call their attention modules' ``attend`` directly (no hooks fire): replace it, on
        the private meta-device copy, by the module's ``meta_attend``, which gives the outputs'
        shapes and the working set without running the aggregation (on the chunked path that
        would loop over query blocks for shapes already known)."""
        def attend(x):
            self.stack.append((module, [x]))
            out, extra, info = module.meta_attend(x, self.device, self.element_bytes)
            self.stack.pop()
            if info is not None:          # the position attention's own working set and path
                self.pam_method, self.pam_working = info
            self.record(self.part() or "head", (x,), (), extra=extra)
            return out
        module.attend = attend


@functools.lru_cache(maxsize=64)
def _estimate(config: DANetConfig, height: int, width: int, device: str, element_bytes: int) -> ForwardMemory:
    with torch.device("meta"):
        model = Segmentor(config).eval()
    parameters = sum(_bytes(p) for p in model.parameters()) + sum(_bytes(b) for b in model.buffers())
    dtype = {2: torch.float16, 4: torch.float32, 8: torch.float64}[element_bytes]
    x = torch.empty(1, 3, height, width, device="meta", dtype=dtype)
    model = model.to(dtype)
    with torch.inference_mode(), _LiveSetTracer(model, device, element_bytes) as tracer:
        for module in model.head.attention_modules():
            tracer.wrap_attention(module)
        features = model.backbone(x)
        head = model.head.inspect(features)
    grid = tuple(features.shape[-2:])
    outputs = len(model.head.outputs) * config.num_classes * height * width * element_bytes
    # The head's outputs (logits at grid size, Q/K, CAM maps) stay alive while logits are upsampled.
    head_peak = max(tracer.peaks["head"], _bytes(head) + outputs)
    return ForwardMemory(parameters=parameters, backbone_peak=tracer.peaks["backbone"], head_peak=head_peak,
                         pam_working=tracer.pam_working, outputs=outputs, pam_method=tracer.pam_method,
                         positions=grid[0] * grid[1], grid=grid, device=device)


def estimate_forward(config: DANetConfig, height: int, width: int, device: str = "cpu",
                     element_bytes: int = 4) -> ForwardMemory:
    """Memory of one ``inspect_image`` forward of a ``config`` model on a height x width image."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    return _estimate(config, int(height), int(width), torch.device(device).type, element_bytes)


def estimate_forward_bytes(config: DANetConfig, height: int, width: int, device: str = "cpu",
                           element_bytes: int = 4) -> int:
    """Bytes one forward needs on top of the loaded weights (live peak plus allocator slack)."""
    return estimate_forward(config, height, width, device, element_bytes).process_peak


def available_bytes(device: str = "cpu") -> int:
    """Memory a new allocation can use now: free RAM on the CPU, free GPU memory on CUDA."""
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def check_forward_fits(config: DANetConfig, height: int, width: int, device: str = "cpu",
                       headroom: float = 0.8) -> str | None:
    """None when the forward fits in ``headroom`` of the free memory, else a message saying why not."""
    estimate = estimate_forward(config, height, width, device)
    free = available_bytes(device)
    if estimate.process_peak <= headroom * free:
        return None
    return (f"a {width}x{height} forward needs about {estimate.process_peak / 2**30:.1f} GiB "
            f"({estimate.positions} attention positions, {estimate.pam_method} PAM) but only "
            f"{free / 2**30:.1f} GiB is free on {device}; use a smaller image")


def check_inspection_fits(config: DANetConfig, image_size: tuple[int, int], device: str = "cpu",
                          headroom: float = 0.8) -> ForwardMemory:
    """Refuse, before any memory is spent, an ``inspect_image`` forward that will not fit.

    ``image_size`` is ``(width, height)`` as ``LoadedImage.size`` gives it. The estimate counts
    the three logit maps ``InspectionResult`` keeps (3 x K x H x W x 4 bytes: 150 classes at
    1 MP are 1.8 GB) on top of the network's own peak. Returns the estimate when it fits in
    ``headroom`` of the free memory; raises ``InputError`` naming the sizes otherwise.
    """
    from danet.errors import InputError

    width, height = (int(v) for v in image_size)
    estimate = estimate_forward(config, height, width, device)
    free = available_bytes(device)
    if estimate.process_peak <= headroom * free:
        return estimate
    raise InputError(f"inspecting a {width}x{height} image with {config.num_classes:,} classes needs about "
                     f"{estimate.process_peak / 2**30:.1f} GiB ({estimate.outputs / 2**30:.1f} GiB of it the class "
                     f"scores), but only {free / 2**30:.1f} GiB is free on {device}; use a smaller image")
