"""danet-lens's Streamlit app, apart from the library: only ``app.py`` and ``app_pages/`` import it.

Install with ``pip install "danet-lens[app]"``; run with ``streamlit run app.py``.

- ``state``: pure rules (no Streamlit): clicks -> points, cache keys and content hashes,
  label maps, per-point statistics, the forward-pass counter, the ``Selection`` pages share.
- ``exports``: pure download bundles (PNG of the panels, ``.npz`` of the maps, JSON record).
- ``viz_plotly``: pure Plotly figures of channel attention.
- ``sidebar``: Streamlit: the shared sidebar (model, image, label map), the cached model,
  image and forward pass, the diagnostics panel.
- ``attention_view`` (+ ``static/``): the Components v2 view that paints attention at the cursor;
  ``display_modes``: its maths in numpy (the reference the browser is tested against).
- ``budget``: the byte-bounded caches (results, models, decoded images) shared by all sessions.
- ``measures_view``: pure helpers of the "Does attention matter?" page.
- ``warmup``: loads the default model in a background thread once per process, when an entry
  point (``app.py``, ``serve.py``) asks for it.

Importing this package or any of its modules starts nothing: no thread, no model load
(``tests/test_app_imports.py`` checks it in a fresh interpreter).
"""
