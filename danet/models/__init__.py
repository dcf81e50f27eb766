"""DANet models: backbones, attention modules, head and builders."""
from .attention import ChannelAttention, PositionAttention, cam_attention, pam_aggregate, pam_attention_explicit
from .danet import (IMAGENET_MEAN, IMAGENET_STD, DANet, DANetConfig, create_model, danet_efficientnet_lite0,
                    danet_mobilenetv2, danet_resnet18, danet_resnet50, danet_resnet101)
from .head import DAHead, HeadOutput

__all__ = [
    "ChannelAttention", "PositionAttention", "cam_attention", "pam_aggregate", "pam_attention_explicit",
    "IMAGENET_MEAN", "IMAGENET_STD", "DANet", "DANetConfig", "create_model", "danet_efficientnet_lite0",
    "danet_mobilenetv2", "danet_resnet18", "danet_resnet50", "danet_resnet101", "DAHead", "HeadOutput",
]
