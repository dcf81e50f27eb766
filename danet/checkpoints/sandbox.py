"""Parsing an untrusted checkpoint in a short-lived child process with hard limits.

``torch.load(weights_only=True)`` runs no code, but a pickle can still crash the unpickler, make
it hash quadratically for minutes or allocate whatever it names (``bytearray(2_000_000_000)``,
a zip entry that inflates to gigabytes). In a Streamlit server that takes every session down.
So every pickle is unpickled in a child process that:

* is forked from a small fork server (``python -m danet.checkpoints.sandbox``, started once by
  exec, never a fork of the threaded server itself; ``multiprocessing``'s forkserver would re-run
  the caller's ``__main__`` in every child), so it starts in milliseconds without re-importing torch;
* sets its own limits with ``resource.setrlimit`` before touching the file: address space
  (``RLIMIT_AS``: what it had after importing torch plus ``memory_mb``), CPU seconds
  (``RLIMIT_CPU``), output file size, no core dumps; the parent adds a wall-clock limit and
  kills the child when it expires;
* validates what it read (``read.torch_tensor_problem``: dense float weights, integer BN
  counters only, no empty or absurd dims, bounded counts; metadata depth- and size-bounded by
  ``plain``) and hands back only those tensors, as a safetensors file in a private temp
  folder, plus a small JSON of checked metadata.

Whatever the child does -- crash (SIGSEGV), hang, exhaust its limits -- the caller gets one
``CheckpointError("<name> could not be read safely (<what happened>)")`` and nothing of the
pickle ever exists in the calling process.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

try:
    import resource
except ImportError:          # not POSIX: no rlimits, no fork; read_checkpoint then reads in-process
    resource = None

from ..errors import CheckpointError
from .load import OWN_META_KEY
from .mapping import unwrap
from .read import (DTYPE_NAMES, MAX_JSON_DEPTH, RawCheckpoint, bounded_json, check_tensor_set, open_regular,
                   read_in_process, read_safetensors, torch_tensor_problem)

# ---- limits (module constants so tests, and deployments, can lower them) ------------------------
ISOLATE_SAFETENSORS = False
"""Safetensors stay in-process: the format cannot run code, ``check_safetensors_header`` bounds
everything reading it costs, and the child would add its start-up and a copy of every weight
(measured in docs/hardening.md). Set True to isolate them too."""

MEMORY_FLOOR_MB = 512
"""Memory any file may use beyond the interpreter: unpickling bookkeeping, metadata, one
tensor's copy while it is written back. A 32-byte pickle asking for 2 GB stops here."""

MEMORY_PER_FILE_MB = 3
"""Plus this many MB per MB of file: torch stores tensors uncompressed, so a genuine checkpoint
needs about its own size once loaded, plus one tensor at a time while it is written back. Three
times leaves room; a zip entry that inflates 1000x does not fit."""

MEMORY_CEILING_MB = 8192
"""Never more than this, whatever the file size (ResNet-152 DANet with optimizer state: ~0.7 GB)."""

CPU_LIMIT_S = 30
"""CPU seconds; a 181 MB ResNet-50 zip parses and is written back in ~1.3 s. A hash bomb stops here."""

WALL_LIMIT_S = 90
"""Wall-clock seconds, for a child that sleeps or waits instead of computing; looser than the
CPU limit because a busy machine shares its cores."""

MAX_META_NODES = 100_000
"""Values (containers, numbers, strings) kept from a checkpoint's non-tensor metadata; mmseg's
``meta`` has a few hundred. A list holding itself 40 levels deep (2^40 values) stops here."""

MAX_META_CHARS = 4_000_000
"""Characters of metadata strings, counted per occurrence (mmseg's config text is ~30 KB)."""

MAX_RESULT_BYTES = 64 << 20     # the child's metadata JSON, read back by the parent

_EXIT_REFUSED, _EXIT_MEMORY, _EXIT_FAILED = 3, 4, 5
SUPPORTED = resource is not None and hasattr(os, "fork")
"""Where children can be forked and limited (Linux, macOS). Elsewhere pickles are read
in-process with ``weights_only=True`` alone, as before this module existed."""


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu_s: float
    wall_s: float


def limits_for(size: int) -> Limits:
    """The limits for a file of ``size`` bytes (read from the module constants at call time)."""
    memory = MEMORY_FLOOR_MB + MEMORY_PER_FILE_MB * math.ceil(size / 2**20)
    return Limits(int(min(memory, MEMORY_CEILING_MB)), CPU_LIMIT_S, WALL_LIMIT_S)


# ---- the parent's side ------------------------------------------------------------------------
class _ForkServer:
    """A ``python -m danet.checkpoints.sandbox`` process that forks one limited child per request.

    Started by exec (never a fork of the possibly threaded caller), it imports torch once, so a
    child starts in a few milliseconds; it enforces each child's wall-clock limit and reports
    how the child ended. Requests and replies are JSON lines on its stdin/stdout; it exits when
    its stdin closes, i.e. with the caller.
    """

    def __init__(self):
        import subprocess
        import sys

        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        self.process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                        close_fds=True, start_new_session=True)
        self.owner = os.getpid()          # a forked copy of the caller must start its own server
        self.lock = threading.Lock()
        self.waiting: dict[int, list] = {}
        self.next_id = 0
        self.alive = True
        threading.Thread(target=self._read_replies, name="danet-sandbox-replies", daemon=True).start()

    def _read_replies(self) -> None:
        try:
            for line in self.process.stdout:
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue
                with self.lock:
                    slot = self.waiting.pop(reply.get("id"), None)
                if slot is not None:
                    slot[1] = reply
                    slot[0].set()
        except (OSError, ValueError):        # the pipe was closed under us: the server is gone
            pass
        with self.lock:
            self.alive = False
            pending, self.waiting = list(self.waiting.values()), {}
        for slot in pending:
            slot[0].set()

    def run(self, request: dict, patience: float) -> dict | None:
        """Send ``request``; the server's reply, or None if the server died or never answered."""
        event = threading.Event()
        with self.lock:
            if not self.alive:
                return None
            self.next_id += 1
            request = {**request, "id": self.next_id}
            slot = self.waiting[self.next_id] = [event, None]
            try:
                self.process.stdin.write((json.dumps(request) + "\n").encode())
                self.process.stdin.flush()
            except OSError:
                self.alive = False
                return None
        event.wait(patience)
        with self.lock:
            self.waiting.pop(request["id"], None)
        return slot[1]

    def close(self) -> None:
        try:
            self.process.stdin.close()
            self.process.wait(5)
        except Exception:  # noqa: BLE001 - shutting down; nothing to report
            self.process.kill()
            self.process.wait()
        try:
            self.process.stdout.close()
        except Exception:  # noqa: BLE001
            pass


_SERVER: _ForkServer | None = None
_SERVER_LOCK = threading.Lock()
SERVER_START_S = 120
"""Extra patience for the first request, while the fork server imports torch on a busy machine."""


def _server() -> _ForkServer:
    global _SERVER
    with _SERVER_LOCK:
        if _SERVER is None or not _SERVER.alive or _SERVER.owner != os.getpid() or _SERVER.process.poll() is not None:
            _SERVER = _ForkServer()
            import atexit

            atexit.register(_SERVER.close)
        return _SERVER


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


def run_limited(target: str, args: list, limits: Limits, name: str, folder: str) -> int:
    """Run ``target`` (``"module:function"``) on JSON ``args`` in a limited child; its exit code.

    0 or one of ``_EXIT_*`` when it ended by itself. A crash, a hang past ``limits.wall_s``, a CPU
    or memory limit hit raises ``CheckpointError``. The child's stdout/stderr go to
    ``folder/child.log``, never to the caller's terminal.
    """
    request = {"target": target, "args": args, "folder": folder, "memory_mb": limits.memory_mb,
               "cpu_s": limits.cpu_s, "wall_s": limits.wall_s}
    reply = _server().run(request, limits.wall_s + SERVER_START_S)
    if reply is None:
        raise CheckpointError(f"{name} could not be read safely (the reader process stopped unexpectedly)")
    if reply["timed_out"]:
        raise CheckpointError(f"{name} could not be read safely (took longer than {limits.wall_s:g} s)")
    number = reply["signal"]
    if number is not None:
        if number == signal.SIGXCPU:
            what = f"used more than {limits.cpu_s:g} s of CPU time"
        elif number == signal.SIGXFSZ:
            what = f"wrote more than {limits.memory_mb} MB"
        else:
            what = f"crashed with signal {number} ({_signal_name(number)})"
        raise CheckpointError(f"{name} could not be read safely ({what})")
    if reply["exit"] == _EXIT_MEMORY:
        raise CheckpointError(f"{name} could not be read safely (needed more than {limits.memory_mb} MB of memory)")
    return reply["exit"]


def _child_message(folder: str, fallback: str) -> str:
    try:
        with open(os.path.join(folder, "error.txt"), encoding="utf-8") as handle:
            return handle.read(4000).strip() or fallback
    except OSError:
        return fallback


def read_isolated(source: Path | bytes, name: str, size: int) -> RawCheckpoint:
    """``read_in_process`` run in a limited child; only checked tensors and plain metadata come back."""
    limits = limits_for(size)
    folder = tempfile.mkdtemp(prefix="danet-read-")      # private (0700), removed below
    try:
        if isinstance(source, bytes):
            path = os.path.join(folder, "input")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
                handle.write(source)
        else:
            path = os.path.abspath(source)       # the server's working directory may differ
        code = run_limited(f"{__name__}:_read_child", [path, name, folder], limits, name, folder)
        if code == _EXIT_REFUSED:
            raise CheckpointError(_child_message(folder, f"{name} could not be read"))
        if code != 0:
            detail = _child_message(folder, f"exit status {code}")
            raise CheckpointError(f"{name} could not be read safely ({detail})")
        return _collect(folder, name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _collect(folder: str, name: str) -> RawCheckpoint:
    """Rebuild what the file held from the child's checked output (tensors + plain JSON)."""
    result_path = os.path.join(folder, "result.json")
    if os.path.getsize(result_path) > MAX_RESULT_BYTES:
        raise CheckpointError(f"{name} could not be read safely (its metadata is too large)")
    with open(result_path, "rb") as handle:
        result = bounded_json(handle.read(), "the reader's result", MAX_RESULT_BYTES, MAX_JSON_DEPTH + 8)
    tensor_path = Path(folder) / "tensors.safetensors"
    tensors = read_safetensors(None, tensor_path, name, tensor_path.stat().st_size).obj
    state = {key: tensors[key] for key in result["order"]}
    if result["container"] == "safetensors":
        return RawCheckpoint(state, result["header"], "safetensors", name)
    wrapper = result["wrapper"]
    obj = dict(state) if wrapper is None else {wrapper: state}
    if wrapper is not None and result["meta"] is not None:
        obj["meta"] = result["meta"]
    if result["own"] is not None:
        obj[OWN_META_KEY] = result["own"]
    return RawCheckpoint(obj, None, result["container"], name)


# ---- the child's side ---------------------------------------------------------------------------
def _confine(folder: str, limits: Limits) -> None:
    """Limits on this (child) process, set before it reads a byte of the file."""
    log = os.open(os.path.join(folder, "child.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.nice(10)          # untrusted work yields the CPU to the caller (a server's event loop) when cores are busy
    torch.set_num_threads(1)
    try:
        with open("/proc/self/statm") as handle:          # address space in use now (torch mapped)
            mapped = int(handle.read().split()[0]) * resource.getpagesize()
    except OSError:                                       # no /proc (macOS): RSS is the best estimate
        mapped = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cap = mapped + limits.memory_mb * 2**20
    try:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (ValueError, OSError):                         # not settable here; CPU and wall limits still hold
        pass
    cpu = max(1, math.ceil(limits.cpu_s))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))      # SIGXCPU at the soft limit
    output = limits.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_FSIZE, (output, output))


def _run_child(request: dict) -> None:
    """In a freshly forked child: confine, run the target, report only by exit code and files."""
    code = _EXIT_FAILED
    folder = request["folder"]
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        _confine(folder, Limits(request["memory_mb"], request["cpu_s"], request["wall_s"]))
        module, function = request["target"].split(":")
        getattr(importlib.import_module(module), function)(*request["args"])
        code = 0
    except CheckpointError as error:
        _write_message(folder, str(error))
        code = _EXIT_REFUSED
    except MemoryError:
        code = _EXIT_MEMORY
    except RecursionError:
        _write_message(folder, "it is nested too deeply")
    except BaseException as error:  # noqa: BLE001 - anything else is reported in one line, never a traceback
        first = (str(error).splitlines() or [""])[0][:200]
        _write_message(folder, f"{type(error).__name__}: {first}" if first else type(error).__name__)
    finally:
        os._exit(code)


def serve() -> None:
    """The fork server's loop: fork a child per request line, kill it at its deadline, report its end."""
    import select
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children: dict[int, dict] = {}            # pid -> {"id", "deadline", "timed_out"}
    pending = b""
    stdin_open = True
    out = os.fdopen(1, "w", buffering=1)

    def report(pid: int, status: int) -> None:
        child = children.pop(pid)
        signalled = os.WIFSIGNALED(status)
        out.write(json.dumps({"id": child["id"], "timed_out": child["timed_out"],
                              "signal": os.WTERMSIG(status) if signalled else None,
                              "exit": None if signalled else os.WEXITSTATUS(status)}) + "\n")

    while stdin_open or children:
        now = time.monotonic()
        wait = min([c["deadline"] - now for c in children.values()] + [0.05 if children else 1.0])
        if stdin_open:
            readable, _, _ = select.select([0], [], [], max(wait, 0.005))
            if readable:
                chunk = os.read(0, 1 << 16)
                if not chunk:
                    stdin_open = False
                    for pid in children:
                        os.kill(pid, signal.SIGKILL)
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    request = json.loads(line)
                    pid = os.fork()
                    if pid == 0:
                        signal.signal(signal.SIGINT, signal.SIG_DFL)
                        _run_child(request)
                    children[pid] = {"id": request["id"], "deadline": time.monotonic() + request["wall_s"],
                                     "timed_out": False}
        else:
            time.sleep(0.01)
        for pid, child in children.items():
            if not child["timed_out"] and time.monotonic() > child["deadline"]:
                child["timed_out"] = True
                os.kill(pid, signal.SIGKILL)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in children:
                report(pid, status)


def _write_message(folder: str, message: str) -> None:
    try:
        with open(os.path.join(folder, "error.txt"), "w", encoding="utf-8") as handle:
            handle.write(" ".join(message.split())[:2000])
    except OSError:
        pass


class _Budget:
    """Counts values and characters while metadata is copied; refuses past the bounds."""

    def __init__(self, name: str, what: str):
        self.name, self.what, self.nodes, self.chars = name, what, MAX_META_NODES, MAX_META_CHARS

    def spend(self, nodes: int = 1, chars: int = 0) -> None:
        self.nodes -= nodes
        self.chars -= chars
        if self.nodes < 0 or self.chars < 0:
            raise CheckpointError(f"{self.name} has {self.what} larger than danet-lens reads (more than "
                                  f"{MAX_META_NODES:,} values or {MAX_META_CHARS:,} characters, counting shared "
                                  "parts each time they occur)")


def plain(value, budget: _Budget, depth: int = 0):
    """``value`` as plain JSON data (dict/list/str/int/float/bool/None), depth- and size-bounded.

    Tensors and objects of other types become None (metadata never needs them); numpy scalars
    and small arrays become numbers and lists; integers beyond 64 bits become None.
    """
    budget.spend()
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(f"{budget.name} has {budget.what} nested more than {MAX_JSON_DEPTH} levels deep")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        budget.spend(0, len(value))
        return value
    if isinstance(value, int):
        return int(value) if -2**63 <= value < 2**63 else None
    if isinstance(value, float):
        return float(value)
    if isinstance(value, np.generic):
        return plain(value.item(), budget, depth + 1) if value.dtype.kind in "biuf" else None
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf" or value.size > 65_536:
            return None
        budget.spend(value.size)
        return plain(value.tolist(), budget, depth + 1)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if isinstance(key, (str, int, float, bool)) or key is None:
                text = key if isinstance(key, str) else str(key) if not isinstance(key, int) or abs(key) < 2**63 else None
                if text is not None:
                    budget.spend(0, len(text))
                    out[text] = plain(item, budget, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [plain(item, budget, depth + 1) for item in value]
    return None


def _own_strings(value, name: str) -> dict | None:
    """A training checkpoint's ``danet_lens`` strings, if they are a bounded map of strings."""
    if not isinstance(value, Mapping) or len(value) > 64:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    _Budget(name, "danet-lens metadata").spend(len(value), sum(len(k) + len(v) for k, v in value.items()))
    return dict(value)


def _write_tensors(path: str, state: dict) -> None:
    """A safetensors file of ``state``, written one tensor at a time (a view is copied only then)."""
    header, offset = {}, 0
    for key, tensor in state.items():
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as handle:
        handle.write(len(text).to_bytes(8, "little"))
        handle.write(text)
        for tensor in state.values():
            flat = tensor.detach().reshape(-1)
            if flat.stride(0) != 1:          # a view (stride 0, transposed...): materialised now, bounded above
                flat = torch.empty(flat.shape, dtype=flat.dtype).copy_(flat)
            handle.write(memoryview(flat.view(torch.uint8).numpy()))
            del flat


def _read_child(path: str, name: str, folder: str) -> None:
    """In the child: read, check, and write back only what the loader needs."""
    source = Path(path)
    size, head = open_regular(source, name)
    raw = read_in_process(source, name, size, head)
    own = meta = wrapper = None
    if raw.container == "safetensors":
        state = raw.obj
    else:
        try:
            found = unwrap(raw.obj).wrapper.split(" ")[0].split("+")[-1]     # "meta+state_dict (module. prefix)"
        except CheckpointError as error:
            raise CheckpointError(f"{name}: {error}") from None
        wrapper = None if found == "bare" else found
        inner = raw.obj if wrapper is None else raw.obj[wrapper]
        state = {str(k): v for k, v in inner.items() if isinstance(v, torch.Tensor)}
        if wrapper is not None and isinstance(raw.obj.get("meta"), Mapping):
            meta = plain(raw.obj["meta"], _Budget(name, "metadata ('meta')"))
        own = _own_strings(raw.obj.get(OWN_META_KEY), name)
    problems = [problem for key, tensor in state.items() if (problem := torch_tensor_problem(key, tensor))]
    check_tensor_set(problems, len(state), 0 if problems else sum(math.prod(t.shape) for t in state.values()), name)
    _write_tensors(os.path.join(folder, "tensors.safetensors"), state)
    result = {"container": raw.container, "header": raw.header, "wrapper": wrapper, "meta": meta, "own": own,
              "order": list(state)}
    with open(os.path.join(folder, "result.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle)


if __name__ == "__main__":      # the fork server: run the imported module, so children share its globals
    importlib.import_module("danet.checkpoints.sandbox").serve()
