"""One measurement, meant to run in a fresh interpreter: ``python -m benchmarks.probe '<json>'``.

Prints one JSON line. ``head``: one method's peak memory growth (and time) -- one process per
(size, method), so that no measurement inherits memory the allocator kept from an earlier one.
``head_times``: every method's time in one process, the methods taking turns run by run.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from danet.inspection.memory import pam_method_for
from danet.models import pam_aggregate

from .measure import PeakMemory, PieceTimer, sync
from .reference import make_head

HEAD_CONVS = ("pam_in_conv", "cam_in_conv", "pam_out_conv", "cam_out_conv",
              "pam_classifier", "cam_classifier", "fused_classifier")


def _with_threads(spec: dict, run):
    previous = torch.get_num_threads()
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    try:
        return run()
    finally:
        torch.set_num_threads(previous)


def _instrumented_head(spec: dict, method: str, device: torch.device):
    """A head for ``method`` (same weights for every method) with its pieces timed."""
    head = make_head(spec["in_channels"], spec["inter_channels"], spec.get("num_classes", 19), method).to(device)
    timer = PieceTimer(device)
    for name in HEAD_CONVS:
        timer.wrap_module(getattr(head, name), "head convs")
    timer.wrap(head.pam, "attend", "PAM")
    timer.wrap(head.cam, "attend", "CAM")
    return head, timer


def _features(spec: dict, device: torch.device) -> torch.Tensor:
    height, width = spec["grid"]
    generator = torch.Generator().manual_seed(1)
    return torch.randn(1, spec["in_channels"], height, width, generator=generator).to(device)


def _warm_up(head, x: torch.Tensor, method: str, spec: dict, device: torch.device) -> None:
    head.inspect(x[..., :8, :8].contiguous())                           # kernels, thread pools
    if method == "ours":                                                 # the SDPA kernel too
        small = torch.randn(1, 64, spec["inter_channels"], device=device)
        pam_aggregate(small[..., :8], small[..., :8], small, "sdpa")


def _timed_inspect(head, x, device) -> float:
    sync(device)
    start = time.perf_counter()
    head.inspect(x)
    sync(device)
    return time.perf_counter() - start


def probe_head(spec: dict) -> dict:
    """Peak memory (and time) of ``DAHead.inspect`` for one method on a random feature map."""
    return _with_threads(spec, lambda: _probe_head(spec, torch.device(spec.get("device", "cpu"))))


def _probe_head(spec: dict, device: torch.device) -> dict:
    method, repeats = spec["method"], int(spec.get("repeats", 1))
    head, timer = _instrumented_head(spec, method, device)
    x = _features(spec, device)
    with torch.inference_mode():
        _warm_up(head, x, method, spec, device)
        timer.reset()
        with PeakMemory(device) as peak:
            times = [_timed_inspect(head, x, device) for _ in range(repeats)]
    positions = x.shape[-2] * x.shape[-1]
    return {"seconds": statistics.median(times), "runs": repeats,
            "pieces": {name: seconds / repeats for name, seconds in timer.seconds.items()},
            "peak_bytes": peak.bytes, "measure": peak.measure, "positions": positions,
            "pam_path": pam_method_for(positions) if method == "ours" else method,
            "device": str(device), "threads": torch.get_num_threads()}


def probe_head_times(spec: dict) -> dict:
    """Times of several methods in one process, taking turns run by run: {method: result}.

    Taking turns spreads any change in machine load over every method; separate processes
    run one after another would hand it to whichever ran during the busy spell.
    """
    return _with_threads(spec, lambda: _probe_head_times(spec, torch.device(spec.get("device", "cpu"))))


def _probe_head_times(spec: dict, device: torch.device) -> dict:
    methods, repeats = spec["methods"], int(spec.get("repeats", 3))
    x = _features(spec, device)
    heads = {method: _instrumented_head(spec, method, device) for method in methods}
    times = {method: [] for method in methods}
    with torch.inference_mode():
        for method, (head, timer) in heads.items():
            _warm_up(head, x, method, spec, device)
            head.inspect(x)                                             # a full-size warm-up run
            timer.reset()
        for _ in range(repeats):
            for method, (head, _) in heads.items():
                times[method].append(_timed_inspect(head, x, device))
    return {method: {"seconds": statistics.median(times[method]), "runs": repeats,
                     "pieces": {name: s / repeats for name, s in heads[method][1].seconds.items()}}
            for method in methods}


PROBES = {"head": probe_head, "head_times": probe_head_times}


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    print(json.dumps(PROBES[spec.get("probe", "head")](spec)))


if __name__ == "__main__":
    main(sys.argv[1:])
