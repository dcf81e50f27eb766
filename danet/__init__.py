"""danet-lens: a faithful DANet that exposes its attention, per call.

Typical use::

    import danet
    loaded = danet.load()                       # the embedded CamVid model; or danet.load("any.pth")
    result = danet.inspect_image(loaded.model, image_rgb_uint8, loaded.meta.mean, loaded.meta.std)
    maps = result.rows([(120, 80), (300, 200)])   # PAM rows for two pixels, (2, h, w)

This package never imports streamlit or plotly; the app lives in ``danet_app``.
"""
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


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'danet' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value                  # later look-ups are plain attribute reads
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
