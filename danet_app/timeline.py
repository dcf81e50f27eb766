"""Phase marks of the app's runs, for the cold-start benchmark (``benchmarks/cold_start.py``).

With ``DANET_APP_TIMELINE=1`` in the server's environment, ``mark(name)`` prints
``danet-lens timeline: <unix time> <thread> <name>`` to the server log; the benchmark lines them
up with what the browser saw. Otherwise it does nothing (one dictionary look-up at import).
"""
from __future__ import annotations

import os
import sys
import threading
import time

ENABLED = os.environ.get("DANET_APP_TIMELINE") == "1"


def mark(name: str) -> None:
    if ENABLED:        # one write per line: marks of two threads never run into each other
        sys.stdout.write(f"danet-lens timeline: {time.time():.3f} {threading.current_thread().name} {name}\n")
        sys.stdout.flush()
