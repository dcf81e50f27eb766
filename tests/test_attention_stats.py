"""Attention statistics: the definitions on hand-made grids, and the driver on a tiny model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from danet.analysis.attention_stats import (VOID, cell_centres, compute_attention_stats, grid_labels, pixel_cells,
                                   query_statistics, rows_to_csv, sample_queries, select_evenly, summarise,
                                   switched_off)
from danet.checkpoints.meta import ModelMeta
from danet.data.palettes import generic_dataset
from danet.inspection import inspect_image
from danet.analysis.metrics import confusion_matrix, scores
from danet.models import create_model


# ---- grid ground truth ---------------------------------------------------------------------------
def test_grid_labels_majority_vote_with_void():
    # 4 x 6 labels on a 2 x 3 grid: each cell is a 2 x 2 block. 9 = void (ignore), 7 = out of range.
    label = np.array([
        [1, 1, 2, 2, 9, 9],
        [1, 2, 2, 1, 9, 0],
        [0, 0, 3, 9, 7, 9],
        [9, 9, 3, 9, 9, 4],
    ])
    grid = grid_labels(label, (2, 3), num_classes=5, ignore_index=9)
    # cell (0,0): 1 x3 -> 1; (0,1): 2 x3 -> 2;
    # (0,2): void x3, 0 x1 -> void; (1,0): 0 x2 vs void x2 -> tie goes to the class (0);
    # (1,1): 3 x2, void x2 -> 3; (1,2): void x3 (9, 7, 9), 4 x1 -> void.
    assert grid.tolist() == [[1, 2, VOID], [0, 3, VOID]]


def test_grid_labels_ties_go_to_the_lower_class():
    label = np.array([[3, 1], [1, 3]])
    assert grid_labels(label, (1, 1), num_classes=4).tolist() == [[1]]


def test_pixel_cells_match_the_inspection_geometry():
    """Pixels map to cells exactly as InspectionResult.pixel_to_cell does (odd sizes included)."""
    torch.manual_seed(0)
    model = create_model(backbone="resnet18", num_classes=3, head_channels=8).eval()
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    result = inspect_image(model, image)
    cells = pixel_cells(result.image_size, result.grid_size)
    gw = result.grid_size[1]
    for y in range(37):
        for x in range(53):
            row, col = result.pixel_to_cell(x, y)
            assert cells[y, x] == row * gw + col
    # And every cell centre falls in its own cell, so rows(centre) is the row of that cell.
    _, centres = cell_centres(result.grid_size, result.image_size)
    for index, (x, y) in enumerate(centres):
        assert result.pixel_to_cell(x, y) == divmod(index, gw)


# ---- sampling ------------------------------------------------------------------------------------
def test_sample_queries_only_non_void_distinct_and_seeded():
    grid = np.full((6, 8), 2)
    grid[:, :3] = VOID
    picks = sample_queries(grid, 10, np.random.default_rng(5))
    assert len(picks) == 10 and len(set(picks.tolist())) == 10
    assert np.all(grid.ravel()[picks] != VOID)
    assert np.array_equal(picks, sample_queries(grid, 10, np.random.default_rng(5)))
    assert not np.array_equal(picks, sample_queries(grid, 10, np.random.default_rng(6)))
    assert len(sample_queries(grid, 1000, np.random.default_rng(0))) == 30   # all 30 valid cells
    assert len(sample_queries(np.full((2, 2), VOID), 5, np.random.default_rng(0))) == 0


# ---- per-query statistics ------------------------------------------------------------------------
GT = np.array([[0, 0, 1, 1],
               [0, VOID, 1, 2]])          # 2 x 4 grid, 7 non-void cells
PRED = np.array([[0, 0, 1, 1],
                 [0, 1, 1, 1]])
IMAGE = (20, 80)                          # cells are 10 px tall and 20 px wide


def test_uniform_attention_scores_chance():
    n = GT.size
    queries = np.array([0, 2, 7])
    stats = query_statistics(np.full((3, n), 1 / n), queries, GT, PRED, IMAGE)
    np.testing.assert_allclose(stats["same_class_mass_gt"], stats["chance_gt"])
    np.testing.assert_allclose(stats["chance_gt"], [3 / 7, 3 / 7, 1 / 7])
    np.testing.assert_allclose(stats["same_class_mass_pred"], [3 / 8, 5 / 8, 5 / 8])
    np.testing.assert_allclose(stats["entropy"], math.log2(n))                  # bits
    np.testing.assert_allclose(stats["entropy_normalised"], 1.0)
    np.testing.assert_allclose(stats["distance_cells"], stats["uniform_distance_cells"])
    np.testing.assert_allclose(stats["distance_pixels"], stats["uniform_distance_pixels"])


def test_one_hot_attention():
    n = GT.size
    rows = np.zeros((3, n))
    rows[0, 0] = 1          # query 0 looks at itself
    rows[1, 7] = 1          # query 1 (class 0) looks at cell 7 (class 2), one row down, three right
    rows[2, [5, 1]] = 0.5   # query 2 (class 0): half on the void cell, half on a class-0 cell
    stats = query_statistics(rows, np.array([0, 1, 4]), GT, PRED, IMAGE)
    np.testing.assert_allclose(stats["same_class_mass_gt"], [1.0, 0.0, 1.0])   # void left out
    np.testing.assert_allclose(stats["entropy"], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(stats["distance_cells"][:2], [0.0, math.hypot(1, 2)])
    np.testing.assert_allclose(stats["distance_pixels"][:2], [0.0, math.hypot(10, 40)])
    # query 2 sits at cell (1, 0): void cell (1, 1) is 20 px away, cell (0, 1) is hypot(10, 20) away.
    np.testing.assert_allclose(stats["distance_pixels"][2], 0.5 * 20 + 0.5 * math.hypot(10, 20))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6), st.integers(2, 6), st.integers(1, 4), st.integers(0, 2 ** 31 - 1))
def test_statistics_stay_in_range(gh, gw, classes, seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(-1, classes, (gh, gw))
    gt.ravel()[0] = 0                                 # at least one valid query
    pred = rng.integers(0, classes, (gh, gw))
    queries = sample_queries(gt, 5, rng)
    rows = rng.dirichlet(np.full(gh * gw, 0.3), size=len(queries))
    stats = query_statistics(rows, queries, gt, pred, (gh * 8, gw * 8))
    for name in ("same_class_mass_gt", "chance_gt", "same_class_mass_pred", "chance_pred",
                 "entropy_normalised"):
        values = stats[name][~np.isnan(stats[name])]
        assert np.all(values >= -1e-9) and np.all(values <= 1 + 1e-9), name
    diagonal = math.hypot(gh, gw)
    assert np.all(stats["distance_cells"] <= diagonal) and np.all(stats["distance_cells"] >= 0)
    np.testing.assert_allclose(stats["distance_pixels"] / 8, stats["distance_cells"], rtol=1e-9)


def test_rows_must_match_the_grid():
    with pytest.raises(ValueError, match="cells"):
        query_statistics(np.full((1, 5), 0.2), np.array([0]), GT, PRED, IMAGE)


# ---- tables --------------------------------------------------------------------------------------
def test_summarise_groups_by_ground_truth_class():
    queries = {"gt_class": np.array([0, 0, 2]), "row": np.arange(3)}
    for i, name in enumerate(("same_class_mass_gt", "chance_gt", "same_class_mass_pred", "chance_pred",
                              "entropy", "entropy_normalised", "distance_cells", "distance_pixels",
                              "uniform_distance_cells", "uniform_distance_pixels")):
        queries[name] = np.array([0.2, 0.4, 0.9]) + i
    table = summarise(queries, ("a", "b", "c"))
    assert [row["class"] for row in table] == ["a", "c", "all"]     # b has no queries
    a, c, every = table
    assert a["queries"] == 2 and c["queries"] == 1 and every["queries"] == 3
    assert a["same_class_mass_gt"] == pytest.approx(0.3)
    assert a["chance_gt"] == pytest.approx(1.3)
    assert a["lift_gt"] == pytest.approx(0.3 / 1.3)
    assert every["same_class_mass_gt_median"] == pytest.approx(0.4)


def test_rows_to_csv_writes_nan_as_empty():
    text = rows_to_csv([{"class": "x", "v": float("nan"), "n": 3}, {"class": "y", "v": 0.5, "n": 1}])
    assert text.splitlines() == ["class,v,n", "x,,3", "y,0.5,1"]


def test_select_evenly_spreads_over_the_list():
    items = list(range(101))
    assert select_evenly(items, None) == items
    picked = select_evenly(items, 5)
    assert picked == [0, 25, 50, 75, 100]
    assert select_evenly(items[:3], 10) == [0, 1, 2]


# ---- model copies and the driver -----------------------------------------------------------------
def tiny_model(num_classes=5, alpha=0.7, beta=0.3):
    torch.manual_seed(0)
    model = create_model(backbone="resnet18", num_classes=num_classes, head_channels=16).eval()
    with torch.no_grad():
        model.head.pam.alpha.fill_(alpha)
        model.head.cam.beta.fill_(beta)
    return model


def test_switched_off_leaves_the_original_alone():
    model = tiny_model()
    clone = switched_off(model, pam=True, cam=True)
    assert clone.head.pam.alpha.item() == 0 and clone.head.cam.beta.item() == 0
    assert model.head.pam.alpha.item() == pytest.approx(0.7) and model.head.cam.beta.item() == pytest.approx(0.3)
    with torch.no_grad():
        clone.head.pam_classifier[1].weight.add_(1.0)
    assert not torch.equal(clone.head.pam_classifier[1].weight, model.head.pam_classifier[1].weight)


def make_pairs(root, count=3, size=(64, 96)):
    """Images of blocks with matching labels (classes 0..2), a void stripe (id 11)."""
    rng = np.random.default_rng(1)
    (root / "img").mkdir()
    (root / "lab").mkdir()
    h, w = size
    pairs = []
    for i in range(count):
        label = np.zeros((h, w), np.uint8)
        label[: h // 2] = 1
        label[h // 2:, w // 2:] = 2
        label[:, :10] = 11
        colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [0, 0, 0]] + [[0, 0, 0]] * 8)
        image = np.clip(colours[label] + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "img" / f"f{i}.png")
        Image.fromarray(label).save(root / "lab" / f"f{i}.png")
        pairs.append((root / "img" / f"f{i}.png", root / "lab" / f"f{i}.png"))
    return pairs


def test_driver_on_a_tiny_model(tmp_path):
    model = tiny_model()
    meta = ModelMeta(config=model.config, dataset=generic_dataset(5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = make_pairs(tmp_path)
    stats = compute_attention_stats(model, meta, pairs, points_per_image=6, seed=3, ignore_index=11)

    # The shared model is untouched.
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key

    q = stats.queries
    assert len(q["row"]) == 18
    assert set(q["gt_class"].tolist()) <= {0, 1, 2}
    for name in ("same_class_mass_gt", "chance_gt", "same_class_mass_pred", "entropy_normalised"):
        assert np.all((q[name] >= 0) & (q[name] <= 1 + 1e-9)), name
    assert stats.summary[-1]["class"] == "all" and stats.summary[-1]["queries"] == 18

    # Each query's class is the majority label of its cell, recomputed here from the label file.
    first = np.array(Image.open(pairs[0][1]))
    grid = grid_labels(first, (8, 12), 5, 11)
    for row, col, cls, image in zip(q["row"], q["col"], q["gt_class"], q["image"]):
        if image == "f0.png":
            assert grid[row, col] == cls

    # Full-model mIoU equals an independent evaluation of the fused output.
    confusion = np.zeros((5, 5), np.int64)
    for image_path, label_path in pairs:
        image, label = np.array(Image.open(image_path)), np.array(Image.open(label_path))
        fused = inspect_image(model, image).prediction("fused")
        confusion += confusion_matrix(fused, label, 5, 11)
    full, pam_off, cam_off, both_off = stats.ablation
    assert full["miou_fused"] == pytest.approx(scores(confusion)["miou"])
    assert (pam_off["alpha"], pam_off["beta"]) == (0.0, pytest.approx(0.3))
    # Structure: the CAM branch does not use alpha, the PAM branch does not use beta.
    assert pam_off["miou_cam_output"] == pytest.approx(full["miou_cam_output"])
    assert cam_off["miou_pam_output"] == pytest.approx(full["miou_pam_output"])
    assert both_off["miou_pam_output"] == pytest.approx(pam_off["miou_pam_output"])
    assert both_off["miou_cam_output"] == pytest.approx(cam_off["miou_cam_output"])


def test_driver_is_seeded(tmp_path):
    model = tiny_model()
    meta = ModelMeta(config=model.config, dataset=generic_dataset(5))
    pairs = make_pairs(tmp_path, count=2)
    one = compute_attention_stats(model, meta, pairs, 4, seed=1, ablation=False, ignore_index=11)
    two = compute_attention_stats(model, meta, pairs, 4, seed=1, ablation=False, ignore_index=11)
    other = compute_attention_stats(model, meta, pairs, 4, seed=2, ablation=False, ignore_index=11)
    assert np.array_equal(one.queries["row"] * 100 + one.queries["col"],
                          two.queries["row"] * 100 + two.queries["col"])
    np.testing.assert_allclose(one.queries["same_class_mass_gt"], two.queries["same_class_mass_gt"])
    assert not np.array_equal(one.queries["row"] * 100 + one.queries["col"],
                              other.queries["row"] * 100 + other.queries["col"])
    assert [row["variant"] for row in one.ablation] == ["full model"]
