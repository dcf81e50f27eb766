"""The "Does attention matter?" page: contribution, query specificity, live ablation and the
knockout faithfulness of one point, from ``danet.analysis`` on the cached forward result.

Runs inside ``app.py`` after the sidebar made the selection. Nothing here runs the network: the
measures read the cached ``InspectionResult``; the ablation and the knockout recompute the head only.
Each measure is cached per (model, image, parameters) in ``st.cache_data`` (bounded), and the
interactive parts are ``st.fragment``s, so a checkbox reruns its own section, not the page.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time

import numpy as np
import pandas as pd
import streamlit as st

from danet.analysis import ablate, contribution, knockout_curve, query_specificity
from danet.analysis.knockout import MAX_K
from danet.analysis.specificity import MAX_QUERIES
from danet.errors import DanetError
from danet.render import overlays as viz
from danet_app import sidebar
from danet_app.literal import md
from danet_app.measures_view import (ablation_reading, changed_overlay, class_transitions, contribution_reading,
                                     grid_overlay, js_histogram, knockout_figure, knockout_reading,
                                     specificity_reading)

AUTO_POSITIONS = 4096        # above this many grid cells, specificity waits for a button


# ---- cached measures (keyed by the forward's result key: model id + image hash + device) ---------
@st.cache_data(max_entries=16, show_spinner=False)
def cached_contribution(result_key: str, _result):
    start = time.perf_counter()
    value = contribution(_result)
    return value, time.perf_counter() - start


@st.cache_data(max_entries=16, show_spinner=False)
def cached_specificity(result_key: str, max_queries: int, _result):
    start = time.perf_counter()
    value = query_specificity(_result, max_queries=max_queries)
    return value, time.perf_counter() - start


@st.cache_data(max_entries=16, show_spinner=False)
def cached_ablation(result_key: str, pam_off: bool, cam_off: bool, labels_digest: str, _model, _result, _labels):
    """The ablation without its logits (three K x H x W tensors the page does not show)."""
    start = time.perf_counter()
    value = ablate(_model, _result, pam_off=pam_off, cam_off=cam_off,
                   label=None if _labels is None else _labels.labels,
                   ignore_index=None if _labels is None else _labels.ignore_index)
    return dataclasses.replace(value, logits={}), time.perf_counter() - start


@st.cache_data(max_entries=32, show_spinner=False)
def cached_knockout(result_key: str, cell: tuple[int, int], max_k: int, _model, _result):
    start = time.perf_counter()
    value = knockout_curve(_model, _result, cell=cell, max_k=max_k)
    return value, time.perf_counter() - start


def took(seconds: float, what: str = "computed") -> str:
    return f"{what} in {seconds:.2f} s (cached for this model and image)"


def labels_digest(labels) -> str:
    if labels is None:
        return ""
    return f"{hashlib.sha256(np.ascontiguousarray(labels.labels).tobytes()).hexdigest()}:{labels.ignore_index}"


selection = sidebar.current()
result = selection.result
model = selection.loaded.model
key = selection.result_key
image = selection.image
classes = selection.classes
height, width = result.image_size

st.title("Does attention matter?")
sidebar.show_messages()
if result.head != "da":
    # contribution, ablation and knockout are defined on DANet's PAM/CAM terms; a measure a head
    # cannot support is hidden with its reason, never faked
    st.info(f"These measures are defined for DANet's PAM and CAM; this model's {md(result.head)} head "
            f"offers the maps {md(', '.join(result.maps) or 'none')}, which the inspector draws.")
    st.stop()
st.markdown("Measures of this image's position attention (PAM) and channel attention (CAM), from the "
            "forward pass already made: does attention change the features and the prediction here, and "
            "does a point's attention map depend on the point? Definitions: `docs/measures.md`.")

# ---- 1. contribution ------------------------------------------------------------------------------
st.subheader("How much attention changes the features")
contrib, contrib_seconds = cached_contribution(key, result)
cells = st.columns(4)
cells[0].metric("PAM alpha (learned)", f"{contrib.alpha:.4f}")
cells[1].metric("CAM beta (learned)", f"{contrib.beta:.4f}")
cells[2].metric("PAM contribution (mean over cells)", f"{100 * contrib.pam_mean:.2f} %",
                help="|alpha| ||sum_j a_ij V_j|| / ||A_i||, averaged over the grid cells")
cells[3].metric("CAM contribution (mean over channels)", f"{100 * contrib.cam_mean:.2f} %",
                help="|beta| ||(X A)_c|| / ||A_c||, averaged over the channels")
st.markdown(f"**Here {contrib.sentence()}** "
            + contribution_reading(contrib.pam_mean, contrib.cam_mean, contrib.alpha, contrib.beta))
left, right = st.columns(2)
left.image(grid_overlay(image, result, contrib.pam), width="stretch",
           caption="PAM contribution per cell over the image (colours span its min to max; brighter = PAM "
                   "changes that cell's features more)")
with right:
    finite = contrib.pam[np.isfinite(contrib.pam)]
    if finite.size:
        st.markdown(f"PAM contribution over the {result.grid_size[0]}x{result.grid_size[1]} grid: "
                    f"min {100 * finite.min():.2f}%, median {100 * np.median(finite):.2f}%, "
                    f"max {100 * finite.max():.2f}%; over the whole tensor {100 * contrib.pam_overall:.2f}%. "
                    f"CAM over the whole tensor: {100 * contrib.cam_overall:.2f}%.")
    st.caption(took(contrib_seconds))

# ---- 2. query specificity -------------------------------------------------------------------------
st.subheader("Is PAM specific to the query?")
positions = result.num_positions
requested = st.session_state.get("specificity_requested") == key
if positions > AUTO_POSITIONS and not requested:
    st.info(f"The feature grid has {positions:,} cells: specificity measures a seeded sample of "
            f"{MAX_QUERIES:,} queries against all cells, which takes a few seconds.")
    if st.button("Measure query specificity", key="measure_specificity"):
        st.session_state["specificity_requested"] = requested = key
if positions <= AUTO_POSITIONS or requested:
    with st.spinner("Measuring query specificity..."):
        spec, spec_seconds = cached_specificity(key, MAX_QUERIES, result)
    cells = st.columns(4)
    cells[0].metric("JS from the mean row (mean)", f"{spec.js_mean:.3f} bits",
                    help="0 = every query's row is the image's mean row; 1 = disjoint")
    cells[1].metric("share explained by the mean row", f"{spec.share_mean:.0%}",
                    help="sum_j min(a_ij, m_j): the part of a row every query shares")
    cells[2].metric("strongest sink", f"{spec.sink_peak:.0f} x uniform",
                    help="largest mean attention a cell receives, in multiples of 1/N")
    cells[3].metric("queries measured", f"{spec.queries.size:,}" + (" (sample)" if spec.sampled else ""))
    st.markdown(specificity_reading(spec))
    left, right = st.columns(2)
    left.plotly_chart(js_histogram(spec), key="js_histogram", config={"displaylogo": False})
    sinks = spec.sinks * spec.sinks.size                       # multiples of uniform
    sink_view = grid_overlay(image, result, np.sqrt(sinks), 0.65, "magma")
    marks = [(min(int((c + 0.5) * width / result.grid_size[1]), width - 1),
              min(int((r + 0.5) * height / result.grid_size[0]), height - 1)) for r, c, _ in spec.top_sinks(3)]
    right.image(viz.mark_points(sink_view, marks), width="stretch",
                caption="Attention sinks: mean attention each cell receives over all queries (square-root "
                        "scale; numbered: the 3 strongest)")
    st.caption(took(spec_seconds, f"{spec.queries.size:,} queries x {positions:,} cells"))


# ---- 3. live ablation -----------------------------------------------------------------------------
@st.fragment
def ablation_section() -> None:
    st.subheader("Switch attention off")
    st.markdown("alpha = 0 removes PAM's term, beta = 0 removes CAM's; the head is recomputed from the "
                "kept branch inputs (no second backbone forward).")
    boxes = st.columns([1, 1, 3])
    pam_off = boxes[0].checkbox("PAM off", key="ablate_pam", persist_state="session")
    cam_off = boxes[1].checkbox("CAM off", key="ablate_cam", persist_state="session")
    if not (pam_off or cam_off):
        boxes[2].info("Tick PAM off and/or CAM off to see which pixels change class.")
        return
    labels = selection.labels
    try:
        with st.spinner("Recomputing the head..."):
            ablation, seconds = cached_ablation(key, pam_off, cam_off, labels_digest(labels), model, result, labels)
    except DanetError as error:
        st.error(f"The ablation failed: {md(error)}")
        return
    st.markdown(ablation_reading(ablation, height * width))
    if labels is None:
        st.caption("Load a label map in the sidebar (or score a sample against its ground truth) to see the "
                   "mIoU change.")
    left, right = st.columns(2)
    left.image(changed_overlay(image, ablation.changed), width="stretch",
               caption=f"Pixels whose fused class changes with {ablation.name} (magenta)")
    right.image(viz.mask_overlay(image, ablation.prediction, selection.palette, 0.5), width="stretch",
                caption=f"Fused prediction with {ablation.name}")
    transitions = class_transitions(result.prediction("fused"), ablation.prediction, classes)
    if transitions:
        st.dataframe(pd.DataFrame(transitions, columns=["from", "to", "pixels"]), hide_index=True,
                     key="ablation_transitions")
    st.caption(took(seconds, "head recomputed"))


ablation_section()


# ---- 4. knockout faithfulness of one point ------------------------------------------------------------
def point_options(points: list) -> list[int]:
    return list(range(len(points))) + [-1]


@st.fragment
def knockout_section() -> None:
    st.subheader("Does this point's map explain its prediction? (knockout)")
    st.markdown("Remove the k cells the point attends to most from its attention row (the rest "
                "renormalised), recompute its PAM output and class logits, and compare with removing k "
                "random cells and the k least attended: a faithful map hurts the prediction most when its "
                "top cells go.")
    points = [tuple(int(v) for v in p) for p in st.session_state.get("points", [])]
    controls = st.columns([2, 1, 1, 2])
    choice = controls[0].selectbox(
        "Point", point_options(points), key="knockout_point",
        format_func=lambda i: "enter x, y" if i < 0 else f"point {i + 1} ({points[i][0]}, {points[i][1]})",
        help="The inspector's pinned points, or any pixel.")
    if choice >= 0 and choice < len(points):
        x, y = points[choice]
    else:
        x = int(controls[1].number_input("x", 0, width - 1, value=width // 2, step=1, key="knockout_x"))
        y = int(controls[2].number_input("y", 0, height - 1, value=height // 2, step=1, key="knockout_y"))
    limit = max(1, min(MAX_K, positions - 1))
    max_k = int(controls[3].slider("largest k", 1, limit, value=limit, key="knockout_max_k"))
    cell = result.pixel_to_cell(x, y)
    try:
        with st.spinner("Knocking out cells..."):
            knockout, seconds = cached_knockout(key, cell, max_k, model, result)
    except DanetError as error:
        st.error(f"The knockout failed: {md(error)}")
        return
    left, right = st.columns([1, 2])
    row = result.rows([(x, y)])
    heat = result.upsample_maps(row, "bilinear")[0]
    view = viz.heatmap_overlay(image, heat, 0.6, "jet", vmin=0.0, vmax=float(heat.max()) or 1.0)
    left.image(viz.mark_points(view, [(x, y)], labels=False), width="stretch",
               caption=f"Attention of ({x}, {y}), cell {cell}")
    right.plotly_chart(knockout_figure(knockout), key="knockout_curves", config={"displaylogo": False})
    st.markdown(knockout_reading(knockout, classes))
    st.caption(f"Rule: {knockout.rule}. AUC = mean drop over k = 1..{int(knockout.ks[-1])}; random = mean of "
               f"the seeded draws (band: their spread). {took(seconds)}.")


knockout_section()
