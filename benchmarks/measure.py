"""Timing and peak-memory helpers shared by the benchmark sections.

Peak memory on the CPU is the growth of the process's resident set: ``VmHWM`` (the kernel's
high-water mark, reset with ``/proc/self/clear_refs``) minus the RSS just before the measured
call. Run in a fresh process per measurement (``run_probe``) it is not blurred by memory an
earlier measurement freed but the allocator kept. On CUDA it is ``max_memory_allocated`` minus
the memory allocated before the call.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def high_water_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.bytes``: growth at the high point."""

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self.bytes = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            self.before = rss_bytes()
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")                          # VmHWM := current RSS
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.before
        else:
            self.bytes = high_water_bytes() - self.before

    @property
    def measure(self) -> str:
        return "CUDA max_memory_allocated delta" if self.device.type == "cuda" else "peak RSS delta (VmHWM)"


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, repeats: int, device="cpu") -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(functions: dict, repeats: int, device="cpu") -> dict[str, float]:
    """Median seconds of each function, run in turn (A B C A B C ...) so that a change in machine
    load during the measurement hits every function alike instead of biasing the last one."""
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


class PieceTimer:
    """Wall time per named piece of a forward, by wrapping callables on the model instance.

    Wrapping bound methods (``head.pam.attend``) rather than adding module hooks times the
    pieces that ``DAHead.inspect`` calls directly. Only benchmark-owned instances are wrapped.
    """

    def __init__(self, device="cpu"):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.enabled = True

    def wrap(self, owner, attribute: str, piece: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            if not self.enabled:
                return original(*args, **kwargs)
            sync(self.device)
            start = time.perf_counter()
            out = original(*args, **kwargs)
            sync(self.device)
            self.seconds[piece] = self.seconds.get(piece, 0.0) + time.perf_counter() - start
            return out
        setattr(owner, attribute, timed)

    def wrap_module(self, module, piece: str) -> None:
        self.wrap(module, "forward", piece)

    def reset(self) -> None:
        self.seconds = {}


def run_probe(spec: dict, timeout: float = 900) -> dict:
    """Run ``benchmarks.probe`` on ``spec`` in a fresh interpreter and return its JSON answer."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.probe", json.dumps(spec)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"probe {spec} failed (exit {done.returncode}): {' | '.join(tail)}")
    return json.loads(lines[-1])


@contextmanager
def threads(count: int | None):
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
