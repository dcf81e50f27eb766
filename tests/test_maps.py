"""Every map kind against a dense N x N reference built in numpy: rows, mean row, column, region."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from danet.maps import CrissCrossMap, DotSoftmaxMap, GlobalMap, Grid, MixtureMap
from danet.maps.dot_softmax import aggregate

GRID = Grid((45, 70), (5, 7))          # h != w catches transposed axes
N = 35


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def cross_weights(rng, h, w):
    """Random criss-cross loop weights (h, w, h + w) as mmseg makes them: the column part's own
    cell at -inf, softmax over all h + w entries."""
    energy = rng.normal(size=(h, w, h + w)) * 2
    for i in range(h):
        energy[i, :, i] = -np.inf
    return softmax(energy)


def cross_dense(loop):
    """The loop as an N x N matrix: M[(i, j), (i', j)] += A[i, j, i'], M[(i, j), (i, j')] += A[i, j, h + j']."""
    h, w = loop.shape[:2]
    dense = np.zeros((h, w, h, w))
    for i in range(h):
        for j in range(w):
            dense[i, j, :, j] += loop[i, j, :h]
            dense[i, j, i, :] += loop[i, j, h:]
    return dense.reshape(h * w, h * w)


def make_maps(rng):
    q, k = rng.normal(size=(N, 4)), rng.normal(size=(N, 4))
    dense_dot = softmax(q @ k.T * 0.5)
    weights = softmax(rng.normal(size=N))
    loops = [cross_weights(rng, 5, 7) for _ in range(2)]
    mix_w, mix_c = softmax(rng.normal(size=(N, 3))), softmax(rng.normal(size=(3, N)))
    return [
        (DotSoftmaxMap(GRID, q, k, scale=0.5, title="dot"), dense_dot),
        (GlobalMap(GRID, weights, title="global"), np.tile(weights, (N, 1))),
        (CrissCrossMap(GRID, loops[:1], title="loop 1"), cross_dense(loops[0])),
        (CrissCrossMap(GRID, loops, title="two loops"), cross_dense(loops[1]) @ cross_dense(loops[0])),
        (MixtureMap(GRID, mix_w, mix_c, title="mixture"), mix_w @ mix_c),
    ]


@pytest.mark.parametrize("which", range(5))
def test_each_kind_matches_its_dense_matrix(which):
    the_map, dense = make_maps(np.random.default_rng(which))[which]
    cells = np.array([0, 6, 17, 34])
    np.testing.assert_allclose(the_map.rows_of_cells(cells).reshape(4, N), dense[cells], atol=1e-6)
    np.testing.assert_allclose(the_map.mean_row(), dense.mean(0), atol=1e-6)
    for cell in (0, 13, 34):
        np.testing.assert_allclose(the_map.column(cell), dense[:, cell], atol=1e-6)
    np.testing.assert_allclose(the_map.region_mean([1, 2, 8]), dense[[1, 2, 8]].mean(0), atol=1e-6)
    if the_map.flags.distribution:
        np.testing.assert_allclose(dense.sum(1), 1, atol=1e-9)          # the flag tells the truth
        np.testing.assert_allclose(the_map.rows_of_cells(np.arange(N)).reshape(N, N).sum(1), 1, atol=1e-5)


def test_rows_at_points_use_the_grid_geometry():
    the_map, dense = make_maps(np.random.default_rng(0))[0]
    # pixel (69, 44) is the last cell; (10, 0) lies in column 10 * 7 // 70 = 1 of row 0
    np.testing.assert_allclose(the_map.rows([(69, 44), (10, 0)]).reshape(2, N), dense[[34, 1]], atol=1e-6)


def test_flags_say_what_differs_between_kinds():
    maps = [m for m, _ in make_maps(np.random.default_rng(1))]
    assert [m.flags.query_dependent for m in maps] == [True, False, True, True, True]
    assert [m.flags.exact for m in maps] == [True, True, True, False, False]
    assert "composed" in maps[3].describe()


def test_payload_names_its_kind_and_carries_the_mean_row():
    for the_map, _ in make_maps(np.random.default_rng(2)):
        payload = the_map.payload()
        assert payload["kind"] == the_map.kind and (payload["gh"], payload["gw"]) == (5, 7)
        assert len(payload["mean_row"]) == len(__import__("base64").b64encode(bytes(4 * N)))


def test_row_blocks_cover_every_query_in_small_blocks():
    the_map, dense = make_maps(np.random.default_rng(3))[0]
    seen = np.zeros((N, N))
    for start, stop, rows in the_map.row_blocks(block_elements=N * 4):
        assert stop - start <= 4
        seen[start:stop] = rows.numpy()
    np.testing.assert_allclose(seen, dense, atol=1e-6)


@pytest.mark.parametrize("method", ["explicit", "chunked", "sdpa"])
def test_aggregation_paths_agree_with_the_scaled_reference(method):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 50, d, generator=g) for d in (4, 4, 6))
    reference = torch.softmax(q @ k.transpose(1, 2) * 0.25, -1) @ v
    torch.testing.assert_close(aggregate(q, k, v, method, scale=0.25), reference, rtol=1e-5, atol=1e-5)


def test_same_class_mass_is_one_definition_with_void_left_out():
    from danet.maps.grid import VOID, same_class_mass

    rows = np.array([[0.5, 0.2, 0.2, 0.1], [0.1, 0.1, 0.4, 0.4]])
    cells = np.array([3, 3, VOID, 7])
    # query 1 is class 3: 0.7 of the 0.8 off void; query 2 is class 7: 0.4 of 0.6
    np.testing.assert_allclose(same_class_mass(rows, cells, [3, 7]), [0.7 / 0.8, 0.4 / 0.6])
    assert np.isnan(same_class_mass(np.array([[0.0, 0.0, 1.0, 0.0]]), cells, [3])[0])
