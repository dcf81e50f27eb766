"""One measurement, meant to run in a fresh interpreter: ``python -m benchmarks.probe '<json>'``.

Prints one JSON line: median seconds, seconds per piece, peak memory growth and how it was
measured. ``run.py`` starts one process per (size, method) so that no measurement inherits
memory the allocator kept from an earlier one.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from danet.memory import pam_method_for
from danet.models.attention import pam_aggregate

from .measure import PeakMemory, PieceTimer, sync
from .reference import make_head

HEAD_CONVS = ("pam_in_conv", "cam_in_conv", "pam_out_conv", "cam_out_conv",
              "pam_classifier", "cam_classifier", "fused_classifier")


def probe_head(spec: dict) -> dict:
    """Time and peak memory of ``DAHead.inspect`` on a random feature map of ``spec['grid']``."""
    device = torch.device(spec.get("device", "cpu"))
    previous = torch.get_num_threads()
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    try:
        return _probe_head(spec, device)
    finally:
        torch.set_num_threads(previous)


def _probe_head(spec: dict, device: torch.device) -> dict:
    height, width = spec["grid"]
    method, repeats = spec["method"], int(spec.get("repeats", 1))
    head = make_head(spec["in_channels"], spec["inter_channels"], spec.get("num_classes", 19), method).to(device)
    timer = PieceTimer(device)
    for name in HEAD_CONVS:
        timer.wrap_module(getattr(head, name), "head convs")
    timer.wrap(head.pam, "attend", "PAM")
    timer.wrap(head.cam, "attend", "CAM")
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, spec["in_channels"], height, width, generator=generator).to(device)
    with torch.inference_mode():
        head.inspect(x[..., :8, :8].contiguous())                       # warm-up: kernels, threads
        if method == "ours":                                             # the SDPA kernel too
            small = torch.randn(1, 64, spec["inter_channels"], device=device)
            pam_aggregate(small[..., :8], small[..., :8], small, "sdpa")
        timer.reset()
        times, out = [], None
        with PeakMemory(device) as peak:
            for _ in range(repeats):
                out = None
                sync(device)
                start = time.perf_counter()
                out = head.inspect(x)
                sync(device)
                times.append(time.perf_counter() - start)
    positions = height * width
    return {"seconds": statistics.median(times), "runs": repeats,
            "pieces": {name: seconds / repeats for name, seconds in timer.seconds.items()},
            "peak_bytes": peak.bytes, "measure": peak.measure, "positions": positions,
            "pam_path": pam_method_for(positions) if method == "ours" else method,
            "device": str(device), "threads": torch.get_num_threads()}


PROBES = {"head": probe_head}


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    print(json.dumps(PROBES[spec.get("probe", "head")](spec)))


if __name__ == "__main__":
    main(sys.argv[1:])
