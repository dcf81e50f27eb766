"""Model details page: what the loaded checkpoint is, how well it did on validation, its licence.

Facts come from ``danet.checkpoints.describe`` (what ``danet info`` prints) for any model, and
the scores of the shipped weights from their card, ``danet.weights.default_card()``.
"""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from danet.checkpoints.describe import describe
from danet.weights import default_card, default_weights_path
from danet_app import sidebar
from danet_app.literal import capped, md, plain
from danet_app.state import model_facts, recorded_scores

METADATA_CHARS = 20_000       # of the metadata JSON shown (a file may carry megabytes of it)
CODE_LICENCE = "danet-lens code: Apache-2.0. An uploaded checkpoint keeps whatever licence its authors gave it."

selection = sidebar.current()
st.title("Model details")
sidebar.show_messages()

loaded = selection.loaded
meta = loaded.meta
card = default_card() if selection.is_default else None
described = describe(loaded)
if card is not None:
    path = default_weights_path()
    described["source"] = f"embedded default ({path.parent.parent.name}/{path.parent.name}/{path.name})"
facts = model_facts(described, selection.model_sha256, selection.device)

left, right = st.columns([3, 2])
with left:
    table = pd.DataFrame({"value": [plain(v, 200) for v in facts.values()]}, index=list(facts))
    st.dataframe(table, width="stretch", height=35 * len(facts) + 40)       # warnings: above (show_messages)
with right:
    st.caption(f"{md(meta.dataset.name)} classes and colours")
    sidebar.show_legend(meta.classes, meta.palette, key="model_page")     # bounded: paged for large label sets

st.subheader("Validation accuracy recorded with the weights")
scores = recorded_scores(meta.extra or {}, card)
if scores.any:
    metrics = st.columns(3)
    if scores.miou is not None:
        metrics[0].metric("val mIoU", f"{scores.miou:.2f} %")
    if scores.pixel_accuracy is not None:
        metrics[1].metric("val pixel accuracy", f"{scores.pixel_accuracy:.2f} %")
    if scores.epoch is not None:
        metrics[2].metric("epoch", str(scores.epoch))
    if scores.per_class_iou:
        frame = pd.DataFrame({"IoU %": list(scores.per_class_iou.values())},
                             index=[plain(name, 60) for name in scores.per_class_iou])
        st.bar_chart(frame, horizontal=True, sort=False, height=30 * len(frame) + 60, x_label="val IoU %")
    for label, text in (("Trained on", scores.training_data), ("Evaluated with", scores.evaluated_with),
                        ("Trained with", scores.training_command), ("val mIoU per epoch", scores.history)):
        if text:
            st.caption(f"{label}: {md(text, 2000)}")
else:
    st.caption("This checkpoint carries no validation scores.")

if meta.extra:
    with st.expander("All metadata stored with the weights (JSON)"):
        st.code(capped(json.dumps(meta.extra, indent=2, default=str), METADATA_CHARS), language="json")

st.subheader("Licence")
if scores.licence:
    st.markdown(f"The weights: {md(scores.licence, 2000)}")
st.markdown(CODE_LICENCE)
