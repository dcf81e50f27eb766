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

**All children share one budget.** Each child keeps to its own limit, but before issue 26
nothing limited how many ran at once: 4 uploads of a 260 KB 8192x8192 PNG made a 8.65 GB
process tree. ``run_limited`` now first takes a slot from the process-wide ``Admission``: the
children's memory limits together stay within ``DANET_SANDBOX_BUDGET_MB`` (default: a quarter
of the machine's memory, at least 4,096 MB), at most ``DANET_SANDBOX_MAX_CHILDREN`` run at once
(default: twice the core count, at least 4), and while other sessions wait, one session holds at most
``DANET_SANDBOX_SESSION_SHARE`` of the budget (default 0.5) -- its further jobs let theirs go
first, so one visitor cannot starve the rest; and a small job (at most ``SMALL_JOB_MB``, a
thumbnail's decode) starts whenever the budget holds it, ahead of large ones waiting for room. A job that must wait is told so (``on_queue``,
e.g. "waiting for the decoder: 3 jobs ahead"), waits at most ``QUEUE_WAIT_S``, and a job that
needs more than the whole budget is refused in one line. The session and the callback come from
``session_scope(key, on_queue=...)`` (a context variable: the app wraps each script run), or
from ``run_limited``'s own arguments; ``status()`` says what runs and waits.
"""
from __future__ import annotations

import contextvars
import importlib
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


# ---- one budget for all children ------------------------------------------------------------
QUEUE_WAIT_S = 300
"""How long a job waits for a slot before it is refused (the budget is busy with other jobs)."""
SMALL_JOB_MB = 256
"""A job this small (a thumbnail's decode) may start beside full child slots and ahead of a large
job still waiting for room, as long as the budget holds it: small uploads never queue behind bombs."""
BUDGET_ENV, CHILDREN_ENV, SHARE_ENV = "DANET_SANDBOX_BUDGET_MB", "DANET_SANDBOX_MAX_CHILDREN", "DANET_SANDBOX_SESSION_SHARE"


def _total_memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        return 16_384


def _env_number(name: str, default: float, low: float, high: float) -> float:
    """``name`` from the environment within ``low..high``; a bad value is ignored (the default holds)."""
    try:
        value = float(os.environ[name])
    except (KeyError, ValueError):
        return default
    return value if math.isfinite(value) and low <= value <= high else default


def budget_mb() -> int:
    """Memory all children's limits may add up to (``DANET_SANDBOX_BUDGET_MB``)."""
    return int(_env_number(BUDGET_ENV, max(4096, _total_memory_mb() // 4), 64, 1 << 24))


def max_children() -> int:
    """Children above ``SMALL_JOB_MB`` that may run at once (``DANET_SANDBOX_MAX_CHILDREN``)."""
    return int(_env_number(CHILDREN_ENV, max(4, 2 * (os.cpu_count() or 2)), 1, 4096))


def session_share() -> float:
    """Share of the budget one session may hold while other sessions wait (``DANET_SANDBOX_SESSION_SHARE``)."""
    return _env_number(SHARE_ENV, 0.5, 0.01, 1.0)


@dataclass(frozen=True)
class QueueStatus:
    """What a waiting job is told: jobs ahead of it, what runs, and the budget."""

    ahead: int
    running: int
    used_mb: int
    budget_mb: int
    waited_s: float

    def sentence(self) -> str:
        ahead = f"{self.ahead} job{'s' if self.ahead != 1 else ''} ahead" if self.ahead else "next in line"
        return (f"queued: {ahead}, {self.running} running ({self.used_mb:,} of {self.budget_mb:,} MB of the "
                f"sandbox budget in use)")


@dataclass
class _Ticket:
    need_mb: int
    session: object
    order: int
    since: float


_SESSION = contextvars.ContextVar("danet_sandbox_session", default=None)
_ON_QUEUE = contextvars.ContextVar("danet_sandbox_on_queue", default=None)


@contextmanager
def session_scope(key, on_queue: Callable[[QueueStatus], None] | None = None) -> Iterator[None]:
    """Sandbox jobs started inside count against session ``key``; ``on_queue`` hears when one waits."""
    tokens = _SESSION.set(key), _ON_QUEUE.set(on_queue)
    try:
        yield
    finally:
        _SESSION.reset(tokens[0])
        _ON_QUEUE.reset(tokens[1])


class Admission:
    """The process-wide gate in front of the fork server: a job runs when its memory limit fits in
    what the budget has left, a child slot is free, it is first in line among the sessions not
    over their share, and no earlier job is still waiting for room (large jobs are not starved)."""

    def __init__(self):
        self.condition = threading.Condition()
        self.running: list[_Ticket] = []
        self.waiting: list[_Ticket] = []
        self.order = itertools.count()
        self.peak_children = 0
        self.peak_mb = 0

    def _used(self, session=None, *, everyone: bool = True) -> int:
        return sum(t.need_mb for t in self.running if everyone or t.session == session)

    def _over_share(self, ticket: _Ticket) -> bool:
        others_wait = any(w.session != ticket.session for w in self.waiting)
        held = self._used(ticket.session, everyone=False)
        return others_wait and held > 0 and held + ticket.need_mb > session_share() * budget_mb()

    def _fits(self, ticket: _Ticket) -> bool:
        if self._used() + ticket.need_mb > budget_mb():
            return False
        large = [t for t in self.running if t.need_mb > SMALL_JOB_MB]
        return ticket.need_mb <= SMALL_JOB_MB or len(large) < max_children()

    def _next(self) -> _Ticket | None:
        eligible = [w for w in self.waiting if not self._over_share(w)]
        head = (eligible or self.waiting or [None])[0]
        if head is not None and self._fits(head):
            return head
        return next((w for w in self.waiting if w.need_mb <= SMALL_JOB_MB and self._fits(w)), None)

    def _status(self, ticket: _Ticket) -> QueueStatus:
        return QueueStatus(ahead=self.waiting.index(ticket), running=len(self.running), used_mb=self._used(),
                           budget_mb=budget_mb(), waited_s=time.monotonic() - ticket.since)

    @contextmanager
    def slot(self, need_mb: int, name: str, session=None,
             on_queue: Callable[[QueueStatus], None] | None = None) -> Iterator[None]:
        budget = budget_mb()
        if need_mb > budget:
            raise SandboxError(f"{name} would need {need_mb:,} MB of memory to be read safely, more than the "
                               f"{budget:,} MB all sandbox jobs share ({BUDGET_ENV})")
        ticket = _Ticket(int(need_mb), session, next(self.order), time.monotonic())
        told = None
        with self.condition:
            self.waiting.append(ticket)
            try:
                while self._next() is not ticket:
                    status = self._status(ticket)
                    if status.waited_s > QUEUE_WAIT_S:
                        raise SandboxError(f"{name} waited more than {QUEUE_WAIT_S} s for the sandbox "
                                           f"({status.ahead} jobs ahead, {status.running} running); try again later")
                    if on_queue is not None and (status.ahead, status.running) != told:
                        told = (status.ahead, status.running)
                        on_queue(status)
                    self.condition.wait(1.0)
            finally:
                self.waiting.remove(ticket)
                self.condition.notify_all()
            self.running.append(ticket)
            self.peak_children = max(self.peak_children, len(self.running))
            self.peak_mb = max(self.peak_mb, self._used())
        try:
            yield
        finally:
            with self.condition:
                self.running.remove(ticket)
                self.condition.notify_all()

    def reset_peaks(self) -> None:
        with self.condition:
            self.peak_children, self.peak_mb = len(self.running), self._used()

    def status(self) -> dict:
        with self.condition:
            return {"budget_mb": budget_mb(), "max_children": max_children(), "used_mb": self._used(),
                    "running": len(self.running), "waiting": len(self.waiting),
                    "peak_children": self.peak_children, "peak_mb": self.peak_mb}


ADMISSION = Admission()


def status() -> dict:
    """The shared budget now: MB in use of the budget, children running and jobs waiting (and peaks)."""
    return ADMISSION.status()




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


def run_limited(target: str, args: list, limits: Limits, name: str, folder: str, *, session=None,
                on_queue: Callable[[QueueStatus], None] | None = None) -> int:
    """Run ``target`` (``"module:function"``) on JSON ``args`` in a limited child; its exit code.

    0 or one of ``_EXIT_*`` when it ended by itself. A crash, a hang past ``limits.wall_s``, a CPU
    or memory limit hit raises ``SandboxError``; so does a job that needs more than the shared
    budget or waits for it longer than ``QUEUE_WAIT_S``. ``session`` and ``on_queue`` default to
    ``session_scope``'s. The child's stdout/stderr go to ``folder/child.log``, never to the
    caller's terminal.
    """
    session = _SESSION.get() if session is None else session
    on_queue = _ON_QUEUE.get() if on_queue is None else on_queue
    with ADMISSION.slot(limits.memory_mb, name, session, on_queue):
        return _run_admitted(target, args, limits, name, folder)


def _run_admitted(target: str, args: list, limits: Limits, name: str, folder: str) -> int:
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
