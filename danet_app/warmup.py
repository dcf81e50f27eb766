"""Load the default model in the background once per server process, so a visitor does not wait.

``danet_app`` starts this when it is first imported (the first script run of ``streamlit run``):
the page skeleton is drawn while the weights load, and the sidebar's cached loader then finds
them ready (Streamlit's resource cache lets one caller compute a value while the others wait).
Set ``DANET_APP_WARMUP=0`` to turn it off; test processes (pytest) never start it.
"""
from __future__ import annotations

import os
import sys
import threading

_started = False
_lock = threading.Lock()


def start() -> bool:
    """Start the warm-up thread unless it ran in this process already; True if this call started it."""
    global _started
    if os.environ.get("DANET_APP_WARMUP", "1") == "0" or "pytest" in sys.modules:
        return False
    with _lock:
        if _started:
            return False
        _started = True
    threading.Thread(target=_load_default, name="danet-warmup", daemon=True).start()
    return True


def _load_default() -> None:
    try:
        from danet.weights import default_weights_path

        from .sidebar import DEVICE, load_default_model
        from .state import file_sha256

        path = default_weights_path()
        if path.is_file():
            load_default_model(file_sha256(path), DEVICE)
    except Exception:  # noqa: BLE001 - a failed warm-up only means the first visitor loads it
        pass
