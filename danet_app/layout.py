"""Narrow windows: collapse the sidebar once below 1,100 px (``static/narrow_layout.js``).

Streamlit's ``initial_sidebar_state="auto"`` collapses the sidebar only at or below 768 px, so
an 800x900 window kept a 300 px sidebar open beside a squeezed main area. The element draws
nothing; it respects a choice the visitor already made (Streamlit keeps it in localStorage).
"""
from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
NARROW_PX = 1100                  # the JavaScript's threshold; documented in docs/app.md

_component = None


def narrow_layout() -> None:
    """Mount the (invisible) element; call it once per run, in the sidebar."""
    global _component
    if _component is None:
        import streamlit as st

        _component = st.components.v2.component("danet_narrow_layout", html="",
                                                js=(STATIC / "narrow_layout.js").read_text())
    _component(key="danet_narrow_layout", width="stretch", height="content")
