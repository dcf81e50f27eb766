"""danet.inspection.memory: the forward-memory estimate, checked against shapes and a measured RSS delta."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from benchmarks.measure import can_reset_peak
from danet.inspection import inspect_image
from danet.inspection.memory import (ALLOCATOR_SLACK, check_forward_fits, estimate_forward, estimate_forward_bytes,
                          pam_working_bytes)
from danet.models import create_model
from danet.maps.dot_softmax import EXPLICIT_MAX_POSITIONS

TINY = dict(backbone="resnet18", num_classes=5, head_channels=32)

# Runs in a fresh interpreter: peak RSS (VmHWM, reset just before) minus RSS before the forward.
MEASURE = textwrap.dedent("""
    import json, sys, numpy as np, torch
    from danet.models import create_model
    from danet.inspection import inspect_image
    torch.set_num_threads(1)
    config, height, width = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    model = create_model(**config).eval()
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    inspect_image(model, image[:64, :64].copy())                 # warm-up: kernels, thread pools
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    def high_water():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    before = rss()
    open("/proc/self/clear_refs", "w").write("5")                # reset the peak to now
    result = inspect_image(model, image)
    print(json.dumps({"delta": high_water() - before, "grid": list(result.grid_size)}))
""")


def measure_forward(config: dict, height: int, width: int) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(config), str(height), str(width)],
                          capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not can_reset_peak(), reason="needs Linux /proc/self/clear_refs to reset the peak RSS")
@pytest.mark.parametrize("size, method", [((512, 512), "explicit"), ((528, 528), "chunked")])
def test_estimate_matches_measured_rss_delta(size, method):
    """PAM dominates at these sizes (N = 4096 and 4356, either side of the explicit/chunked switch)."""
    estimate = estimate_forward(create_model(**TINY).config, *size)
    assert estimate.pam_method == method
    measured = measure_forward(TINY, *size)
    assert tuple(measured["grid"]) == estimate.grid
    ratio = measured["delta"] / estimate.process_peak
    assert 0.5 <= ratio <= 2.0, (f"measured {measured['delta'] / 1e6:.0f} MB vs estimated "
                                 f"{estimate.process_peak / 1e6:.0f} MB")


def test_grid_and_outputs_match_a_real_forward():
    model = create_model(**TINY).eval()
    result = inspect_image(model, np.zeros((75, 100, 3), np.uint8))
    estimate = estimate_forward(model.config, 75, 100)
    assert estimate.grid == result.grid_size
    assert estimate.outputs == sum(t.numel() * 4 for t in (result.fused_logits, result.pam_logits, result.cam_logits))
    assert estimate.parameters == sum(p.numel() * 4 for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())


def test_explicit_pam_working_set_is_two_n_by_n_matrices():
    n = 2700
    assert pam_working_bytes(n, 16, 128, "explicit") == 2 * 4 * n * n + 4 * n * 128


def test_sdpa_working_set_is_linear_in_positions():
    small, large = (pam_working_bytes(n, 64, 512, "sdpa", "cpu") for n in (8192, 32768))
    assert large == 4 * small
    assert large * 30 < 2 * 4 * 32768 * 32768                  # far below the explicit N x N pair


def test_chunked_working_set_is_bounded_by_the_block():
    large = pam_working_bytes(32768, 64, 512, "chunked", "cpu")
    assert large == 2 * 4 * (1 << 22) + 2 * 4 * 32768 * 512
    assert large * 30 < 2 * 4 * 32768 * 32768


def test_estimate_grows_quadratically_with_the_grid():
    config = create_model(**TINY).config
    small, large = estimate_forward(config, 256, 256), estimate_forward(config, 512, 512)
    assert small.positions * 4 == large.positions <= EXPLICIT_MAX_POSITIONS
    assert 15 < large.pam_working / small.pam_working < 17
    assert estimate_forward_bytes(config, 512, 512) == int(large.peak * ALLOCATOR_SLACK["cpu"])


def test_fit_check_says_why_a_forward_will_not_fit(monkeypatch):
    import danet.inspection.memory

    monkeypatch.setattr(danet.inspection.memory, "available_bytes", lambda device="cpu": 2 ** 30)   # 1 GiB free
    config = create_model(backbone="mobilenetv2_100", num_classes=11, head_channels=16).config
    assert check_forward_fits(config, 64, 64) is None
    message = check_forward_fits(config, 2048, 4096)
    assert message is not None
    path = estimate_forward(config, 2048, 4096).pam_method                # sdpa or chunked: not explicit
    assert path != "explicit"
    assert message.startswith("a 4096x2048 forward needs about ") and f"(131072 attention positions, {path} PAM)" in message
    assert message.endswith("but only 1.0 GiB is free on cpu; use a smaller image")


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="must be positive"):
        estimate_forward(create_model(**TINY).config, 0, 10)


def test_estimate_does_not_touch_real_memory():
    estimate = estimate_forward(create_model(**TINY).config, 16384, 16384)     # 268 megapixels
    assert estimate.backbone_peak > 2 ** 33                    # > 8 GiB of activations, never allocated
    assert estimate.positions == 2048 * 2048
