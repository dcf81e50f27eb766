"""Backbones that give the DA head its feature map.

* ``DilatedResNet``: ResNet-18/34/50/101 with the three stems public DANet checkpoints use
  (``"7x7"``: torchvision / official; ``"deep32"``: mmseg ResNetV1c; ``"deep64"``: the v1s
  variant of PyTorch-Encoding and awesome-semantic-segmentation-pytorch) and output stride
  8, 16 or 32, with layer4 dilations 2-4-4 or multi-grid 4-8-16.
* ``TimmBackbone``: any ``timm`` model that supports ``features_only`` (EfficientNet-Lite,
  MobileNetV2, ...), dilated to the requested output stride.

Every backbone exposes ``out_channels`` and returns one feature map from ``forward``.
"""
from __future__ import annotations

from torch import nn

RESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                 152: (3, 8, 36, 3)}
STEMS = ("7x7", "deep32", "deep64")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels, channels, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 conv (conv2), as in every layout."""

    expansion = 4

    def __init__(self, in_channels, channels, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_stem(stem: str) -> tuple[nn.Sequential, int]:
    """The stem as one ``nn.Sequential`` (conv/BN at indices 0,1[,3,4,6,7]) and its width."""
    def cbr(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]

    if stem == "7x7":
        return nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                             nn.ReLU(inplace=True)), 64
    if stem == "deep32":
        return nn.Sequential(*cbr(3, 32, 2), *cbr(32, 32, 1), *cbr(32, 64, 1)), 64
    if stem == "deep64":
        return nn.Sequential(*cbr(3, 64, 2), *cbr(64, 64, 1), *cbr(64, 128, 1)), 128
    raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")


def layer_dilations(output_stride: int, multi_grid: bool, blocks: tuple[int, ...]):
    """Per-layer (stride, [dilation per block]) for layers 1-4.

    Output stride 8: layer3 dilations 1,2,2,...; layer4 2,4,4 (or 4,8,16 with multi-grid).
    Output stride 16: layer3 strided; layer4 1,2,2 (or 2,4,8). Output stride 32: no dilation.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    n3, n4 = blocks[2], blocks[3]
    if output_stride == 8:
        l3 = (1, [1] + [2] * (n3 - 1))
        l4 = (1, [4, 8, 16][:n4] if multi_grid else [2] + [4] * (n4 - 1))
    elif output_stride == 16:
        l3 = (2, [1] * n3)
        l4 = (1, [2, 4, 8][:n4] if multi_grid else [1] + [2] * (n4 - 1))
    else:
        l3, l4 = (2, [1] * n3), (2, [1] * n4)
    return [(1, [1] * blocks[0]), (2, [1] * blocks[1]), l3, l4]


class DilatedResNet(nn.Module):
    """ResNet with a configurable stem and output stride; returns the layer4 feature map."""

    def __init__(self, depth: int = 50, stem: str = "7x7", output_stride: int = 8,
                 multi_grid: bool = False):
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"unsupported ResNet depth {depth}; expected one of {sorted(RESNET_LAYERS)}")
        block = BasicBlock if depth < 50 else Bottleneck
        blocks = RESNET_LAYERS[depth]
        self.stem, in_channels = make_stem(stem)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        plan = layer_dilations(output_stride, multi_grid, blocks)
        for index, (width, (stride, dilations)) in enumerate(zip((64, 128, 256, 512), plan), 1):
            layer, in_channels = self._make_layer(block, in_channels, width, stride, dilations)
            self.add_module(f"layer{index}", layer)
        self.out_channels = in_channels

    @staticmethod
    def _make_layer(block, in_channels, width, stride, dilations):
        downsample = None
        if stride != 1 or in_channels != width * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, width * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(width * block.expansion))
        layers = [block(in_channels, width, stride, dilations[0], downsample)]
        in_channels = width * block.expansion
        layers += [block(in_channels, width, 1, d) for d in dilations[1:]]
        return nn.Sequential(*layers), in_channels

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class TimmBackbone(nn.Module):
    """The deepest feature map of a ``timm`` model built with ``features_only``.

    Weights are never downloaded here: ImageNet initialisation is a separate training-time
    step (``danet.models.pretrained``).
    """

    def __init__(self, name: str, output_stride: int = 8):
        super().__init__()
        import timm  # imported lazily: ResNet-only users do not pay for it

        self.body = timm.create_model(name, pretrained=False, features_only=True,
                                      output_stride=output_stride, out_indices=(-1,))
        self.out_channels = self.body.feature_info.channels()[-1]

    def forward(self, x):
        return self.body(x)[-1]
