"""One forward, kept: the immutable ``InspectionResult``, its grid geometry and the memory a forward needs."""
from danet.inspection.result import InspectionResult, inspect_image, to_tensor

__all__ = ["InspectionResult", "inspect_image", "to_tensor"]
