"""danet-lens: a faithful DANet that exposes its attention, per call.

Typical use::

    import danet
    loaded = danet.load()                       # the embedded CamVid model; or danet.load("any.pth")
    result = danet.inspect_image(loaded.model, image_rgb_uint8, loaded.meta.mean, loaded.meta.std)
    maps = result.rows([(120, 80), (300, 200)])   # PAM rows for two pixels, (2, h, w)

This package never imports streamlit or plotly; the app lives in ``danet_app``.

Importing it sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already chooses (it only
acts if torch is not imported yet): OpenMP's default of spinning while it waits made every
small forward 10-17 times slower whenever another process wanted the cores (a 32x32 forward
took 0.4 s instead of 0.03 s on a busy 2-core machine; ``python -m benchmarks.limits``).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # idle OpenMP threads sleep (benchmarks.limits)
from danet.errors import CheckpointError, DanetError, ImageLoadError, InputError, LabelMapError, UnknownNameError

# The rest is imported on first use (PEP 562): ``import danet.data.images`` or ``danet.errors`` then
# costs no torch import (the decoding sandbox's fork server imports only what decoding needs:
# 0.3 s instead of seconds), while ``danet.load`` and ``from danet import load`` work as before.
_LAZY = {"select_device": "danet.runtime.device", "InspectionResult": "danet.inspection",
         "inspect_image": "danet.inspection", "load": "danet.loader", "DANet": "danet.models",
         "DANetConfig": "danet.models", "create_model": "danet.models", "get_model": "danet.models",
         "list_models": "danet.models"}

__all__ = ["load", "inspect_image", "InspectionResult", "select_device", "list_models", "get_model", "create_model",
           "DANet", "DANetConfig", "DanetError", "CheckpointError", "ImageLoadError", "InputError", "LabelMapError",
           "UnknownNameError", "__version__"]
__version__ = "0.2.0"


SUBPACKAGES = ("analysis", "checkpoints", "cli", "data", "inspection", "jobs", "maps", "models", "render",
               "runtime", "safety", "weights", "loader", "errors")


def __getattr__(name: str):
    import importlib

    if name in SUBPACKAGES:                  # ``danet.weights...`` after a plain ``import danet``, as before
        return importlib.import_module(f"danet.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'danet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value                  # later look-ups are plain attribute reads
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(SUBPACKAGES))
