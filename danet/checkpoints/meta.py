"""What travels with a set of weights: architecture, labels, normalisation, provenance."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from danet.data.palettes import DatasetInfo, generic_dataset, get_dataset
from danet.models import IMAGENET_MEAN, IMAGENET_STD, Segmentor, DANetConfig

# v2 records the head (``config.head``, ``config.head_options``); a v1 file is DANet's DA head.
METADATA_FORMAT = "danet-lens/2"
READABLE_FORMATS = ("danet-lens/1", "danet-lens/2")
OWN_META_KEY = "danet_lens"     # a training run's last.pt carries its ModelMeta strings here


@dataclass
class ModelMeta:
    """Metadata of a loaded model. ``extra`` holds free-form provenance (metrics, licence...)."""

    config: DANetConfig
    dataset: DatasetInfo
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    layout: str = "danet-lens"
    extra: dict = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes

    @property
    def palette(self) -> np.ndarray:
        return self.dataset.palette_array()

    def to_strings(self) -> dict[str, str]:
        """Flat str -> str mapping, as safetensors metadata requires."""
        return {
            "format": METADATA_FORMAT,
            "config": json.dumps(self.config.to_dict()),
            "dataset": self.dataset.name,
            "classes": json.dumps(list(self.dataset.classes)),
            "palette": json.dumps([list(c) for c in self.dataset.palette]),
            "ignore_index": json.dumps(self.dataset.ignore_index),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "source_layout": self.layout,
            "extra": json.dumps(self.extra),
        }

    @classmethod
    def from_strings(cls, data: dict[str, str]) -> ModelMeta:
        config = DANetConfig.from_dict(json.loads(data["config"]))
        classes = tuple(json.loads(data["classes"])) if "classes" in data else None
        palette = json.loads(data["palette"]) if "palette" in data else None
        if classes and palette:
            dataset = DatasetInfo(data.get("dataset", "custom"), classes,
                                  tuple(tuple(int(v) for v in c) for c in palette),
                                  json.loads(data.get("ignore_index", "null")))
        else:
            try:
                dataset = get_dataset(data.get("dataset", ""))
            except KeyError:
                dataset = generic_dataset(config.num_classes)
        return cls(config=config, dataset=dataset,
                   mean=tuple(json.loads(data.get("mean", json.dumps(IMAGENET_MEAN)))),
                   std=tuple(json.loads(data.get("std", json.dumps(IMAGENET_STD)))),
                   layout=data.get("source_layout", "danet-lens"),
                   extra=json.loads(data.get("extra", "{}")))


@dataclass
class LoadedModel:
    """A Segmentor in eval mode plus its metadata; what the app and CLI hold."""

    model: Segmentor
    meta: ModelMeta
    source: str = ""
    warnings: list[str] = field(default_factory=list)
