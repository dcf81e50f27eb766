"""Model details page: what the loaded checkpoint is, how well it did on validation, its licence."""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

import app_sidebar
from danet import viz
from danet.session import head_widths, parameter_count
from danet.weights import DEFAULT_WEIGHTS

LICENCE_NOTE = (
    "danet-lens code: Apache-2.0. The embedded default weights were trained on CamVid "
    "(Brostow et al.; 11-class version by the SegNet authors), whose terms allow research and personal "
    "use only (CC BY-NC 4.0): the weights inherit that non-commercial condition. An uploaded checkpoint "
    "keeps whatever licence its authors gave it.")

selection = app_sidebar.render()
st.title("Model details")
if selection is None:
    st.info("Choose a model and an image in the sidebar first.")
    app_sidebar.show_diagnostics()
    st.stop()

loaded = selection.loaded
meta, config = loaded.meta, loaded.meta.config
extra = dict(meta.extra or {})
head_channels, key_channels = head_widths(loaded)
is_default = selection.model_id.startswith("default:")
source = (f"embedded default ({DEFAULT_WEIGHTS.parent.parent.name}/{DEFAULT_WEIGHTS.parent.name}/"
          f"{DEFAULT_WEIGHTS.name})" if is_default else selection.loaded.source)

left, right = st.columns([3, 2])
with left:
    facts = {
        "source": source,
        "checkpoint layout": meta.layout,
        "backbone": config.backbone,
        "stem": config.stem,
        "output stride": config.output_stride,
        "multi-grid (4, 8, 16)": config.multi_grid,
        "head channels (C)": head_channels,
        "PAM query/key channels (d)": key_channels,
        "align_corners": config.align_corners,
        "classes": config.num_classes,
        "dataset": meta.dataset.name,
        "ignore index": meta.dataset.ignore_index,
        "mean / std": f"{tuple(round(v, 3) for v in meta.mean)} / {tuple(round(v, 3) for v in meta.std)}",
        "parameters": f"{parameter_count(loaded) / 1e6:.2f} M",
        "PAM alpha (learned)": f"{selection.result.alpha:.4f}",
        "CAM beta (learned)": f"{selection.result.beta:.4f}",
        "device": selection.device,
    }
    table = pd.DataFrame({"value": [str(v) for v in facts.values()]}, index=list(facts))
    st.dataframe(table, width="stretch", height=35 * len(facts) + 40)
    for warning in loaded.warnings:
        st.warning(warning)
with right:
    st.image(viz.legend(meta.classes, meta.palette, columns=1 if len(meta.classes) <= 20 else 3),
             caption=f"{meta.dataset.name} classes and colours", width="content")

st.subheader("Validation accuracy recorded with the weights")
if "val_iou" in extra or "val_miou" in extra:
    metrics = st.columns(3)
    if extra.get("val_miou") is not None:
        metrics[0].metric("val mIoU", f"{extra['val_miou']:.2f} %")
    if extra.get("val_pixel_accuracy") is not None:
        metrics[1].metric("val pixel accuracy", f"{extra['val_pixel_accuracy']:.2f} %")
    if extra.get("epoch") is not None:
        metrics[2].metric("epoch", str(extra["epoch"]))
    per_class = extra.get("val_iou") or {}
    if per_class:
        frame = pd.DataFrame({"IoU %": [None if v is None else float(v) for v in per_class.values()]},
                             index=list(per_class))
        st.bar_chart(frame, horizontal=True, sort=False, height=30 * len(per_class) + 60,
                     x_label="val IoU %")
    if extra.get("training_data"):
        st.caption(f"Trained on: {extra['training_data']}")
else:
    st.caption("This checkpoint carries no validation scores.")

if extra:
    with st.expander("All metadata stored with the weights (JSON)"):
        st.code(json.dumps(extra, indent=2, default=str), language="json")

st.subheader("Licence")
st.markdown(LICENCE_NOTE)
if extra.get("license"):
    st.caption(f"Stored with the weights: {extra['license']}")

app_sidebar.show_diagnostics()
