"""The inspector page: the three DANet predictions and, for clicked points, their position-attention
(PAM) maps with per-point statistics, and the downloads.

Runs inside ``app.py`` after the sidebar made the selection; clicks and sliders only recompute
attention rows and overlays, never the network.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import streamlit as st
from streamlit_image_coordinates import streamlit_image_coordinates

from danet import viz
from danet_app import sidebar
from danet_app.exports import (compose_panels, encode_png, image_summary, json_record, metrics_for_json,
                               model_summary, npz_bundle)
from danet_app.state import (MAX_POINTS, OUTPUTS, apply_click, branch_disagreement, drop_point,
                             point_statistics, score_outputs)

CLICK_KEY = "attention_click"          # fixed: the clickable image is redrawn whenever points change
OUTPUT_TITLES = {"fused": "Fused (DANet output)", "pam": "PAM branch", "cam": "CAM branch"}
COLOUR_MAPS = ["jet", "turbo", "inferno", "viridis", "magma", "hot"]


def accept_click() -> None:
    """on_click of the image: fires once per real click (the component re-sends old clicks on reruns)."""
    if apply_click(st.session_state, st.session_state.get(CLICK_KEY), st.session_state.get("click_image_size")):
        st.session_state["click_started"] = time.perf_counter()


@st.cache_resource(max_entries=32, show_spinner=False)
def prediction_views(result_key: str, opacity: float, _result, _image: np.ndarray, _palette: np.ndarray) -> dict:
    """Class overlays of the three outputs and the disagreement view, shared read-only by all
    sessions: recomputed when the result or the opacity changes, not on every click."""
    predictions = {which: _result.prediction(which) for which in OUTPUTS}
    views = {which: viz.mask_overlay(_image, predictions[which], _palette, opacity) for which in OUTPUTS}
    disagreement = viz.disagreement(*(predictions[w] for w in OUTPUTS))
    views["disagreement"] = viz.blend(_image, viz.colorize(disagreement, viz.DISAGREEMENT_PALETTE),
                                      max(opacity, 0.35))
    for array in views.values():
        array.flags.writeable = False
    views["present"] = np.unique(np.concatenate([np.unique(p) for p in predictions.values()]))
    return views


def attention_rows(points: list[tuple[int, int]]) -> np.ndarray:
    """PAM rows of ``points`` (P, h, w); each point's row is computed once per session and result."""
    cache = st.session_state.setdefault("row_cache", {})
    if cache.get("key") != selection.result_key:
        cache.clear()
        cache["key"] = selection.result_key
    for stale in [p for p in cache if p != "key" and p not in points]:
        del cache[stale]                     # at most MAX_POINTS rows: old clicks do not pile up
    missing = [p for p in points if p not in cache]
    if missing:
        cache.update(zip(missing, result.rows(missing)))
    return np.stack([cache[p] for p in points])


def clear_points() -> None:
    st.session_state["points"] = []


selection = sidebar.current()
st.title("DANet inspector")

result, image, classes, palette = selection.result, selection.image, selection.classes, selection.palette
height, width = result.image_size
cached = " (just now)" if selection.computed_now else " (cached)"
st.caption(f"**{selection.image_name}** ({width}x{height}) · forward **{result.seconds:.2f} s** on "
           f"**{result.device}**{cached} · feature grid {result.grid_size[0]}x{result.grid_size[1]} · "
           f"PAM alpha {result.alpha:.3f}, CAM beta {result.beta:.3f}")

# ---- predictions ----------------------------------------------------------------------------------
st.subheader("Predictions")
opacity = st.slider("Class colour opacity", 0.0, 1.0, 0.55, step=0.05, key="mask_opacity", persist_state="session")
views = prediction_views(selection.result_key, opacity, result, image, palette)
overlays = {which: views[which] for which in OUTPUTS}
columns = st.columns(4)
columns[0].image(image, caption="Input", width="stretch")
for column, which in zip(columns[1:], OUTPUTS):
    column.image(overlays[which], caption=OUTPUT_TITLES[which], width="stretch")

disagreement_view = views["disagreement"]
shares = branch_disagreement(result)
columns = st.columns(4)
columns[0].image(disagreement_view, caption="Where the branches disagree with the fused output",
                 width="stretch")
columns[1].image(viz.legend(viz.DISAGREEMENT_LABELS, viz.DISAGREEMENT_PALETTE), width="content")
columns[1].markdown(f"PAM differs from fused on **{shares['pam']:.1%}** of pixels, "
                    f"CAM on **{shares['cam']:.1%}**.")
columns[2].image(viz.legend(classes, palette, present=views["present"]), caption="Predicted classes", width="content")
if selection.labels is not None:
    truth = viz.mask_overlay(image, selection.labels.labels, palette, opacity)
    columns[3].image(truth, caption="Ground truth (label map)", width="stretch")

scored = None
if selection.labels is not None:
    scored = score_outputs(result, selection.labels, len(classes))
    st.subheader("Scores against the label map")
    metric_columns = st.columns(3)
    for column, which in zip(metric_columns, OUTPUTS):
        column.metric(f"{OUTPUT_TITLES[which]}: mIoU", f"{scored[which]['miou']:.1%}",
                      help="Mean over classes present in the label map or the prediction")
        column.caption(f"pixel accuracy {scored[which]['pixel_accuracy']:.1%}")
    table = pd.DataFrame({f"{which} IoU %": np.round(scored[which]["iou"] * 100, 1) for which in OUTPUTS},
                         index=list(classes))
    st.dataframe(table, width="stretch", height=35 * (len(table) + 1) + 3)

# ---- position attention --------------------------------------------------------------------------
st.subheader("Position attention: click on the image")
st.caption("Each click picks a query pixel; its PAM row (softmax over all feature-grid positions, "
           f"{result.num_positions} of them) is shown as a heatmap. Up to {MAX_POINTS} points.")
notice = st.session_state.pop("point_notice", None)
if notice:
    st.warning(notice)

render_start = time.perf_counter()
controls = st.columns([1, 1, 1, 1, 1])
# persist_state="session": a control keeps its value while another page is shown
cmap = controls[0].selectbox("Colour map", COLOUR_MAPS, key="attention_cmap", persist_state="session")
heat_opacity = controls[1].slider("Heatmap opacity", 0.0, 1.0, 0.6, step=0.05, key="attention_opacity",
                                  persist_state="session")
mode = controls[2].radio("Upsampling", ["bilinear", "nearest"], key="attention_mode", horizontal=True,
                         help="nearest shows the feature-grid cells as they are", persist_state="session")
scale = controls[3].radio("Colour scale", ["each map", "shared"], key="attention_scale", horizontal=True,
                          help="shared: one maximum for all points, so their maps are comparable",
                          persist_state="session")
background = controls[4].radio("Click on", ["input", "fused overlay"], key="click_background", horizontal=True,
                               persist_state="session")

points = [tuple(p) for p in st.session_state.get("points", [])]
base = image if background == "input" else overlays["fused"]
left, right = st.columns(2)
with left:
    st.session_state["click_image_size"] = (height, width)
    streamlit_image_coordinates(viz.mark_points(base, points), key=CLICK_KEY, on_click=accept_click,
                                width="stretch", cursor="crosshair", image_format="JPEG", jpeg_quality=92)
    buttons = st.columns([2, 1])
    buttons[0].markdown(f"**{len(points)} point{'s' if len(points) != 1 else ''}** selected "
                        f"(max {MAX_POINTS})")
    buttons[1].button("Clear all points", on_click=clear_points, disabled=not points, key="clear_points")

stats, heat_panels, rows = [], [], None
if points:
    rows = attention_rows(points)                             # (P, h, w), O(P N d)
    maps = result.upsample_maps(rows, mode)                   # (P, H, W)
    stats = point_statistics(result, points, rows, classes)
    shared_max = float(maps.max()) if scale == "shared" else None
    marker = max(6, round(min(height, width) / 40))              # panels are shown small
    for index, (point, values) in enumerate(zip(points, maps)):
        heat = viz.heatmap_overlay(image, values, heat_opacity, cmap, vmin=0.0,
                                   vmax=shared_max if shared_max is not None else float(values.max()))
        heat_panels.append(viz.mark_points(heat, [point], radius=marker, first_index=index))
    with right:
        latest = len(points) - 1
        st.image(heat_panels[latest], width="stretch",
                 caption=f"Attention of point {latest + 1} (latest click)")
        s = stats[latest]
        st.markdown(f"point **{latest + 1}** at ({s.x}, {s.y}) · cell {s.cell} · predicted "
                    f"**{s.class_name}** · same-class mass **{s.same_class_share:.1%}**")
else:
    with right:
        st.info("Click anywhere on the image to see where that pixel attends.")

if points:
    st.markdown("##### All points, side by side")
    per_row = 4
    for start in range(0, len(points), per_row):
        columns = st.columns(per_row)
        for column, index in zip(columns, range(start, min(start + per_row, len(points)))):
            s = stats[index]
            with column:
                st.image(heat_panels[index], width="stretch", caption=f"point {index + 1}")
                st.markdown(
                    f"**{index + 1}** · ({s.x}, {s.y}) · cell ({s.cell[0]}, {s.cell[1]})  \n"
                    f"class **{s.class_name}**  \n"
                    f"entropy **{s.entropy_bits:.2f} bits** ({s.entropy_fraction:.0%} of uniform)  \n"
                    f"same-class mass **{s.same_class_share:.1%}**  \n"
                    f"most attended: {s.top_class_name} ({s.top_class_share:.0%})")
                st.button("Remove", key=f"remove_{s.x}_{s.y}", on_click=drop_point,
                          args=(st.session_state, (s.x, s.y)))
    with st.expander("Point statistics as a table"):
        st.dataframe(pd.DataFrame([s.to_dict() for s in stats]).set_index("index"), width="stretch")
        st.caption("Entropy of the attention row in bits (uniform over the grid = 100%); same-class mass = "
                   "attention on grid cells whose majority fused prediction is the point's class.")

render_seconds = time.perf_counter() - render_start
timings = st.session_state.setdefault("timings", {})
timings["attention rows + overlays (this run)"] = render_seconds
click_started = st.session_state.pop("click_started", None)
if click_started is not None:
    timings["last click -> heatmaps ready (server)"] = time.perf_counter() - click_started

# ---- downloads ------------------------------------------------------------------------------------
st.subheader("Downloads")
settings = {"class_opacity": opacity, "colour_map": cmap, "heatmap_opacity": heat_opacity,
            "upsampling": mode, "colour_scale": scale}
original_width, original_height = selection.original_size
image_info = image_summary(selection.image_name, selection.image_sha256, (height, width),
                           (original_height, original_width))
points_info = [s.to_dict() for s in stats]
metrics_info = metrics_for_json(scored, classes) if scored else None
model_info = model_summary(selection.loaded, selection.model_sha256, selection.model_id)
stem = selection.image_name.rsplit(".", 1)[0]


def figure_png() -> bytes:
    panels = [("Input", image)] + [(OUTPUT_TITLES[w], overlays[w]) for w in OUTPUTS]
    panels.append(("Disagreement (PAM orange, CAM blue, both red)", disagreement_view))
    panels += [(f"point {i + 1} ({s.x}, {s.y}) {s.class_name}", panel)
               for i, (s, panel) in enumerate(zip(stats, heat_panels))]
    return encode_png(compose_panels(panels, columns=4))


def maps_npz() -> bytes:
    labels = selection.labels.labels if selection.labels is not None else None
    return npz_bundle(result, points, rows, classes, labels)


def record_json() -> str:
    return json_record(model_info, image_info, result, points_info, settings, metrics_info)


columns = st.columns(3)
columns[0].download_button("Figures (PNG)", figure_png, f"{stem}_danet.png", "image/png", on_click="ignore",
                           key="download_png")
columns[1].download_button("Maps + CAM matrix (.npz)", maps_npz, f"{stem}_danet_maps.npz",
                           "application/octet-stream", on_click="ignore", key="download_npz")
columns[2].download_button("Record (JSON)", record_json, f"{stem}_danet.json", "application/json",
                           on_click="ignore", key="download_json")
