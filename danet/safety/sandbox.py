"""Running untrusted work in a short-lived child process with hard limits.

A checkpoint's pickle or an image's compressed stream can crash the parser, make it hash
quadratically for minutes or allocate whatever it names. In a Streamlit server that takes every
session down. So such work runs in a child process that:

* is forked from a small fork server (``python -m danet.safety.sandbox``, started once by exec,
  never a fork of the threaded server itself; ``multiprocessing``'s forkserver would re-run the
  caller's ``__main__`` in every child). The server imports each target's module once, before
  forking, so a child starts in milliseconds and its memory limit does not pay for torch;
* sets its own limits with ``resource.setrlimit`` before running the target: address space
  (``RLIMIT_AS``: what it had at the fork plus ``memory_mb``), CPU seconds (``RLIMIT_CPU``),
  output file size, no core dumps; the server adds a wall-clock limit and kills the child when
  it expires;
* reports only by exit code and the files it writes into a private folder.

Whatever the child does -- crash (SIGSEGV), hang, exhaust its limits -- the caller gets one
``SandboxError("<name> could not be read safely (<what happened>)")``; a ``DanetError`` the target
raises comes back as its one-line message (``child_message``). The callers (``checkpoints.isolated``,
``data.isolated``) turn these into their own error types.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

try:
    import resource
except ImportError:          # not POSIX: no rlimits, no fork; callers then work in-process
    resource = None

from danet.errors import DanetError

EXIT_REFUSED, EXIT_MEMORY, EXIT_FAILED = 3, 4, 5
SUPPORTED = resource is not None and hasattr(os, "fork")
"""Where children can be forked and limited (Linux, macOS). Elsewhere callers work in-process."""


class SandboxError(DanetError):
    """Untrusted work that crashed, hung or ran out of its limits in the child."""


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu_s: float
    wall_s: float




# ---- the parent's side ------------------------------------------------------------------------
class _ForkServer:
    """A ``python -m danet.safety.sandbox`` process that forks one limited child per request.

    Started by exec (never a fork of the possibly threaded caller), it imports each target's module once, so a
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
    or memory limit hit raises ``SandboxError``. The child's stdout/stderr go to
    ``folder/child.log``, never to the caller's terminal.
    """
    request = {"target": target, "args": args, "folder": folder, "memory_mb": limits.memory_mb,
               "cpu_s": limits.cpu_s, "wall_s": limits.wall_s}
    reply = _server().run(request, limits.wall_s + SERVER_START_S)
    if reply is None:
        raise SandboxError(f"{name} could not be read safely (the reader process stopped unexpectedly)")
    if reply["timed_out"]:
        raise SandboxError(f"{name} could not be read safely (took longer than {limits.wall_s:g} s)")
    number = reply["signal"]
    if number is not None:
        if number == signal.SIGXCPU:
            what = f"used more than {limits.cpu_s:g} s of CPU time"
        elif number == signal.SIGXFSZ:
            what = f"wrote more than {limits.memory_mb} MB"
        else:
            what = f"crashed with signal {number} ({_signal_name(number)})"
        raise SandboxError(f"{name} could not be read safely ({what})")
    if reply["exit"] == EXIT_MEMORY:
        raise SandboxError(f"{name} could not be read safely (needed more than {limits.memory_mb} MB of memory)")
    return reply["exit"]


def child_message(folder: str, fallback: str) -> str:
    try:
        with open(os.path.join(folder, "error.txt"), encoding="utf-8") as handle:
            return handle.read(4000).strip() or fallback
    except OSError:
        return fallback






# ---- the child's side ---------------------------------------------------------------------------
def _confine(folder: str, limits: Limits) -> None:
    """Limits on this (child) process, set before it reads a byte of the file."""
    log = os.open(os.path.join(folder, "child.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.nice(10)          # untrusted work yields the CPU to the caller (a server's event loop) when cores are busy
    torch = sys.modules.get("torch")
    if torch is not None:        # a target's library may have imported it; one thread for untrusted work
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
    code = EXIT_FAILED
    folder = request["folder"]
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        _confine(folder, Limits(request["memory_mb"], request["cpu_s"], request["wall_s"]))
        module, function = request["target"].split(":")
        getattr(importlib.import_module(module), function)(*request["args"])
        code = 0
    except DanetError as error:
        _write_message(folder, str(error))
        code = EXIT_REFUSED
    except MemoryError:
        code = EXIT_MEMORY
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
                    try:          # in the server, once: children then start without importing it
                        importlib.import_module(request["target"].split(":")[0])
                    except Exception:  # noqa: BLE001 - the child reports it when it imports again
                        pass
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












if __name__ == "__main__":      # the fork server: run the imported module, so children share its globals
    importlib.import_module("danet.safety.sandbox").serve()
