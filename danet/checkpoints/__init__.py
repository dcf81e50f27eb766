"""Loading checkpoints of every public DANet layout, safely (safetensors or weights_only).

``load_model(path)`` reads our ``.safetensors`` and the official, mmseg, Tramac and blog
layouts (see ``docs/checkpoints.md``); ``convert`` writes any of them in our format.
"""
from .detect import CheckpointError
from .io import convert, describe, layer4_dilations, load_model, read_checkpoint
from .layouts import DILATIONS, LAYOUTS, LAYOUTS_BY_NAME, Layout, parse_dilation
from .metadata import LoadedModel, ModelMeta
from .safetensors_io import save_model

__all__ = ["CheckpointError", "DILATIONS", "LAYOUTS", "LAYOUTS_BY_NAME", "Layout", "LoadedModel", "ModelMeta",
           "convert", "describe", "layer4_dilations", "load_model", "parse_dilation", "read_checkpoint",
           "save_model"]
