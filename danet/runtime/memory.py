"""How much memory this process can still allocate: the smallest of every limit that applies.

Free RAM alone is the wrong figure on a shared or small machine: a process started under
``ulimit -v`` (``RLIMIT_AS``) fails an allocation long before RAM runs out (a laptop's 6 GB
budget on a 24 GB host), and in a container the cgroup's ``memory.max`` kills it. So the
headroom is the least of

* free RAM (``psutil``'s ``available``);
* ``RLIMIT_AS`` minus the address space already mapped (``VmSize``); the same for
  ``RLIMIT_DATA`` against ``VmData`` (Linux counts private writable mappings there);
* each enclosing cgroup's ``memory.max`` minus its ``memory.current`` (v2), or
  ``memory.limit_in_bytes`` minus ``memory.usage_in_bytes`` (v1),

with the name of the one that binds, so a refusal can say what limited it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

try:
    import resource
except ImportError:             # not POSIX: free RAM is all we can know
    resource = None

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Headroom:
    """``bytes`` this process may still allocate, and ``limit``: which bound that is."""

    bytes: int
    limit: str


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text in ("max", "") else int(text) if text.isdigit() else None


def _cgroup_headroom() -> list[tuple[int, str]]:
    """(bytes left, name) for every memory-limited cgroup this process sits in."""
    found = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1], parts[2].lstrip("/")
        if controllers == "":                                  # v2: walk up to the root
            folder = CGROUP_ROOT / path
            while True:
                limit, used = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
                if limit is not None and used is not None:
                    found.append((limit - used, f"the cgroup memory limit ({limit / 2**30:.1f} GiB)"))
                if folder == CGROUP_ROOT or CGROUP_ROOT not in folder.parents:
                    break
                folder = folder.parent
        elif "memory" in controllers.split(","):               # v1
            folder = CGROUP_ROOT / "memory" / path
            if not folder.is_dir():
                folder = CGROUP_ROOT / "memory"
            limit = _read_int(folder / "memory.limit_in_bytes")
            used = _read_int(folder / "memory.usage_in_bytes")
            if limit is not None and used is not None and limit < 1 << 60:
                found.append((limit - used, f"the cgroup memory limit ({limit / 2**30:.1f} GiB)"))
    return found


def memory_headroom() -> Headroom:
    """What one more allocation in this process can use now, and the limit that decides it."""
    import psutil

    candidates = [(int(psutil.virtual_memory().available), "free memory")]
    if resource is not None:
        for name, field, what in ((resource.RLIMIT_AS, "VmSize", "address-space"),
                                  (getattr(resource, "RLIMIT_DATA", None), "VmData", "data-segment")):
            if name is None:
                continue
            soft, _hard = resource.getrlimit(name)
            mapped = _status_kb(field)
            if soft != resource.RLIM_INFINITY and mapped is not None:
                why = f"the process's {what} limit ({soft / 2**30:.1f} GiB, {mapped / 2**30:.1f} GiB of it mapped)"
                candidates.append((soft - mapped, why))
    candidates += _cgroup_headroom()
    left, limit = min(candidates, key=lambda c: c[0])
    return Headroom(max(0, int(left)), limit)


def describe(headroom: Headroom) -> str:
    """``2.1 GiB (the process's address-space limit (4.0 GiB, 1.9 GiB of it mapped))`` for messages."""
    return f"{headroom.bytes / 2**30:.1f} GiB ({headroom.limit})"


def is_out_of_memory(error: BaseException) -> bool:
    """A failed allocation: ``MemoryError``, PyTorch's CPU allocator's or CUDA's out-of-memory error."""
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("DefaultCPUAllocator" in text or "out of memory" in text
                                                or "can't allocate memory" in text)
