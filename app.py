"""danet-lens, the Streamlit app: ``streamlit run app.py`` (needs ``pip install "danet-lens[app]"``).

The entrypoint: it sets the page config, draws the shared sidebar once per run (model, image,
label map and the one cached forward pass, ``danet_app.sidebar``), then runs the page chosen
in the navigation. Pages (``app_pages/``) only read the selection; none of them runs the network.

The pages folder is deliberately not called ``pages/``: Streamlit treats a ``pages/`` folder
next to the entrypoint as a version-1 multipage app and, on reruns, runs the page script
without this entrypoint (so without the sidebar).

Cold start: the first run in a server process imports torch and the model code (seconds on a
small CPU), so a page skeleton is drawn before those imports. ``streamlit run serve.py`` (the
same app) also starts loading the default model when the server starts, not when the first
visitor arrives (``danet_app.warmup``).
"""
from __future__ import annotations

import sys

import streamlit as st

from danet_app import warmup
from danet_app.timeline import mark

warmup.passive_threads()                     # before anything imports torch

mark("script run starts")
# An emoji icon: the browser draws it (a data: URL). A ":material/...:" page icon is fetched from
# fonts.gstatic.com on every page load: nothing may leave the server (tests/test_browser_ui.py).
st.set_page_config(page_title="danet-lens", page_icon="🔎", layout="wide")

PAGES = [
    st.Page("app_pages/inspector.py", title="DANet inspector", icon=":material/ads_click:", default=True),
    st.Page("app_pages/measures.py", title="Does attention matter?", icon=":material/rule:"),
    st.Page("app_pages/channels.py", title="Channel attention", icon=":material/grid_on:"),
    st.Page("app_pages/model.py", title="Model details", icon=":material/info:"),
]

page = st.navigation(PAGES)
skeleton = st.empty()
if "danet_app.sidebar" not in sys.modules:          # the first run of this process: imports take seconds
    with skeleton.container():
        st.title(page.title)
        st.info("Loading the default model and the libraries (torch, timm)… the page fills in by itself.",
                icon=":material/hourglass_top:")

warmup.start()                               # once per process: the first visit's run starts it
from danet_app import sidebar  # noqa: E402  (after the skeleton: this import is the slow part)
from danet_app.layout import narrow_layout  # noqa: E402

mark("app imports done")

selection = sidebar.render()
skeleton.empty()
if selection is None:
    # every page needs a model and an image: say what is missing (or refused) instead of running it
    st.title(page.title)
    sidebar.show_messages()
    if not sidebar.messages("error"):
        st.info("Choose a model and an image in the sidebar.")
else:
    page.run()
sidebar.show_diagnostics()
mark("script run ends")
with st.sidebar:                  # collapses the sidebar once in a window narrower than 1,100 px
    narrow_layout()
