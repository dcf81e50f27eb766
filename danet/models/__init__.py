"""DANet models: backbones, attention modules, head, the backbone table and registered builders."""
from danet.models.attention import ChannelAttention, PositionAttention, cam_attention, pam_aggregate, pam_attention_explicit
from danet.models.danet import (DANet, DANetConfig, create_model, danet_efficientnet_lite0, danet_efficientnet_lite1,
                    danet_efficientnet_lite2, danet_mobilenetv2, danet_resnet18, danet_resnet34, danet_resnet50,
                    danet_resnet101, danet_resnet152)
from danet.models.head import DAHead, HeadOutput
from danet.models.registry import (BACKBONES, IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, get_model, list_models, normalisation,
                       register_model)

__all__ = [
    "ChannelAttention", "PositionAttention", "cam_attention", "pam_aggregate", "pam_attention_explicit",
    "DANet", "DANetConfig", "create_model", "danet_efficientnet_lite0", "danet_efficientnet_lite1",
    "danet_efficientnet_lite2", "danet_mobilenetv2", "danet_resnet18", "danet_resnet34", "danet_resnet50",
    "danet_resnet101", "danet_resnet152", "DAHead", "HeadOutput",
    "BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD", "BackboneSpec", "get_model", "list_models", "normalisation",
    "register_model",
]
