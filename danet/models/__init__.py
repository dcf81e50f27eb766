"""The networks: backbones, attention heads (``heads``), the segmentor, the backbone table and builders."""
from danet.maps.dot_softmax import aggregate as pam_aggregate
from danet.maps.dot_softmax import softmax_matrix as pam_attention_explicit
from danet.models.heads import AttentionHead, HeadKeys, HeadState, Term, get_head, list_heads, register_head
from danet.models.heads.da import ChannelAttention, DAHead, PositionAttention, cam_attention
from danet.models.registry import (BACKBONES, IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, get_model, list_models,
                                   normalisation, register_model)
from danet.models.segmentor import (DANet, DANetConfig, Segmentor, SegmentorConfig, create_model,
                                    danet_efficientnet_lite0, danet_efficientnet_lite1, danet_efficientnet_lite2,
                                    danet_mobilenetv2, danet_resnet18, danet_resnet34, danet_resnet50, danet_resnet101,
                                    danet_resnet152)

__all__ = [
    "ChannelAttention", "PositionAttention", "cam_attention", "pam_aggregate", "pam_attention_explicit",
    "AttentionHead", "HeadKeys", "HeadState", "Term", "get_head", "list_heads", "register_head",
    "DANet", "DANetConfig", "Segmentor", "SegmentorConfig", "create_model", "danet_efficientnet_lite0",
    "danet_efficientnet_lite1", "danet_efficientnet_lite2", "danet_mobilenetv2", "danet_resnet18",
    "danet_resnet34", "danet_resnet50", "danet_resnet101", "danet_resnet152", "DAHead",
    "BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD", "BackboneSpec", "get_model", "list_models", "normalisation",
    "register_model",
]
