"""danet-lens: a faithful DANet that exposes its attention, per call.

Typical use::

    from danet import load_default_model, inspect_image
    loaded = load_default_model()
    result = inspect_image(loaded.model, image_rgb_uint8, loaded.meta.mean, loaded.meta.std)
    maps = result.rows([(120, 80), (300, 200)])   # PAM rows for two pixels, (2, h, w)
"""
from .inspect import InspectionResult, inspect_image, select_device
from .models import DANet, DANetConfig, create_model

__all__ = ["DANet", "DANetConfig", "create_model", "InspectionResult", "inspect_image", "select_device"]
__version__ = "0.1.0"
