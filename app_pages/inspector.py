"""The inspector page: where a pixel looks, at the speed of the cursor, then the predictions.

The attention tab is one ``st.fragment`` around a Components v2 view (``danet_app.attention_view``):
the browser computes and paints the attention row under the cursor itself, so moving the pointer
never reruns anything; a click pins a point (a trigger), which reruns only the fragment to add the
point's statistics (an inner fragment: the controls are not redrawn). Display settings rerun the
outer fragment. The view's heavy payload (image, Q, K, ...) goes to the browser once per session
and image; later runs send its id only. Points are kept per image, live in the URL
(``?image=...&points=x,y;x,y``) and can be loaded back from a downloaded record.
Nothing here runs the network: the sidebar did, once per (model, image).
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import time

import numpy as np
import pandas as pd
import streamlit as st

from danet.analysis import ablate, knockout_curve, query_specificity
from danet.analysis.knockout import MAX_K
from danet.analysis.specificity import MAX_QUERIES
from danet.errors import DanetError
from danet.render import overlays as viz
from danet.weights import default_card
from danet_app import display_modes, sidebar
from danet_app.attention_view import attention_view, cached_payload, settings
from danet_app.exports import (compose_panels, encode_png, figure_with_key, heat_overlay, image_summary,
                               json_record, metrics_for_json, model_summary, npz_bundle)
from danet_app.literal import code, file_stem, md, plain
from danet_app.verdict import (VERDICT_MAX_CELLS, Measured, card_pam_off_cost, pinned_summary, sink_peak,
                               typical_query, verdict_line)
from danet_app.state import (MAX_POINTS, apply_click, branch_disagreement, drop_point, point_statistics,
                             points_from_record, points_to_param, read_points_param, score_outputs)

VIEW_KEY = "attention_view"
OUTPUT_TITLES = {"fused": "Fused (DANet output)", "pam": "PAM branch", "cam": "CAM branch", "out": "Output"}


def gains_text(result) -> str:
    """The head's learnt gains (DANet: PAM alpha, CAM beta), or its head's name when it has none."""
    names = {"pam": "PAM alpha", "cam": "CAM beta"}
    parts = [f"{names.get(term, term + ' gain')} {value:.3f}" for term, value in result.gains.items()]
    return ", ".join(parts) or f"{result.head} head"
COLOUR_MAPS = ["jet", "turbo", "inferno", "viridis", "magma", "hot"]
VIEWS = {"row": "Where it looks (row)", "column": "Who looks here (column)"}


@st.cache_resource(max_entries=32, show_spinner=False)
def prediction_views(result_key: str, opacity: float, _result, _image: np.ndarray, _palette: np.ndarray) -> dict:
    """Class overlays of the three outputs and the disagreement view, shared read-only by all
    sessions: recomputed when the result or the opacity changes, not on every click."""
    predictions = {which: _result.prediction(which) for which in _result.outputs}
    views = {which: viz.mask_overlay(_image, predictions[which], _palette, opacity) for which in _result.outputs}
    if len(predictions) == 3:               # DANet: where the fused, PAM and CAM outputs disagree
        disagreement = viz.disagreement(*predictions.values())
        views["disagreement"] = viz.blend(_image, viz.colorize(disagreement, viz.DISAGREEMENT_PALETTE),
                                          max(opacity, 0.35))
    for array in views.values():
        array.flags.writeable = False
    views["present"] = np.unique(np.concatenate([np.unique(p) for p in predictions.values()]))
    return views


def map_key() -> str:
    """The result and the attention map shown (a head may offer several: CCNet's two loops and their product)."""
    return f"{selection.result_key}:{chosen_map()}"


def chosen_map() -> str:
    name = st.session_state.get("attention_map_name")
    return name if name in result.maps else next(iter(result.maps))


def attention_rows(points: list[tuple[int, int]]) -> np.ndarray:
    """Rows of ``points`` (P, h, w) in the chosen map; each computed once per session, result and map."""
    cache = st.session_state.setdefault("row_cache", {})
    if cache.get("key") != map_key():
        cache.clear()
        cache["key"] = map_key()
    for stale in [p for p in cache if p != "key" and p not in points]:
        del cache[stale]                     # at most MAX_POINTS rows: old clicks do not pile up
    missing = [p for p in points if p not in cache]
    if missing:
        cache.update(zip(missing, result.rows(missing, chosen_map())))
    return np.stack([cache[p] for p in points])


def cached_statistics(points: list[tuple[int, int]], rows: np.ndarray) -> list:
    """Per-point statistics, each computed once per session and result (a pin adds one, not P)."""
    cache = st.session_state.setdefault("stats_cache", {})
    if cache.get("key") != map_key():
        cache.clear()
        cache["key"] = map_key()
    for point, row in zip(points, rows):
        if point not in cache:
            (cache[point],) = point_statistics(result, [point], row[None], classes)
    for stale in [p for p in cache if p != "key" and p not in points]:
        del cache[stale]
    return [dataclasses.replace(cache[p], index=i) for i, p in enumerate(points)]


# ---- the verdict next to the map (danet_app.verdict) ----------------------------------------------
@st.cache_data(max_entries=16, show_spinner=False)
def verdict_measures(result_key: str, labels_key: str, _model, _result, _labels) -> Measured:
    """Query specificity and the pixels PAM off changes, once per (model, image, label map)."""
    if _result.num_positions > VERDICT_MAX_CELLS:          # seconds on a large grid: the page has it
        return Measured()
    try:
        share = query_specificity(_result, max_queries=MAX_QUERIES).share_mean
        ablation = ablate(_model, _result, pam_off=True, label=None if _labels is None else _labels.labels,
                          ignore_index=None if _labels is None else _labels.ignore_index)
    except DanetError:
        return Measured()
    return Measured(share=share, changed_fraction=ablation.changed_fraction, miou_change=ablation.miou_change)


@st.cache_data(max_entries=32, show_spinner=False)
def point_knockout(result_key: str, cell: tuple[int, int], _model, _result) -> str | None:
    """The knockout verdict of one cell, with the measures page's default largest k."""
    if _result.num_positions > VERDICT_MAX_CELLS:
        return None
    try:
        return knockout_curve(_model, _result, cell=cell, max_k=max(1, min(MAX_K, _result.num_positions - 1))).verdict
    except DanetError:
        return None


def labels_key() -> str:
    labels = selection.labels
    if labels is None:
        return ""
    return f"{hashlib.sha256(np.ascontiguousarray(labels.labels).tobytes()).hexdigest()}:{labels.ignore_index}"


def card_cost() -> float | None:
    """The val mIoU PAM off costs, if the model card (or an upload's training note) says."""
    note = default_card().note if selection.is_default else str((selection.loaded.meta.extra or {}).get(
        "training_note") or "")
    return card_pam_off_cost(note)


def show_verdict(slot, payload: dict | None, stats: list, points: list, final: bool) -> bool:
    """Fill ``slot`` with the verdict; ``final``: with the measured numbers (computing them if
    needed, after the view was drawn), else the free part and "measuring…" unless this session
    has them already. True when the measured numbers are shown."""
    typical = sink = None
    if payload is not None:
        mean_row = np.frombuffer(base64.b64decode(payload["map"]["mean_row"]), "<f4")
        cells = np.frombuffer(base64.b64decode(payload["cell_classes"]),
                              "<u2" if payload["cell_classes_wide"] else np.uint8)
        typical, sink = typical_query(mean_row, cells, classes), sink_peak(mean_row)
    measured = Measured()
    done = st.session_state.setdefault("verdict_done", set())
    key = (selection.result_key, labels_key(), tuple(points[0]) if points else None)
    if final or key in done:
        measured = verdict_measures(selection.result_key, key[1], selection.loaded.model, result, selection.labels)
        knockout = point_knockout(selection.result_key, result.pixel_to_cell(*points[0]), selection.loaded.model,
                                  result) if points else None
        measured = dataclasses.replace(measured, knockout=knockout)
        done.add(key)
    line = verdict_line(alpha=result.alpha, typical=typical, sink=sink, pinned=pinned_summary(stats),
                        card_cost=card_cost(), measured=measured, pending=key not in done)
    with slot.container():
        left, right = st.columns([6, 2], vertical_alignment="center")
        left.caption(line)
        right.page_link("app_pages/measures.py", label="Does attention matter?", icon="➡️")
    return key in done


def payloads_sent() -> set:
    """Payload ids this session's browser was sent (it keeps them; see ``attention_view``)."""
    return st.session_state.setdefault("view_payloads_sent", set())


def resend_payload() -> None:
    """on_need_change of the view: the browser lacks a payload (a reload, a remount): send it again."""
    needed = (st.session_state.get(VIEW_KEY) or {}).get("need")
    payloads_sent().discard(needed)


def pin_point() -> None:
    """on_pin_change of the view (a trigger: fires once per click, before the fragment reruns)."""
    value = (st.session_state.get(VIEW_KEY) or {}).get("pin")
    if apply_click(st.session_state, value, st.session_state.get("click_image_size")) is not None:
        st.session_state["click_started"] = time.perf_counter()


def clear_points() -> None:
    st.session_state["points"] = []


def sync_url(points: list[tuple[int, int]]) -> None:
    """The URL carries the image and its points, so a view can be shared and reloaded."""
    tag, text = selection.image_sha256[:12], points_to_param(points)
    if st.query_params.get("image") != tag:
        st.query_params["image"] = tag
    if text and st.query_params.get("points") != text:
        st.query_params["points"] = text
    elif not text and "points" in st.query_params:
        del st.query_params["points"]


def restore_from_url() -> None:
    """On a fresh session (or a pasted link) for this image, take the points from the URL once."""
    done = st.session_state.setdefault("url_restored", set())
    if selection.result_key in done:
        return
    done.add(selection.result_key)
    if st.query_params.get("image") != selection.image_sha256[:12] or not st.query_params.get("points"):
        return
    try:
        st.session_state["points"], kept = read_points_param(st.query_params["points"], result.image_size)
    except DanetError as error:
        st.session_state["point_notice"] = f"Points in the URL not used: {md(error)}"
    else:
        if kept:
            st.session_state["point_notice"] = md(kept)


def load_record() -> None:
    """on_change of the record uploader: a downloaded JSON record's points, for this image."""
    upload = st.session_state.get("record_upload")
    if upload is None:
        return
    try:
        st.session_state["points"] = points_from_record(upload.getvalue(), selection.image_sha256,
                                                        result.image_size)
        st.session_state["point_notice"] = (f"Loaded {len(st.session_state['points'])} points from "
                                            f"{code(upload.name)}.")
    except DanetError as error:
        st.session_state["point_notice"] = f"Record not loaded: {md(error)}"


def heat_panel(row: np.ndarray, point: tuple[int, int], index: int, mode: str, fraction: float, cmap: str,
               opacity: float, upsampling: str, baseline: np.ndarray) -> tuple[np.ndarray, float, float]:
    """One pinned point's map as the view paints it (for the PNG): (RGB, vmin, vmax)."""
    shown, lo, hi = display_modes.display(row.ravel(), mode, baseline=baseline, fraction=fraction)
    upsampled = result.upsample_maps(shown.reshape(1, *result.grid_size).astype(np.float32), upsampling)[0]
    blended = heat_overlay(image, upsampled, lo, hi, mode, cmap, opacity)
    marker = max(6, round(min(height, width) / 40))
    return viz.mark_points(blended, [point], radius=marker, first_index=index), lo, hi


selection = sidebar.current()
result, image, classes, palette = selection.result, selection.image, selection.classes, selection.palette
height, width = result.image_size
st.session_state["click_image_size"] = (height, width)
restore_from_url()

st.title("DANet inspector")
cached = "just now" if selection.computed_now else "cached"
st.caption(f"**{md(selection.image_name)}** ({width}x{height}) · forward **{result.seconds:.2f} s** on "
           f"**{result.device}** ({cached}) · feature grid {result.grid_size[0]}x{result.grid_size[1]} "
           f"= {result.num_positions} cells · {gains_text(result)}")

sidebar.show_messages()          # the model's, image's and label map's notices: next to the image line
attention_tab, predictions_tab = st.tabs(["Position attention", "Predictions and scores"])


@st.fragment
def attention_panel() -> None:
    """The display settings: changing one reruns this fragment (and the view in it), never the page."""
    # one row that wraps whole controls onto a second row in a narrow main area (columns squeezed
    # them until labels broke mid-word, "Upsam|pling", at 800 px with the sidebar open)
    controls = st.container(horizontal=True, gap="small")
    if len(result.maps) > 1:            # e.g. CCNet: loop 1, loop 2 and the composed two-loop map
        controls.selectbox("Attention map", list(result.maps), key="attention_map_name",
                           format_func=lambda name: f"{name}: {result.maps[name].title}", width=230,
                           help="each map's kind says whether its rows are exact weights or a composed mass flow")
    mode = controls.selectbox("Display", list(display_modes.MODES), key="attention_display",
                              format_func=display_modes.MODES.get, persist_state="session",
                              help="Every map has its own scale and colour bar.", width=210)
    view = controls.radio("Map", list(VIEWS), key="attention_view_kind", format_func=VIEWS.get,
                          persist_state="session", help="column: every query's weight on the cell "
                          "under the cursor (needs each row's normaliser, sent once per image)", width="content")
    cmap = controls.selectbox("Colour map", COLOUR_MAPS, key="attention_cmap", persist_state="session", width=105)
    upsampling = controls.radio("Upsampling", ["bilinear", "nearest"], key="attention_mode",
                                help="nearest shows the feature-grid cells as they are", persist_state="session",
                                width="content")
    opacity = controls.slider("Opacity", 0.0, 1.0, 0.6, step=0.05, key="attention_opacity",
                              persist_state="session", width=120)
    if mode == "mass":                  # drawn only where it applies: the row fits 820 px (1280x800)
        fraction = controls.slider("Mass %", 10, 100, 90, step=5, key="attention_mass", persist_state="session",
                                   help="the smallest set of cells holding this share of the map's mass",
                                   width=120) / 100
    else:
        fraction = st.session_state.get("attention_mass", 90) / 100
    points_panel(mode, view, cmap, upsampling, opacity, fraction)


@st.fragment
def points_panel(mode: str, view: str, cmap: str, upsampling: str, opacity: float, fraction: float) -> None:
    """The view, the pinned points' statistics and the downloads: a pin reruns only this (the
    controls above are not redrawn); its arguments are the settings of the last outer run."""
    started = time.perf_counter()
    notice = st.session_state.pop("point_notice", None)
    if notice:
        st.warning(notice)
    points = [tuple(p) for p in st.session_state.get("points", [])]
    stats, rows = [], None
    if points:
        rows = attention_rows(points)                             # (P, h, w), O(P N d)
        stats = cached_statistics(points, rows)
    verdict_slot = st.empty()                                     # next to the map: filled twice at most
    try:
        payload = cached_payload(selection.result_key, result, image, classes, chosen_map())
    except DanetError as error:              # too large for a browser: the other tab still works
        show_verdict(verdict_slot, None, stats, points, final=True)
        st.error(f"The interactive view is not shown: {md(error)}")
        return
    measured = show_verdict(verdict_slot, payload, stats, points, final=False)
    sent = payloads_sent()
    send = payload["id"] not in sent
    attention_view(payload, settings(mode, view, cmap, upsampling, opacity, fraction, points), key=VIEW_KEY,
                   send_payload=send, on_pin=pin_point, on_need=resend_payload)
    sent.add(payload["id"])
    sync_url(points)

    top = st.columns([3, 1])
    top[0].markdown(f"**{len(points)} point{'s' if len(points) != 1 else ''}** pinned (max {MAX_POINTS}) · "
                    f"the view received {payload['bytes'] / 1e6:.2f} MB for this image")
    top[1].button("Clear all points", on_click=clear_points, disabled=not points, key="clear_points")

    if points:
        per_row = 4
        for start in range(0, len(points), per_row):
            columns = st.columns(per_row)
            for column, index in zip(columns, range(start, min(start + per_row, len(points)))):
                s = stats[index]
                with column:
                    st.markdown(
                        f"**{index + 1}** · ({s.x}, {s.y}) · cell ({s.cell[0]}, {s.cell[1]})  \n"
                        f"class **{md(s.class_name)}**  \n"
                        f"entropy **{s.entropy_bits:.2f} bits** ({s.entropy_fraction:.0%} of uniform)  \n"
                        f"same-class mass **{s.same_class_share:.1%}**  \n"
                        f"most attended: {md(s.top_class_name)} ({s.top_class_share:.0%})")
                    st.button("Remove", key=f"remove_{s.x}_{s.y}", on_click=drop_point,
                              args=(st.session_state, (s.x, s.y)))
        with st.expander("Point statistics as a table"):
            table = pd.DataFrame([s.to_dict() for s in stats]).set_index("index")
            table[["class", "top_class"]] = table[["class", "top_class"]].map(plain)
            st.dataframe(table, width="stretch")
            st.caption("Entropy of the attention row in bits (uniform over the grid = 100%); same-class mass = "
                       "attention on grid cells whose majority fused prediction is the point's class.")

    timings = st.session_state.setdefault("timings", {})
    timings["attention panel (this run)"] = time.perf_counter() - started
    click_started = st.session_state.pop("click_started", None)
    if click_started is not None:
        timings["last pin -> statistics ready (server)"] = time.perf_counter() - click_started

    # ---- downloads and records (in the fragment: they follow the pinned points) -----------------
    with st.expander("Downloads, and loading a record back", expanded=False):
        view_settings = {"display": mode, "map": view, "colour_map": cmap, "heatmap_opacity": opacity,
                         "upsampling": upsampling, "mass_fraction": fraction}
        original_width, original_height = selection.original_size
        image_info = image_summary(selection.image_name, selection.image_sha256, (height, width),
                                   (original_height, original_width))
        model_info = model_summary(selection.loaded, selection.model_sha256, selection.model_id)
        stem = file_stem(selection.image_name)

        def figure_png() -> bytes:
            views = prediction_views(selection.result_key, 0.55, result, image, palette)
            panels = [("Input", image)] + [(OUTPUT_TITLES.get(w, w), views[w]) for w in result.outputs]
            bars = [None] * len(panels)
            if points:
                mean_row = np.frombuffer(base64.b64decode(payload["map"]["mean_row"]), "<f4")
                for i, (s, row) in enumerate(zip(stats, rows)):
                    panel, lo, hi = heat_panel(row, points[i], i, mode, fraction, cmap, opacity, upsampling,
                                               mean_row)
                    panels.append((f"point {i + 1} ({s.x}, {s.y}) {plain(s.class_name, 40)}", panel))
                    bars.append((display_modes.DIVERGING_CMAP if mode == "specific" else cmap, lo, hi,
                                 mode in display_modes.TWO_SIDED))
            figure = compose_panels(panels, columns=4, colour_bars=bars,
                                    bar_label=display_modes.MODES[mode])
            legend = viz.legend([plain(c, 40) for c in classes], palette, present=views["present"])
            title = f"{plain(selection.loaded.source, 80)} · {plain(selection.image_name, 80)}"
            return encode_png(figure_with_key(figure, title, legend))

        def maps_npz() -> bytes:
            labels = selection.labels.labels if selection.labels is not None else None
            return npz_bundle(result, points, rows, classes, labels)

        def record_json() -> str:
            scored = score_outputs(result, selection.labels, len(classes)) if selection.labels is not None else None
            metrics = metrics_for_json(scored, classes) if scored else None
            return json_record(model_info, image_info, result, [s.to_dict() for s in stats], view_settings, metrics)

        columns = st.columns(3)
        columns[0].download_button("Figures (PNG)", figure_png, f"{stem}_danet.png", "image/png", on_click="ignore",
                                   key="download_png")
        columns[1].download_button("Maps + CAM matrix (.npz)", maps_npz, f"{stem}_danet_maps.npz",
                                   "application/octet-stream", on_click="ignore", key="download_npz")
        columns[2].download_button("Record (JSON)", record_json, f"{stem}_danet.json", "application/json",
                                   on_click="ignore", key="download_json")
        st.file_uploader("Load the points of a downloaded record (JSON) for this image", type=["json"],
                         key="record_upload", on_change=load_record)

    # the verdict's measured numbers, after everything else of the fragment was drawn (cached)
    if not measured:
        show_verdict(verdict_slot, payload, stats, points, final=True)


with attention_tab:
    attention_panel()

# ---- predictions ----------------------------------------------------------------------------------
with predictions_tab:
    opacity = st.slider("Class colour opacity", 0.0, 1.0, 0.55, step=0.05, key="mask_opacity",
                        persist_state="session")
    views = prediction_views(selection.result_key, opacity, result, image, palette)
    columns = st.columns(4)
    columns[0].image(image, caption="Input", width="stretch")
    for column, which in zip(columns[1:], result.outputs):
        column.image(views[which], caption=OUTPUT_TITLES.get(which, which), width="stretch")
    columns = st.columns(4)
    if "disagreement" in views:              # DANet's three outputs
        shares = branch_disagreement(result)
        columns[0].image(views["disagreement"], caption="Where the branches disagree with the fused output",
                         width="stretch")
        columns[1].image(viz.legend(viz.DISAGREEMENT_LABELS, viz.DISAGREEMENT_PALETTE), width="content")
        columns[1].markdown(f"PAM differs from fused on **{shares['pam']:.1%}** of pixels, "
                            f"CAM on **{shares['cam']:.1%}**.")
    columns[2].image(viz.legend([plain(c, 40) for c in classes], palette, present=views["present"]),
                     caption="Predicted classes",
                     width="content")
    if selection.labels is not None:
        truth = viz.mask_overlay(image, selection.labels.labels, palette, opacity)
        columns[3].image(truth, caption="Ground truth (label map)", width="stretch")
        scored = score_outputs(result, selection.labels, len(classes))
        st.subheader("Scores against the label map")
        metric_columns = st.columns(max(len(result.outputs), 1))
        for column, which in zip(metric_columns, result.outputs):
            column.metric(f"{OUTPUT_TITLES.get(which, which)}: mIoU", f"{scored[which]['miou']:.1%}",
                          help="Mean over classes present in the label map or the prediction")
            column.caption(f"pixel accuracy {scored[which]['pixel_accuracy']:.1%}")
        table = pd.DataFrame({f"{which} IoU %": np.round(scored[which]["iou"] * 100, 1) for which in result.outputs},
                             index=[plain(c, 80) for c in classes])
        # every class visible up to 30 rows; a 3,000-class model scrolls inside a bounded table
        st.dataframe(table, width="stretch", height=35 * (min(len(table), 30) + 1) + 3)
