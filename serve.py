"""The app with a server-start hook: ``streamlit run serve.py`` serves ``app.py`` unchanged, and
loads the default model in the background as soon as the server starts (``st.App``'s lifespan),
so the first visitor does not wait for torch, timm and the weights. ``streamlit run app.py``
works too; it starts that warm-up at the first visit instead.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import streamlit as st

from danet_app import warmup               # stdlib only; the thread imports the heavy part

warmup.passive_threads()                   # before anything imports torch


@asynccontextmanager
async def lifespan(_app):
    warmup.start()
    yield


app = st.App(str(Path(__file__).resolve().parent / "app.py"), lifespan=lifespan)
