"""``danet.load``: the one way to get a model, whether the embedded default or a stranger's file.

The default goes through exactly the checks an uploaded copy of the same file gets (format
sniffing, metadata validation, strict loading), so what the app, the CLI, the benchmarks and
the tests hold is always what ``danet info`` describes.
"""
from __future__ import annotations

from pathlib import Path

from danet.checkpoints.load import load_model
from danet.checkpoints.meta import LoadedModel
from danet.data.palettes import DatasetInfo
from danet.weights import default_weights_path

DEFAULT_SOURCE = "embedded default"


def load(source: str | Path | bytes | None = None, *, device: str = "auto", dilation: str | None = None,
         dataset: str | DatasetInfo | None = None, align_corners: bool | None = None,
         name: str | None = None) -> LoadedModel:
    """Load a DANet in eval mode on ``device`` (``"auto"``: CUDA when present).

    ``source``: None for the shipped CamVid model, a path, or a file's bytes (``name`` labels
    them in messages). ``dilation`` (``"2-4-4"``, ``"multi-grid"``, ``"os16"``...), ``dataset``
    (a registered name or a ``DatasetInfo``) and ``align_corners`` override what the file or its
    layout implies. Every refusal is a ``danet.errors.CheckpointError`` with a one-line message.
    """
    if source is None:
        source, name = default_weights_path(), name or DEFAULT_SOURCE
    return load_model(source, dilation=dilation, dataset=dataset, align_corners=align_corners,
                      device=device, name=name)
