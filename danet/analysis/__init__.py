"""Does attention matter here, and is it specific? Measures on one ``InspectionResult``.

Modules, one job each (definitions with formulas in docs/measures.md):

* ``specificity``: JS divergence of each PAM row from the image's mean row, the share the mean
  row explains, and the attention sinks (mean attention received) as a map.
* ``contribution``: how much PAM (per cell) and CAM (per channel) change their input features.
* ``ablation``: PAM and/or CAM switched off, the head recomputed from kept branch inputs.
* ``knockout``: deletion curves of one query's attention row (top-k vs random-k vs least-k).
* ``cam``: CAM saturation: per-row entropy, effective number of channels, one-hot flag.
* ``summary``: the model-free measures of one image in one call.

Everything here is read-only on the model and the result; nothing imports a UI library.
"""
from danet.analysis.ablation import Ablation, ablate, head_logits
from danet.analysis.cam import CamSaturation, cam_saturation, mixed_channels
from danet.analysis.contribution import Contribution, contribution, contribution_sentence, percent
from danet.analysis.knockout import Knockout, knockout_curve
from danet.analysis.specificity import Specificity, query_specificity, specificity_from_qk
from danet.analysis.summary import ImageMeasures, measure_image

__all__ = ["Ablation", "ablate", "head_logits", "CamSaturation", "cam_saturation", "mixed_channels",
           "Contribution", "contribution", "contribution_sentence", "percent", "Knockout", "knockout_curve",
           "Specificity", "query_specificity", "specificity_from_qk", "ImageMeasures", "measure_image"]
