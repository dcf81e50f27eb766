"""Section 6: the measures of ``danet.analysis`` from a cached ``InspectionResult``.

Targets (issue 14): every per-image measure in < 1 s at N = 2,700 (the shipped model on a
480x360 frame), and the knockout curve of one point (k = 1..64) in < 2 s, on the CPU.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from danet.analysis import ablate, cam_saturation, contribution, knockout_curve, measure_image, query_specificity
from danet.inspection import inspect_image

from .measure import median_seconds
from .report import Table

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "samples" / "0016E5_07959.png"
PER_IMAGE_TARGET = 1.0
KNOCKOUT_TARGET = 2.0


def sample_frame(height: int, width: int) -> tuple[np.ndarray, str]:
    """The shipped sample frame at ``width`` x ``height`` (or the other sections' stand-in)."""
    if SAMPLE.is_file():
        image = Image.open(SAMPLE).convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        return np.array(image), f"assets/samples/{SAMPLE.name}"
    from .sections import sample_image

    return sample_image(height, width), "a CamVid val frame or noise (sample missing)"


def measures_table(plan, log) -> Table:
    from .sections import default_model

    model, label = default_model()
    model = model.to("cpu")
    height, width = plan.model_sizes[0]
    image, source = sample_frame(height, width)
    log(f"measures {width}x{height}: forward")
    result = inspect_image(model, image)
    n = result.num_positions
    rng = np.random.default_rng(6)
    points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(max(plan.repeats, 3))]
    points_left = list(points)

    def one_knockout():
        knockout_curve(model, result, points_left.pop() if points_left else points[0], max_k=64)

    jobs = [
        ("all per-image measures (`measure_image`)", lambda: measure_image(result), PER_IMAGE_TARGET),
        ("  query specificity (all N queries, 2 passes)", lambda: query_specificity(result), None),
        ("  contribution (PAM per cell, CAM per channel)", lambda: contribution(result), None),
        ("  CAM saturation", lambda: cam_saturation(result.cam_attention), None),
        ("ablation, PAM and CAM off (head only)", lambda: ablate(model, result, pam_off=True, cam_off=True), None),
        ("knockout curve of one point, k = 1..64", one_knockout, KNOCKOUT_TARGET),
        ("(for scale) one `inspect_image` forward", lambda: inspect_image(model, image), None),
    ]
    table = Table("measures", f"6. Analysis measures from a cached result ({label}), cpu",
                  ["measure", "input (WxH)", "grid N", "median seconds", "target", "verdict"])
    for name, fn, target in jobs:
        log(f"measures: {name.strip()}")
        fn()                                                         # warm-up
        seconds = median_seconds(fn, plan.repeats)
        verdict = None if target is None else ("met" if seconds < target else "NOT met")
        table.add(name, f"{width}x{height}", n, seconds, f"< {target:g} s" if target else None, verdict)
    measured = measure_image(result)
    table.notes.append(f"Median of {plan.repeats} runs on {source}, from one cached `inspect_image` result; "
                       f"the knockout runs take a different random point each time (3 curves: top-k, least-k, "
                       f"random-k averaged over 5 draws).")
    table.notes.append("On this frame: " + " ".join(measured.sentences()))
    return table
