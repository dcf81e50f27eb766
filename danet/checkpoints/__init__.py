"""Loading checkpoints of every public DANet layout, safely (safetensors or weights_only)."""
from .metadata import LoadedModel, ModelMeta
from .safetensors_io import save_model

__all__ = ["LoadedModel", "ModelMeta", "save_model"]
