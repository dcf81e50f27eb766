"""The inspector's one-line verdict (``danet_app.verdict``): its rules on hand-made numbers, and
in the app (AppTest) its numbers equal ``danet.analysis`` on the same cached result. What the
browser shows (next to the map, the link to the measures page) is checked in test_browser_ui.py.
"""
from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from danet.analysis import ablate, knockout_curve, query_specificity
from danet.analysis.knockout import MAX_K
from danet.analysis.specificity import MAX_QUERIES
from danet.weights import default_card
from danet_app.attention_view import cached_payload
from danet_app.literal import md
from danet_app.state import FORWARDS, PointStats
from danet_app.verdict import (Measured, card_pam_off_cost, class_mass, headline, pinned_summary, sink_peak,
                               typical_query, verdict_line)
from helpers_app import rendered, small_image, with_tiny_model

pytestmark = pytest.mark.app

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 180


def stat(top: str, share: float) -> PointStats:
    return PointStats(index=0, x=0, y=0, cell=(0, 0), class_id=0, class_name="a", entropy_bits=1.0,
                      entropy_fraction=0.5, same_class_share=0.5, top_class_id=0, top_class_name=top,
                      top_class_share=share, peak_cell=(0, 0))


def test_typical_query_sink_and_pinned_summary():
    mean_row = np.array([0.1, 0.6, 0.2, 0.1])
    cells = np.array([0, 1, 1, 2])
    assert class_mass(mean_row, cells, 3).tolist() == pytest.approx([0.1, 0.8, 0.1])
    assert typical_query(mean_row, cells, ("Sky", "Building", "Road")) == ("Building", pytest.approx(0.8))
    assert sink_peak(mean_row) == pytest.approx(2.4)
    assert pinned_summary([stat("Building", 0.64), stat("Building", 0.94)]) == "64-94% on Building"
    assert pinned_summary([stat("Building", 0.64), stat("Building", 0.9), stat("Road", 0.5)]) == \
        "64-90% on Building (2 points), 50% on Road"
    assert pinned_summary([stat("[x](http://e.invalid)", 0.5)]) == f"50% on {md('[x](http://e.invalid)')}"


def test_headline_follows_the_measures_page_readings():
    assert headline(Measured(share=0.9, changed_fraction=0.01)) == \
        "Most queries attend to the same cells; PAM barely changes this prediction"
    assert headline(Measured(share=0.46, changed_fraction=0.05)) == \
        "Queries are only partly specific; PAM changes this prediction"
    assert headline(Measured(share=0.1)) == "Queries attend to different cells"
    assert headline(Measured()) == "Attention at a glance"


def test_the_shipped_card_states_the_cost_of_pam_off():
    assert card_pam_off_cost(default_card().note) == pytest.approx(1.08)
    assert card_pam_off_cost("switching PAM off costs about 0.9 mIoU on val") == pytest.approx(0.9)
    assert card_pam_off_cost("no such statement") is None and card_pam_off_cost("") is None


def test_verdict_line_has_its_numbers():
    line = verdict_line(alpha=-0.0734, typical=("Building", 0.71), sink=106.8, pinned="64-94% on Building",
                        card_cost=1.08, measured=Measured(share=0.46, changed_fraction=0.0107, miou_change=-0.008,
                                                          knockout="no effect"))
    assert line == ("**Queries are only partly specific; PAM barely changes this prediction.** typical query 71% on "
                    "Building, strongest sink 107x uniform · pinned 64-94% on Building · mean row 46% of a row · "
                    "alpha -0.073 · PAM off: 1.1% of pixels change, mIoU -0.80 here; -1.08 val mIoU (model card) · "
                    "knockout of point 1: no effect")
    assert verdict_line(alpha=0.5, pending=True) == "**Attention at a glance.** alpha 0.500 (measuring…)"


def test_the_app_shows_the_verdict_with_the_analysis_numbers(tiny_camvid_checkpoint):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["image_source"] = "Upload an image"
    at.run()
    with_tiny_model(at, tiny_camvid_checkpoint.read_bytes(), small_image())
    at.session_state["points"] = [(20, 30)]
    at.run()
    assert not at.exception
    selection = at.session_state["selection"]
    result, model = selection.result, selection.loaded.model
    (line,) = [rendered(m.value) for m in at.caption if "typical query" in m.value]
    spec = query_specificity(result, max_queries=MAX_QUERIES)
    ablation = ablate(model, result, pam_off=True)
    knockout = knockout_curve(model, result, cell=result.pixel_to_cell(20, 30),
                              max_k=max(1, min(MAX_K, result.num_positions - 1)))
    assert f"mean row {spec.share_mean:.0%} of a row" in line
    assert f"PAM off: {ablation.changed_fraction:.1%} of pixels change" in line
    assert f"knockout of point 1: {knockout.verdict}" in line and f"alpha {result.alpha:.3f}" in line
    assert "measuring" not in line and "model card" not in line              # an upload without a card note
    # the typical query comes from the payload's mean row and cell classes
    payload = cached_payload(selection.result_key, result, selection.image, selection.classes)
    mean_row = np.frombuffer(base64.b64decode(payload["map"]["mean_row"]), "<f4")
    cells = np.frombuffer(base64.b64decode(payload["cell_classes"]), np.uint8)
    name, share = typical_query(mean_row, cells, selection.classes)
    assert f"typical query {share:.0%} on {name}" in line
    # a rerun (a pin, a slider) reuses everything: no forward, the same line
    forwards = FORWARDS.total
    at.run()
    assert FORWARDS.total == forwards
    assert [rendered(m.value) for m in at.caption if "typical query" in m.value] == [line]
    assert any(link.label == "Does attention matter?" for link in at.get("page_link"))
