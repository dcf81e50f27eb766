"""The "Does attention matter?" page and the channel page's saturation view, through AppTest.

Every number the page shows is checked against ``danet.analysis`` run on the same cached
``InspectionResult`` (``session_state["selection"].result``), and the process-wide forward
counter must not move while the page is used: the measures read the cached forward, the ablation
and the knockout recompute the head only. The pure readings (``danet_app.measures_view``) are
tested on hand-built inputs whose answers are known.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from danet.analysis import Specificity, ablate, cam_saturation, contribution, knockout_curve, mixed_channels
from danet.analysis.cam import NEGLIGIBLE
from danet_app.measures_view import class_transitions, hidden_note, specificity_reading
from danet_app.state import FORWARDS
from helpers_app import png, small_image, with_tiny_model

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
MEASURES, CHANNELS = "app_pages/measures.py", "app_pages/channels.py"
TIMEOUT = 180


def tiny_app(checkpoint: bytes, image: np.ndarray, page: str = MEASURES) -> AppTest:
    """The app on ``page`` with the uploaded tiny CamVid model and an uploaded image (driven as
    tests/test_app.py does; the inspector page is never run)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page(page).run()
    return with_tiny_model(at, checkpoint, image)


def texts(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def ok(at: AppTest) -> bool:
    return not at.exception and [e.value for e in at.error] == []


def overlays_of(at: AppTest) -> list[str]:
    """Captions of the channel page's mixed-in channel overlays (st.image elements)."""
    return [img.caption for element in at.get("image") for img in element.proto.imgs if img.caption.startswith("ch ")]


def changed_text(ablation, total: int) -> str:
    changed = int(ablation.changed.sum())
    return f"{changed:,} of {total:,} pixels ({ablation.changed_fraction:.2%})"


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_camvid_checkpoint) -> bytes:
    return tiny_camvid_checkpoint.read_bytes()


# ---- the page through AppTest ---------------------------------------------------------------------
@pytest.mark.app
@pytest.mark.slow
def test_measures_page_matches_the_library_and_never_reruns_the_network(tiny_checkpoint):
    at = tiny_app(tiny_checkpoint, small_image())
    forwards = FORWARDS.total                                  # the forward of (tiny, crop) is done
    at.run()
    assert ok(at) and at.title[0].value == "Does attention matter?"
    selection = at.session_state["selection"]
    result, model = selection.result, selection.loaded.model
    height, width = result.image_size

    # contribution: the sentence and the scales, as the library computes them on this result
    expected = contribution(result)
    assert f"Here {expected.sentence()}" in texts(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["PAM alpha (learned)"] == f"{expected.alpha:.4f}"
    assert metrics["CAM beta (learned)"] == f"{expected.beta:.4f}"
    assert metrics["PAM contribution (mean over cells)"] == f"{100 * expected.pam_mean:.2f} %"
    # specificity (N = 192 cells: measured at once, every query)
    from danet.analysis import query_specificity
    spec = query_specificity(result)
    assert metrics["JS from the mean row (mean)"] == f"{spec.js_mean:.3f} bits"
    assert metrics["share explained by the mean row"] == f"{spec.share_mean:.0%}"
    assert metrics["queries measured"] == f"{result.num_positions:,}"
    assert specificity_reading(spec) in texts(at)
    assert any(" s (cached for this model and image)" in c.value for c in at.caption)     # says how long

    # live ablation: PAM off, then both off
    assert "change class" not in texts(at)
    at.checkbox(key="ablate_pam").check().run()
    assert ok(at)
    pam_off = ablate(model, result, pam_off=True, cam_off=False)
    assert pam_off.changed.any()                               # alpha = 0.5 on the tiny model: pixels move
    assert changed_text(pam_off, height * width) in texts(at)
    at.checkbox(key="ablate_cam").check().run()
    both_off = ablate(model, result, pam_off=True, cam_off=True)
    assert changed_text(both_off, height * width) in texts(at)
    assert "With **PAM and CAM off**" in texts(at)

    # knockout at the default point (the image centre), then at a pinned point of the inspector
    centre = knockout_curve(model, result, point=(width // 2, height // 2), max_k=64)
    assert f"Verdict: **{centre.verdict}**" in texts(at)
    assert f"AUC of the logit drop: top {centre.auc['top']:+.4f}" in texts(at)
    assert any(c.value.startswith(f"Rule: {centre.rule}") for c in at.caption)
    at.session_state["points"] = [(10, 10), (120, 90)]
    at.run()
    at.selectbox(key="knockout_point").set_value(1).run()
    assert ok(at)
    pinned = knockout_curve(model, result, point=(120, 90), max_k=64)
    assert f"Verdict: **{pinned.verdict}**" in texts(at) and f"cell {pinned.cell}" in texts(at)
    assert f"top {pinned.auc['top']:+.4f}, random {pinned.auc['random']:+.4f}" in texts(at)

    # pages and reruns reuse everything
    at.switch_page(CHANNELS).run()
    at.switch_page(MEASURES).run()
    assert at.checkbox(key="ablate_pam").value and changed_text(both_off, height * width) in texts(at)
    assert FORWARDS.total == forwards


@pytest.mark.app
@pytest.mark.slow
def test_ablation_reports_the_miou_change_against_a_label_map(tiny_checkpoint):
    image = small_image()
    at = tiny_app(tiny_checkpoint, image)
    labels = np.full(image.shape[:2], 3, np.uint8)                # all road
    labels[:, :40] = 8                                              # and a band of "car"
    at.sidebar.file_uploader(key="label_upload").set_value(("labels.png", png(labels), "image/png")).run()
    forwards = FORWARDS.total
    at.checkbox(key="ablate_cam").check().run()
    assert ok(at)
    selection = at.session_state["selection"]
    expected = ablate(selection.loaded.model, selection.result, pam_off=False, cam_off=True,
                      label=selection.labels.labels, ignore_index=selection.labels.ignore_index)
    assert (f"{100 * expected.miou_before:.2f}% -> {100 * expected.miou_after:.2f}% "
            f"({100 * expected.miou_change:+.2f} points)") in texts(at)
    assert FORWARDS.total == forwards


@pytest.mark.app
def test_channel_page_lists_only_channels_above_the_threshold(tiny_checkpoint):
    at = tiny_app(tiny_checkpoint, small_image(), CHANNELS)
    assert ok(at)
    matrix = at.session_state["selection"].result.cam_attention
    channels = matrix.shape[0]
    saturation = cam_saturation(matrix)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["effective channels per row"] == f"{saturation.effective_mean:.2f}"
    assert saturation.sentence() in " ".join(a.value for a in (*at.warning, *at.success))

    # a threshold between the row's 3rd and 4th largest weights: 3 shown, the rest hidden
    channel = 2
    at.number_input(key="cam_channel").set_value(channel).run()
    weights = np.sort(matrix[channel])[::-1]
    threshold = float((weights[2] + weights[3]) / 2)
    at.number_input(key="cam_threshold").set_value(threshold).run()
    assert ok(at)
    kept = mixed_channels(matrix, channel, threshold)
    assert len(kept) == 3
    note = hidden_note(3, channels - 3, 0, threshold)
    assert any(note in c.value for c in at.caption), [c.value for c in at.caption]
    assert overlays_of(at) == [f"ch {source}: w = {weight:.4f}" for source, weight in kept]   # the kept ones only


@pytest.mark.app
def test_default_model_channel_page_says_cam_is_saturated():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page(CHANNELS).run()
    assert ok(at)
    matrix = at.session_state["selection"].result.cam_attention
    saturation = cam_saturation(matrix)
    assert saturation.saturated                                     # the shipped model's CAM (issue 14)
    warning = " ".join(w.value for w in at.warning)
    assert saturation.sentence() in warning and "softmax(rowmax(E) - E)" in warning
    kept = mixed_channels(matrix, 0, NEGLIGIBLE)
    shown = min(len(kept), at.slider(key="cam_top_k").value)
    assert any(hidden_note(shown, matrix.shape[0] - len(kept), len(kept) - shown, NEGLIGIBLE) in c.value
               for c in at.caption)
    assert len(overlays_of(at)) == shown


# ---- the readings, on hand-built inputs ---------------------------------------------------------
def spec_of(rows: np.ndarray, grid=(2, 2)) -> Specificity:
    """A ``Specificity`` from explicit attention rows, with the library's definitions."""
    mean = rows.mean(0)
    mix = (rows + mean) / 2

    def entropy(p):
        p = np.where(p > 0, p, 1.0)
        return -(p * np.log2(p)).sum(-1)

    js = entropy(mix) - (entropy(rows) + entropy(mean[None])) / 2
    share = np.minimum(rows, mean).sum(1)
    return Specificity(queries=np.arange(len(rows)), js_bits=js, mean_row_share=share,
                       sinks=mean.reshape(grid), sampled=False)


def test_identical_rows_read_as_the_same_cells():
    rows = np.tile([0.7, 0.1, 0.1, 0.1], (4, 1))
    reading = specificity_reading(spec_of(rows))
    assert reading.startswith("Most queries attend to the same cells") and "100%" in reading


def test_one_hot_distinct_rows_read_as_specific():
    reading = specificity_reading(spec_of(np.eye(4)))      # each query attends only to itself
    assert reading.startswith("Queries attend to different cells") and "25%" in reading
    assert "The 4 most attended cells (sinks) receive 100%" in reading


def test_half_shared_rows_read_as_partly_specific():
    rows = 0.5 * np.eye(4) + 0.5 * np.full((4, 4), 0.25)
    reading = specificity_reading(spec_of(rows))
    assert reading.startswith("Queries are only partly specific")


def test_class_transitions_count_only_changed_pixels():
    before = np.array([[0, 0, 1], [1, 2, 2]])
    after = np.array([[0, 1, 1], [2, 2, 1]])
    assert class_transitions(before, after, ("a", "b", "c")) == [("a", "b", 1), ("b", "c", 1), ("c", "b", 1)]
    assert class_transitions(before, before, ("a", "b", "c")) == []


def test_hidden_note_says_what_is_left_out():
    assert hidden_note(1, 127, 0, 0.01) == "1 channel shown; 127 channels with weight below 0.01 hidden."
    assert hidden_note(6, 0, 2, 0.01) == "6 channels shown; 2 more above the threshold beyond the top-k."


@pytest.mark.app
@pytest.mark.slow
def test_specificity_of_a_large_grid_waits_for_its_button(tiny_checkpoint):
    from danet.analysis.specificity import MAX_QUERIES

    big = np.asarray(Image.fromarray(small_image()).resize((1200, 900)))     # ~1 MP: 113 x 150 cells
    at = tiny_app(tiny_checkpoint, big)
    assert ok(at) and at.session_state["selection"].result.num_positions > 4096
    labels = [m.label for m in at.metric]
    assert "JS from the mean row (mean)" not in labels and "PAM alpha (learned)" in labels
    assert any("seeded sample" in i.value for i in at.info)
    at.button(key="measure_specificity").click().run()
    assert ok(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["queries measured"] == f"{MAX_QUERIES:,} (sample)"
    at.run()                                                          # stays measured on reruns
    assert "JS from the mean row (mean)" in [m.label for m in at.metric]
