"""One JavaScript kernel per map kind, run in a real chromium, against the Python map of that kind.

The view's module (``danet_app/static/attention_view.js``) is imported as it ships; each kind's
payload is what ``AttentionMap.payload()`` sends, and the browser's rows and columns must be the
Python map's rows and columns (float32 on the wire: 1e-5)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from danet.maps import CrissCrossMap, DotSoftmaxMap, GlobalMap, Grid, MixtureMap

pytestmark = [pytest.mark.browser, pytest.mark.slow]

JS = Path(__file__).resolve().parent.parent / "danet_app" / "static" / "attention_view.js"
GRID = Grid((45, 70), (5, 7))          # h != w catches transposed axes
N = 35
CELLS = [0, 6, 17, 34]


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def maps():
    rng = np.random.default_rng(0)
    loops = []
    for _ in range(2):
        energy = rng.normal(size=(5, 7, 12)) * 2
        for i in range(5):
            energy[i, :, i] = -np.inf                     # mmseg masks the query's own cell in the column part
        loops.append(softmax(energy))
    return [DotSoftmaxMap(GRID, rng.normal(size=(N, 4)), rng.normal(size=(N, 4)), scale=0.5, title="dot"),
            GlobalMap(GRID, softmax(rng.normal(size=N)), title="global"),
            CrissCrossMap(GRID, loops[:1], title="one loop"),
            CrissCrossMap(GRID, loops, title="two loops"),
            MixtureMap(GRID, softmax(rng.normal(size=(N, 3))), softmax(rng.normal(size=(3, N))), title="mixture")]


RUN = """async ({source, payloads, cells}) => {
  const url = URL.createObjectURL(new Blob([source], {type: "text/javascript"}));
  const view = await import(url);
  return payloads.map((data) => {
    const kernel = view.KERNELS[data.kind], m = kernel.decode(data);
    const p = {n: data.gh * data.gw, gh: data.gh, gw: data.gw};
    return {rows: cells.map((c) => Array.from(kernel.row(p, m, c, new Float64Array(p.n)))),
            columns: cells.map((c) => Array.from(kernel.column(p, m, c, new Float64Array(p.n))))};
  });
}"""


def test_each_kind_has_a_browser_kernel_equal_to_its_python_map(browser):
    the_maps = maps()
    page = browser.new_page()
    try:
        page.goto("about:blank")
        got = page.evaluate(RUN, {"source": JS.read_text(), "payloads": [m.payload() for m in the_maps],
                                  "cells": CELLS})
    finally:
        page.close()
    for the_map, answer in zip(the_maps, got):
        want_rows = the_map.rows_of_cells(CELLS).reshape(len(CELLS), N)
        np.testing.assert_allclose(np.array(answer["rows"]), want_rows, atol=1e-5, err_msg=the_map.title)
        want_columns = np.stack([the_map.column(c) for c in CELLS])
        np.testing.assert_allclose(np.array(answer["columns"]), want_columns, atol=1e-5, err_msg=the_map.title)
    assert json.dumps(sorted({m.kind for m in the_maps})) == '["criss_cross", "dot_softmax", "global", "mixture"]'
