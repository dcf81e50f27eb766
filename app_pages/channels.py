"""Channel attention page: the C x C CAM matrix, and what CAM does to one channel.

Runs inside ``app.py`` after the sidebar made the selection (the forward is cached there).
"""
from __future__ import annotations

import io

import numpy as np
import streamlit as st

from danet.render import overlays as viz
from danet.analysis import cam_saturation, mixed_channels
from danet.analysis.cam import NEGLIGIBLE
from danet_app import sidebar
from danet_app.measures_view import hidden_note, saturation_note
from danet_app.viz_plotly import cam_matrix_figure, channel_maps_figure, channel_mix_figure, cluster_order


@st.cache_data(max_entries=8, show_spinner=False)
def clustered_order(result_key: str, _matrix: np.ndarray) -> np.ndarray:
    """Clustering depends only on the result, so it runs once per forward, not per rerun."""
    return cluster_order(_matrix)


selection = sidebar.current()
st.title("Channel attention (CAM)")
sidebar.show_messages()

result = selection.result
if result.cam_attention is None:            # a measure a head cannot support is hidden with its reason
    st.info(f"This model's {result.head} head has no channel attention (CAM): there is no C x C matrix to show.")
    st.stop()
matrix = result.cam_attention
channels = matrix.shape[0]
uniform = 1.0 / channels

st.markdown(
    f"CAM re-mixes the **{channels}** feature channels of the head: output channel *i* = "
    f"beta x sum_j w[i, j] x channel *j* + channel *i*, with learned **beta = {result.beta:.4f}**. "
    "Each row of the matrix below is one output channel's weights w[i, :] (it sums to 1).")
st.info(
    "As in the reference implementation, the weights are softmax(rowmax(E) - E) with E = A Aᵀ, the "
    "Gram matrix of the channel maps: this **inverts similarity**, so the channels *least* similar to "
    "channel i get the most weight. It differs from the paper's softmax(E).", icon=":material/info:")

off_diagonal = matrix[~np.eye(channels, dtype=bool)]
saturation = cam_saturation(matrix)
stats = st.columns(5)
stats[0].metric("uniform weight 1/C", f"{uniform:.5f}")
stats[1].metric("largest off-diagonal weight", f"{float(off_diagonal.max()) if off_diagonal.size else 0:.5f}")
stats[2].metric("mean row entropy", f"{saturation.entropy_mean:.2f} bits",
                help=f"log2(C) = {np.log2(channels):.2f} bits would be uniform")
stats[3].metric("effective channels per row", f"{saturation.effective_mean:.2f}",
                help=f"2^entropy, the perplexity: 1 = a copy of one channel, {channels} = uniform")
stats[4].metric("one-hot rows", f"{saturation.one_hot_rows.mean():.0%}",
                help="rows mixing fewer than 1.1 effective channels (largest weight about 0.98 or more)")
note = saturation_note(saturation)
if note is None:
    st.success(saturation.sentence(), icon=":material/check:")
else:
    st.warning(f"{saturation.sentence()}\n\n{note}", icon=":material/warning:")


@st.fragment
def matrix_view() -> None:
    """The matrix and its display controls: a toggle reruns this section only."""
    controls = st.columns(3)
    # persist_state="session": a control keeps its value while another page is shown
    reorder = controls[0].toggle("Reorder by hierarchical clustering", key="cam_cluster", persist_state="session",
                                 help="scipy average linkage on the rows; ticks keep the original channel ids")
    log_scale = controls[1].toggle("Log colour scale", key="cam_log", persist_state="session")
    colour_scale = controls[2].selectbox("Colour scale", ["Viridis", "Cividis", "Inferno", "Blues"],
                                         key="cam_colours", persist_state="session")
    order = clustered_order(selection.result_key, matrix) if reorder else None
    st.plotly_chart(cam_matrix_figure(matrix, order, colour_scale, log_scale), key="cam_matrix",
                    config={"displaylogo": False})


matrix_view()


# ---- one channel ---------------------------------------------------------------------------------
@st.fragment
def one_channel() -> None:
    """One channel and what CAM mixes into it: its widgets rerun this section only."""
    st.subheader("One channel before and after CAM")
    pick = st.columns([1, 1, 2])
    max_top_k = min(24, channels)
    if st.session_state.get("cam_channel", 0) >= channels:            # kept from a model with more channels
        st.session_state["cam_channel"] = 0
    if not 1 <= st.session_state.get("cam_top_k", 0) <= max_top_k:     # first visit, or such a model
        st.session_state["cam_top_k"] = min(6, channels)
    channel = int(pick[0].number_input("Channel", 0, channels - 1, step=1, key="cam_channel", persist_state="session"))
    top_k = int(pick[1].slider("Top-k mixed-in channels", 1, max_top_k, key="cam_top_k", persist_state="session"))
    threshold = float(pick[1].number_input(
        "Hide channels below weight", 0.0, 1.0, value=NEGLIGIBLE, step=0.005, format="%.3f", key="cam_threshold",
        persist_state="session", help="Mixed-in channels with a smaller weight are left out of the list below."))
    strongest = int(np.argmax(off_diagonal.reshape(channels, channels - 1).max(1))) if channels > 1 else 0
    pick[2].caption(f"Tip: channel {strongest} has the most concentrated off-diagonal weight. Hover the "
                    "matrix to find others.")

    before = result.cam_input[channel]
    after = result.cam_output[channel]
    change = float(np.abs(after - before).mean() / (np.abs(before).mean() + 1e-12))
    st.plotly_chart(channel_maps_figure(before, after, channel), key="cam_channel_maps",
                    config={"displaylogo": False})
    st.caption(f"Mean absolute change from CAM: {change:.1%} of the channel's mean magnitude "
               f"(grid {result.grid_size[0]}x{result.grid_size[1]}).")

    heavy = mixed_channels(matrix, channel, threshold)
    mix = heavy[:top_k]
    st.caption(f"Channel {channel} mixes {saturation.effective_channels[channel]:.2f} effective channels "
               f"(entropy {saturation.entropy_bits[channel]:.2f} bits). "
               + hidden_note(len(mix), channels - len(heavy), len(heavy) - len(mix), threshold))
    if mix:
        st.plotly_chart(channel_mix_figure(mix, channel, uniform), key="cam_mix", config={"displaylogo": False})
    else:
        st.info(f"No channel has a weight of {threshold:g} or more in row {channel}: lower the threshold.")
    st.markdown("##### The mixed-in channels' maps (before CAM), over the image")
    overlay_opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.6, step=0.05, key="cam_overlay_opacity",
                                persist_state="session")
    per_row = 6
    for start in range(0, len(mix), per_row):
        columns = st.columns(per_row)
        for column, (source, weight) in zip(columns, mix[start:start + per_row]):
            grid_map = result.cam_input[source][None]
            full = result.upsample_maps(grid_map, "bilinear")[0]
            column.image(viz.heatmap_overlay(selection.image, full, overlay_opacity, "viridis"),
                         caption=f"ch {source}: w = {weight:.4f}", width="stretch")


one_channel()

buffer = io.StringIO()
np.savetxt(buffer, matrix, delimiter=",", fmt="%.6g")
st.download_button("CAM matrix (CSV)", buffer.getvalue(), "cam_attention.csv", "text/csv",
                   on_click="ignore", key="download_cam_csv")
