"""The weights that ship inside the package, and their one description: the model card.

The card is read from the file's own metadata (written by ``danet train`` and checked like
any other checkpoint's when the model loads), so ``danet info``, the README's card and the
app's model page all show the same facts. Nothing is downloaded, ever.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

DEFAULT_NAME = "danet_mobilenetv2_camvid"
DEFAULT_BUILDER = "danet_mobilenetv2"


def default_weights_path() -> Path:
    """Where the embedded default's ``.safetensors`` lies in the installed package."""
    return Path(str(resources.files(__name__).joinpath(f"{DEFAULT_NAME}.safetensors")))


@dataclass(frozen=True)
class ModelCard:
    """What a user needs to know before trusting a set of weights."""

    name: str
    builder: str
    backbone: str
    head_channels: int | None
    key_channels: int | None
    output_stride: int
    align_corners: bool
    dataset: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int] | None            # (H, W) the model was evaluated at
    metrics: dict = field(default_factory=dict)     # val_miou, val_pixel_accuracy (percent)
    per_class_iou: dict = field(default_factory=dict)
    training_data: str = ""
    training_command: str = ""
    evaluated_with: str = ""
    history: str = ""
    note: str = ""
    licence: str = ""
    size_bytes: int = 0

    def markdown(self) -> str:
        """The card as the README's table (``python -m danet.weights`` prints it)."""
        config = f"head {self.head_channels} channels" + (f", PAM q/k {self.key_channels}" if self.key_channels else "")
        rows = [
            ("weights", f"`{self.name}.safetensors` inside the package (fp16, {self.size_bytes / 2**20:.1f} MiB)"),
            ("architecture", f"DANet on timm `{self.backbone}` at output stride {self.output_stride}, {config}, "
                             f"{len(self.classes)} classes, `align_corners={self.align_corners}`; "
                             f"builder `{self.builder}`"),
            ("input", "RGB, mean " + str(list(self.mean)) + ", std " + str(list(self.std))
             + (f"; evaluated at {self.input_size[1]}x{self.input_size[0]}" if self.input_size else "")),
            ("classes", f"{self.dataset}: {', '.join(self.classes)}"
             + (f" (label {self.ignore_index} ignored)" if self.ignore_index is not None else "")),
            ("training data", self.training_data),
            ("**val mIoU**", f"**{self.metrics.get('val_miou')}** (pixel accuracy {self.metrics.get('val_pixel_accuracy')})"),
            ("per-class val IoU", ", ".join(f"{k} {v}" for k, v in self.per_class_iou.items())),
            ("evaluated with", f"`{self.evaluated_with}`" if self.evaluated_with else ""),
            ("trained with", f"`{self.training_command}`" if self.training_command else ""),
            ("val mIoU per epoch", self.history),
            ("note", self.note),
            ("licence", self.licence),
        ]
        lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v]
        return "\n".join(lines)


def card_from_metadata(name: str, metadata: dict[str, str], size_bytes: int = 0) -> ModelCard:
    """A card from our safetensors metadata (the strings ``ModelMeta.to_strings`` writes)."""
    config = json.loads(metadata["config"])
    extra = json.loads(metadata.get("extra", "{}"))
    size = extra.get("input_size")
    return ModelCard(
        name=name, builder=DEFAULT_BUILDER if name == DEFAULT_NAME else "", backbone=config["backbone"],
        head_channels=config.get("head_channels"),
        key_channels=config.get("key_channels") or (config["head_channels"] // 8 if config.get("head_channels") else None),
        output_stride=config["output_stride"], align_corners=config["align_corners"],
        dataset=metadata.get("dataset", ""), classes=tuple(json.loads(metadata["classes"])),
        palette=tuple(tuple(c) for c in json.loads(metadata["palette"])),
        ignore_index=json.loads(metadata.get("ignore_index", "null")),
        mean=tuple(json.loads(metadata["mean"])), std=tuple(json.loads(metadata["std"])),
        input_size=tuple(size) if size else None,
        metrics={k: extra[k] for k in ("val_miou", "val_pixel_accuracy") if k in extra},
        per_class_iou=dict(extra.get("val_iou", {})), training_data=extra.get("training_data", ""),
        training_command=extra.get("training_command", ""), evaluated_with=extra.get("evaluated_with", ""),
        history=extra.get("training_history", ""), note=extra.get("training_note", ""),
        licence=extra.get("license", ""), size_bytes=size_bytes)


@lru_cache(maxsize=1)
def default_card() -> ModelCard:
    """The shipped model's card, read from the header of the shipped file (no tensors loaded)."""
    from safetensors import safe_open

    path = default_weights_path()
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return card_from_metadata(DEFAULT_NAME, metadata, path.stat().st_size)

