"""The maths of the interactive attention view (``danet_app.display_modes``) on hand-made rows,
and the payload the browser receives. The browser's JavaScript is checked against these
functions in test_browser_attention.py."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch

import danet
from danet.data.images import load_image
from danet.errors import InputError
from danet.inspection import InspectionResult, inspect_image
from danet_app import display_modes as dm
from danet_app.attention_view import build_payload, classes_data_url, payload_bytes, settings, view_data
from helpers_app import SAMPLES


def explicit_attention(query: np.ndarray, key: np.ndarray) -> np.ndarray:
    energy = query.astype(np.float64) @ key.astype(np.float64).T
    energy -= energy.max(axis=1, keepdims=True)
    weights = np.exp(energy)
    return weights / weights.sum(axis=1, keepdims=True)


@pytest.fixture
def qk():
    rng = np.random.default_rng(3)
    return rng.normal(size=(35, 4)).astype(np.float32) * 2, rng.normal(size=(35, 4)).astype(np.float32) * 2


def test_raw_relative_and_log_on_a_hand_made_row():
    row = np.array([0.5, 0.25, 0.125, 0.125])
    shown, lo, hi = dm.display(row, "raw")
    assert (lo, hi) == (0.0, 0.5) and np.array_equal(shown, row)
    shown, lo, hi = dm.display(row, "relative")
    assert np.allclose(shown, [2.0, 1.0, 0.5, 0.5]) and (lo, hi) == (0.0, 2.0)   # 1 = uniform
    shown, lo, hi = dm.display(np.array([1.0, 1e-2, 1e-8, 0.0]), "log")
    assert np.allclose(shown[:3], [0.0, -2.0, -8.0]) and shown[3] == np.log10(dm.LOG_FLOOR)
    assert hi == 0.0 and lo == -dm.LOG_DECADES                       # four decades below the peak


def test_query_specific_scales_each_sign_on_its_own_robust_range():
    row, mean = np.array([0.7, 0.1, 0.1, 0.1]), np.array([0.25, 0.25, 0.25, 0.25])
    shown, lo, hi = dm.display(row, "specific", baseline=mean)
    assert np.allclose(shown, [0.45, -0.15, -0.15, -0.15]) and (lo, hi) == pytest.approx((-0.15, 0.45))
    shown, _, _ = dm.display(row, "specific", baseline=0.25)         # a column's baseline is 1/N
    assert np.allclose(shown, [0.45, -0.15, -0.15, -0.15])
    with pytest.raises(InputError):
        dm.display(row, "specific")
    # 0 is the centre; each sign reaches its own end of the table; beyond the percentile: full colour
    assert dm.colour_index(np.array([-0.15, -0.075, 0.0, 0.225, 0.45, 0.9]), -0.15, 0.45, two_sided=True
                           ).tolist() == [0, 64, 128, 192, 255, 255]
    values = np.concatenate([np.linspace(0.001, 1.0, 1000), -np.linspace(0.001, 0.1, 1000)])
    lo, hi = dm.sign_ranges(values)
    assert hi == pytest.approx(np.percentile(values[values > 0], 99)) and lo == pytest.approx(-0.09901, abs=1e-5)
    assert dm.sign_ranges(np.array([0.2, 0.0])) == (0.0, pytest.approx(0.2))        # no negative cell


@pytest.mark.slow
def test_query_specific_maps_of_the_default_model_show_more_than_the_sink():
    """The issue's case: on a symmetric scale set by the sink's deficit, 99.6% of the cells were
    drawn faded (0.4% at full colour); each sign on its own robust range shows about 12%."""
    loaded = danet.load(device="cpu")
    image = load_image(SAMPLES[0].read_bytes(), max_pixels=1_000_000).array
    result = inspect_image(loaded.model, image, loaded.meta.mean, loaded.meta.std)
    query, key = result.pam_query.numpy(), result.pam_key.numpy()
    _, mean_row = dm.row_statistics(query, key)
    symmetric, two_sided = [], []
    for cell in np.random.default_rng(0).choice(query.shape[0], 40, replace=False):
        shown, lo, hi = dm.display(dm.attention_row(query, key, int(cell)), "specific", baseline=mean_row)
        assert lo < 0 < hi
        two_sided.append(dm.opaque_share(shown, lo, hi, "specific"))
        bound = np.abs(shown).max()
        symmetric.append(float((dm.fade_alpha(dm.colour_index(shown, -bound, bound), 127.5) >= 1).mean()))
    assert np.mean(symmetric) < 0.01 and np.mean(two_sided) > 0.08


@pytest.mark.parametrize("fraction, expected", [(0.5, [0]), (0.6, [0, 1]), (0.8, [0, 1]), (0.81, [0, 1, 2]),
                                                (1.0, [0, 1, 2, 3])])
def test_mass_set_is_the_smallest_set_holding_the_fraction(fraction, expected):
    row = np.array([0.5, 0.3, 0.15, 0.05])
    mask = dm.mass_set(row[[2, 0, 3, 1]], fraction)                    # shuffled: order by weight, not index
    assert sorted(np.array([2, 0, 3, 1])[mask].tolist()) == expected
    shown, lo, hi = dm.display(row, "mass", fraction=fraction)
    assert np.isnan(shown).sum() == 4 - len(expected) and hi == 0.5


def test_mass_set_ties_go_to_the_lower_index_and_bad_fractions_are_refused():
    assert dm.mass_set(np.full(4, 0.25), 0.5).tolist() == [True, True, False, False]
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(InputError):
            dm.mass_set(np.full(4, 0.25), bad)
    with pytest.raises(InputError):
        dm.display(np.full(4, 0.25), "sharpest")


def test_rows_columns_and_regions_match_the_explicit_matrix(qk):
    query, key = qk
    matrix = explicit_attention(query, key)
    lse, mean_row = dm.row_statistics(query, key, chunk=8)             # chunks that do not divide N
    assert np.allclose(mean_row, matrix.mean(axis=0), atol=1e-6)
    for cell in (0, 17, 34):
        assert np.allclose(dm.attention_row(query, key, cell), matrix[cell], atol=1e-6)
        assert np.allclose(dm.attention_column(query, key, lse, cell), matrix[:, cell], atol=1e-6)
    cells = dm.region_cells((1, 2, 3, 1), (5, 7))                      # corners in any order
    assert cells.tolist() == [8, 9, 15, 16, 22, 23]
    assert np.allclose(dm.region_mean(query, key, cells), matrix[cells].mean(axis=0), atol=1e-6)
    with pytest.raises(InputError):
        dm.region_cells((0, 0, 5, 0), (5, 7))


def test_rows_match_inspection_result_rows(qk):
    query, key = qk
    result = InspectionResult.for_da(image_size=(50, 70), grid_size=(5, 7), fused_logits=torch.zeros(3, 50, 70),
                              pam_logits=torch.zeros(3, 50, 70), cam_logits=torch.zeros(3, 50, 70),
                              pam_query=torch.from_numpy(query), pam_key=torch.from_numpy(key),
                              cam_attention=np.eye(2, dtype=np.float32), cam_input=np.zeros((2, 5, 7), np.float32),
                              cam_output=np.zeros((2, 5, 7), np.float32), alpha=0.1, beta=0.1, align_corners=False)
    (row,) = result.rows([(25, 33)])                                   # cell (3, 2) -> flat 23
    assert np.allclose(dm.attention_row(query, key, 23), row.ravel(), atol=1e-6)

    payload = build_payload(result, np.zeros((50, 70, 3), np.uint8), ("a", "b", "c"), "key")
    assert (payload["gh"], payload["gw"], payload["d"], payload["qk_dtype"]) == (5, 7, 4, "float32")
    sent = np.frombuffer(base64.b64decode(payload["q"]), "<f4").reshape(35, 4)
    assert np.array_equal(sent, query)
    lse = np.frombuffer(base64.b64decode(payload["lse"]), "<f4")
    assert np.allclose(np.exp(query @ key.T - lse[:, None]).sum(axis=1), 1.0, atol=1e-5)
    assert np.frombuffer(base64.b64decode(payload["cell_classes"]), np.uint8).tolist() == [0] * 35
    assert payload_bytes(payload) == len(json.dumps(payload).encode())
    light = settings("raw", "row", "viridis", "nearest", 0.5, 0.9, [(1, 2)])
    assert light["pinned"] == [[1, 2]] and len(base64.b64decode(light["lut"])) == 256 * 3
    # the per-pixel classes travel as a lossless PNG the view reads back (R + 256 G)
    from PIL import Image
    png = base64.b64decode(payload["pixel_classes"].split(",", 1)[1])
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int64)
    assert np.array_equal(rgb[..., 0] + 256 * rgb[..., 1], result.prediction("fused"))
    ids = np.random.default_rng(0).integers(0, 300, (9, 13))       # more than 256 classes too
    png = base64.b64decode(classes_data_url(ids).split(",", 1)[1])
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int64)
    assert np.array_equal(rgb[..., 0] + 256 * rgb[..., 1], ids)
    # after the first run, a session's view gets the id and the settings, not the heavy part again
    payload["bytes"] = payload_bytes(payload)
    first, later = (view_data(payload, light, send_payload=send) for send in (True, False))
    assert first["payload"]["q"] == payload["q"] and "bytes" not in first["payload"]
    assert later == {"id": "key", "payload": None, "settings": light}
    assert len(json.dumps(later)) < 2_000 < payload["bytes"]


def test_colour_lookup_is_danet_viz_colouring():
    from danet.render import overlays as viz

    values = np.linspace(-0.2, 1.3, 40).reshape(5, 8)
    index = dm.colour_index(values, 0.0, 1.0)
    assert np.array_equal(dm.colour_lut("magma")[index], viz.heatmap(values, "magma", 0.0, 1.0))
    assert dm.colour_index(np.array([np.nan, 0.5]), 0.0, 1.0).tolist() == [-1, 128]
    with pytest.raises(InputError):
        dm.colour_lut("not-a-map")


def test_checksum_sees_a_shift_but_not_rounding():
    row = np.random.default_rng(0).dirichlet(np.ones(100))
    assert dm.checksum(row) == pytest.approx(dm.checksum(row.astype(np.float32)), abs=1e-6)
    assert abs(dm.checksum(row) - dm.checksum(np.roll(row, 1))) > 1e-3
    assert dm.checksum(np.array([np.nan, 1.0])) == pytest.approx(0.5 + 7919 % 1009 / 1009)


def test_bar_labels_say_what_a_row_and_a_column_sum_to():
    assert dm.unit("raw", "row") == "attention weight (a row sums to 1)"
    column = dm.unit("raw", "column")
    assert "does not sum to 1" in column and "a row sums" not in column
    for mode in dm.MODES:                                   # every mode has a label for both views
        assert dm.unit(mode, "row") and dm.unit(mode, "column") and dm.unit(mode, "row") != dm.unit(mode, "column")
    assert settings("raw", "column", "jet", "bilinear", 0.6, 0.9, [])["unit"] == column


def test_the_png_heat_overlay_fades_in_like_the_view():
    """Cells with (next to) no attention leave the image untinted, as on screen; the PNG used to
    blend every cell with the colour map's low end at the full opacity."""
    from danet_app.exports import heat_overlay

    image = np.full((4, 6, 3), 100, np.uint8)
    values = np.zeros((4, 6))
    values[0, 0], values[0, 1], values[0, 2] = 1.0, 12 / 256 + 1e-9, np.nan
    out = heat_overlay(image, values, 0.0, 1.0, "raw", "jet", 0.6)
    assert np.array_equal(out[1:], image[1:]) and np.array_equal(out[0, 3:], image[0, 3:])   # untinted
    assert np.array_equal(out[0, 2], image[0, 2])                                            # NaN: unpainted
    top = dm.colour_lut("jet")[255].astype(float)
    assert np.allclose(out[0, 0], np.round(100 * 0.4 + top * 0.6), atol=1)                   # full colour
    half = dm.colour_lut("jet")[12].astype(float)
    alpha = 0.6 * round(255 * 12 / 24) / 255
    assert np.allclose(out[0, 1], np.round(100 * (1 - alpha) + half * alpha), atol=1)        # fading in
    # query-specific: 0 is neutral (bin 128 of 0-255, half a bin from the centre: alpha 5/255 as on
    # screen), each sign reaches its own end
    signed = np.array([[0.0, -0.1, 0.3]])
    out = heat_overlay(np.full((1, 3, 3), 100, np.uint8), signed, -0.1, 0.3, "specific", "jet", 1.0)
    assert np.abs(out[0, 0].astype(int) - 100).max() <= 5
    assert np.array_equal(out[0, 1], dm.colour_lut(dm.DIVERGING_CMAP)[0])
    assert np.array_equal(out[0, 2], dm.colour_lut(dm.DIVERGING_CMAP)[255])
