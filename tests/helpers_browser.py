"""A real ``streamlit run`` server and a headless Debian chromium, for the browser tests
(test_browser.py, test_browser_attention.py, test_hostile_app.py; the ``browser`` fixture in
conftest.py) and ``benchmarks/app_latency.py``.

``streamlit_server(log_path)`` starts the app on a free local port, waits until
``/_stcore/health`` answers ``ok`` and stops the process by its PID afterwards;
``launch_chromium(playwright)`` opens ``/usr/bin/chromium`` through Playwright with the flags a
sandbox-less CI container needs.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


class ServerError(RuntimeError):
    """The server exited before it was healthy, or never answered its health check."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_streamlit(port: int, log, entry: str = "app.py", extra_args: Sequence[str] = ()) -> subprocess.Popen:
    """``streamlit run entry`` (headless, on 127.0.0.1:port) in the repository root; output to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", entry, "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         *extra_args],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=timeout) as response:
            return response.read().strip() == b"ok"
    except OSError:
        return False


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 90.0, poll: float = 0.5,
                 log_path: Path | None = None) -> None:
    """Until the server answers ``ok``; ``ServerError`` if it exits first or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            hint = f"; see {log_path}" if log_path else ""
            raise ServerError(f"streamlit exited early (code {process.returncode}){hint}")
        if is_healthy(url):
            return
        if time.monotonic() > deadline:
            raise ServerError(f"streamlit did not answer its health check within {timeout:.0f} s")
        time.sleep(poll)


def stop(process: subprocess.Popen) -> None:
    """Terminate by PID; kill if it has not exited after 15 s."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@contextmanager
def streamlit_server(log_path: Path, entry: str = "app.py", extra_args: Sequence[str] = (),
                     timeout: float = 90.0, poll: float = 0.5) -> Iterator[tuple[str, subprocess.Popen]]:
    """A fresh server (fresh caches) on a free port: yields ``(url, process)``, stops it after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = start_streamlit(port, log, entry, extra_args)
        try:
            wait_healthy(url, process, timeout, poll, log_path)
            yield url, process
        finally:
            stop(process)


def require_browser() -> None:
    """Skip the calling test module without Debian chromium or the playwright package."""
    import pytest

    if not CHROMIUM.exists():
        pytest.skip(f"browser test needs Debian chromium at {CHROMIUM} (apt-get install chromium)",
                    allow_module_level=True)
    pytest.importorskip("playwright.sync_api", reason="browser test needs the playwright package")


def launch_chromium(playwright, **options):
    """Headless Debian chromium (``/usr/bin/chromium``) through a Playwright instance."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                                      **options)
