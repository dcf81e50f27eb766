"""Checkpoints of every public DANet layout, read safely and loaded strictly.

Stages, one module each, in the order a file passes through them: ``read`` (bytes -> tensors
and metadata, safely; pickles are parsed by ``sandbox`` in a short-lived, resource-limited child
process), ``mapping`` (unwrap, detect the layout, rename keys, infer the
architecture from shapes), ``layouts`` (the key maps as data, with per-layout hooks),
``resolve`` (what shapes cannot say; metadata checks), ``strict`` (build empty, load every key),
``load`` (the pipeline). ``save``/``convert`` write our ``.safetensors``; ``describe`` says what
a loaded model is. The format specification these follow is ``docs/checkpoint-formats.md``.
"""
from danet.errors import CheckpointError
from danet.checkpoints.convert import convert
from danet.checkpoints.describe import describe, layer4_dilations
from danet.checkpoints.layouts import DILATIONS, LAYOUTS, LAYOUTS_BY_NAME, Layout, parse_dilation
from danet.checkpoints.load import load_model
from danet.checkpoints.meta import LoadedModel, ModelMeta
from danet.checkpoints.read import read_checkpoint
from danet.checkpoints.save import save_model

__all__ = ["CheckpointError", "DILATIONS", "LAYOUTS", "LAYOUTS_BY_NAME", "Layout", "LoadedModel", "ModelMeta",
           "convert", "describe", "layer4_dilations", "load_model", "parse_dilation", "read_checkpoint",
           "save_model"]
