"""Attention maps by kind: each head's maps are instances of these, with one kernel per kind."""
from danet.maps.base import AttentionMap, MapFlags, upsample
from danet.maps.criss_cross import CrissCrossMap
from danet.maps.dot_softmax import DotSoftmaxMap
from danet.maps.global_map import GlobalMap
from danet.maps.grid import Grid
from danet.maps.mixture import MixtureMap

MAP_KINDS = {cls.kind: cls for cls in (DotSoftmaxMap, GlobalMap, CrissCrossMap, MixtureMap)}

__all__ = ["AttentionMap", "MapFlags", "upsample", "CrissCrossMap", "DotSoftmaxMap", "GlobalMap", "Grid",
           "MixtureMap", "MAP_KINDS"]
