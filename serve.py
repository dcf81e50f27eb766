"""The app with a server-start hook: ``streamlit run serve.py`` serves ``app.py`` unchanged, and
loads the default model in the background as soon as the server starts (``st.App``'s lifespan),
so the first visitor does not wait for torch, timm and the weights. ``streamlit run app.py``
works too; it starts that warm-up at the first visit instead.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import streamlit as st


@asynccontextmanager
async def lifespan(_app):
    from danet_app import warmup          # imports nothing heavy; the thread does

    warmup.start()
    yield


app = st.App(str(Path(__file__).resolve().parent / "app.py"), lifespan=lifespan)
