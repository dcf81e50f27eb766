"""The app's pure helpers (``danet_app.state``, ``exports``, ``viz_plotly``): clicks -> points,
per-point attention statistics, label maps, content hashes, exports, Plotly figures, the model
page's facts. No Streamlit run, no network: small hand-built inputs with known answers."""
from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_tiny_model
from danet.checkpoints.describe import describe
from danet.checkpoints.meta import LoadedModel, ModelMeta
from danet.data.palettes import CAMVID
from danet.inspection import InspectionResult
from danet.weights import default_card
from danet_app.exports import (compose_panels, encode_png, image_summary, json_record, metrics_for_json,
                               model_summary, npz_bundle)
from danet_app.state import (ForwardCounter, LabelMapError, add_point, apply_click, attention_entropy,
                             click_to_pixel, file_sha256, model_facts, model_id, point_statistics,
                             prepare_label_map, recorded_scores, remove_point, result_key, score_outputs)
from danet_app.viz_plotly import cam_matrix_figure, channel_maps_figure, channel_mix_figure, cluster_order

CLASSES = ("a", "b", "c")


def make_result(class_map: np.ndarray, query: torch.Tensor, key: torch.Tensor, grid=(2, 3),
                channels: int = 4) -> InspectionResult:
    """An InspectionResult with a chosen fused prediction and chosen PAM query/key."""
    height, width = class_map.shape
    logits = torch.nn.functional.one_hot(torch.from_numpy(class_map).long(), len(CLASSES)).permute(2, 0, 1).float()
    cam = torch.softmax(torch.randn(channels, channels, generator=torch.Generator().manual_seed(0)), 1)
    maps = torch.rand(channels, *grid, generator=torch.Generator().manual_seed(1))
    return InspectionResult.for_da(
        image_size=(height, width), grid_size=grid, fused_logits=logits, pam_logits=logits.clone(),
        cam_logits=logits.roll(1, 0), pam_query=query, pam_key=key, cam_attention=cam.numpy(),
        cam_input=maps.numpy(), cam_output=(maps * 1.1).numpy(), alpha=0.5, beta=0.25, align_corners=False)


# 4 x 6 image on a 2 x 3 grid: each cell covers 2 x 2 pixels. Cell classes (row-major):
# [a, a, b / c, b, b]
CELL_CLASSES = np.array([[0, 0, 1], [2, 1, 1]])
CLASS_MAP = np.kron(CELL_CLASSES, np.ones((2, 2), dtype=np.int64))


def test_click_scales_displayed_pixels_to_image_pixels_and_clamps():
    assert click_to_pixel({"x": 50, "y": 25, "width": 240, "height": 180}, (360, 480)) == (100, 50)
    assert click_to_pixel({"x": 479.9, "y": 400, "width": 480, "height": 360}, (360, 480)) == (479, 359)
    assert click_to_pixel({"x": 10, "y": 10}, (360, 480)) == (10, 10)     # no size: already image pixels
    assert click_to_pixel(None, (360, 480)) is None
    assert click_to_pixel({"unix_time": 1}, (360, 480)) is None


def test_points_deduplicate_cap_and_remove():
    points, dropped = add_point([], (1, 2))
    points, dropped = add_point(points, (1, 2))
    assert points == [(1, 2)] and dropped is None
    for i in range(3):
        points, dropped = add_point(points, (10 + i, 0), max_points=3)
    assert points == [(10, 0), (11, 0), (12, 0)] and dropped == (1, 2)
    assert remove_point(points, 1) == [(10, 0), (12, 0)]


def test_apply_click_updates_one_state_only_and_reports_drops():
    first, second = {}, {}
    assert apply_click(first, {"x": 5, "y": 6, "width": 100, "height": 100}, (200, 200), max_points=2) == (10, 12)
    apply_click(first, {"x": 50, "y": 60, "width": 100, "height": 100}, (200, 200), max_points=2)
    apply_click(first, {"x": 70, "y": 80, "width": 100, "height": 100}, (200, 200), max_points=2)
    assert first["points"] == [(100, 120), (140, 160)]
    assert "(10, 12) was removed" in first["point_notice"]
    assert second == {}
    assert apply_click(first, None, (200, 200)) is None and apply_click(first, {"x": 1, "y": 1}, None) is None


def test_point_statistics_of_a_focused_and_a_uniform_row():
    n, d = 6, 6
    key = torch.eye(n, d) * 10.0
    query = torch.zeros(n, d)
    query[0, 5] = 10.0      # cell 0 looks at cell 5 (class b) with weight ~1
    result = make_result(CLASS_MAP, query, key)
    points = [(0, 0), (3, 3)]     # pixel (0,0) is in cell 0 (class a); (3,3) in cell 4 (class b), query 0
    rows = result.rows(points)
    stats = point_statistics(result, points, rows, CLASSES)

    focused, uniform = stats
    assert focused.cell == (0, 0) and focused.class_name == "a"
    assert focused.peak_cell == (1, 2) and focused.top_class_name == "b"
    assert focused.same_class_share == pytest.approx(0.0, abs=1e-3)
    assert focused.top_class_share == pytest.approx(1.0, abs=1e-3)
    assert focused.entropy_bits < 0.05

    assert uniform.cell == (1, 1) and uniform.class_name == "b"
    assert uniform.entropy_bits == pytest.approx(np.log2(6))
    assert uniform.entropy_fraction == pytest.approx(1.0)
    assert uniform.same_class_share == pytest.approx(3 / 6)      # three of six cells are b
    record = uniform.to_dict()
    assert record["index"] == 2 and record["class"] == "b" and record["cell"] == [1, 1]


def test_grid_majority_not_nearest_decides_same_class_mass():
    # cell 0 has 3 pixels of class c and 1 of class a: its grid class is c even though pixel (0,0) is a
    class_map = CLASS_MAP.copy()
    class_map[0, 1] = class_map[1, 0] = class_map[1, 1] = 2
    result = make_result(class_map, torch.zeros(6, 6), torch.zeros(6, 6))
    (stat,) = point_statistics(result, [(0, 0)], result.rows([(0, 0)]), CLASSES)
    assert stat.class_name == "a"
    # uniform attention; by majority only cell 1 is still a (1/6); sampling the top-left pixel of
    # each cell would also count cell 0 (2/6)
    assert stat.same_class_share == pytest.approx(1 / 6)
    assert stat.top_class_name == "b"                               # 3 of 6 cells


def test_attention_entropy_in_bits():
    assert attention_entropy(np.full(8, 1 / 8)) == pytest.approx(3.0)
    assert attention_entropy(np.array([1.0, 0, 0])) == 0.0


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_label_map_checks_size_and_out_of_range_ids():
    labels = np.zeros((4, 6), np.uint8)
    labels[0, 0] = 7                    # outside 0..2, not the ignore id
    labels[0, 1] = 11                   # the ignore id
    checked = prepare_label_map(png_bytes(labels), (4, 6), 3, ignore_index=11)
    assert checked.labels[0, 0] == 11 and checked.labels[0, 1] == 11
    assert any("outside 0..2" in notice for notice in checked.notices)
    with pytest.raises(LabelMapError, match="5x5|6x4"):
        prepare_label_map(png_bytes(np.zeros((5, 5), np.uint8)), (4, 6), 3, ignore_index=11)
    with pytest.raises(LabelMapError):
        prepare_label_map(b"definitely not a png", (4, 6), 3, ignore_index=11)


def test_label_map_without_dataset_ignore_uses_255_and_rgb_palette_maps_back():
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    ids = np.array([[0, 1, 2], [2, 1, 0]])
    checked = prepare_label_map(png_bytes(palette[ids]), (2, 3), 3, ignore_index=None, palette=palette)
    assert checked.ignore_index == 255
    np.testing.assert_array_equal(checked.labels, ids)


def test_scores_of_each_output_against_a_label_map():
    result = make_result(CLASS_MAP, torch.zeros(6, 6), torch.zeros(6, 6))
    checked = prepare_label_map(png_bytes(CLASS_MAP.astype(np.uint8)), (4, 6), 3, ignore_index=None)
    scored = score_outputs(result, checked, 3)
    assert scored["fused"]["miou"] == pytest.approx(1.0)
    assert scored["pam"]["pixel_accuracy"] == pytest.approx(1.0)
    assert scored["cam"]["pixel_accuracy"] < 1.0          # cam logits were rolled: a different prediction
    as_json = metrics_for_json(scored, CLASSES)
    assert as_json["fused"]["iou"] == {"a": 1.0, "b": 1.0, "c": 1.0}


def loaded_tiny(**config) -> LoadedModel:
    model = make_tiny_model(11, **config)
    return LoadedModel(model=model, meta=ModelMeta(config=model.config, dataset=CAMVID), source="x.safetensors")


def test_npz_and_json_exports_round_trip():
    result = make_result(CLASS_MAP, torch.randn(6, 3), torch.randn(6, 3))
    points = [(0, 0), (5, 3)]
    rows = result.rows(points)
    data = np.load(io.BytesIO(npz_bundle(result, points, rows, CLASSES, labels=CLASS_MAP)))
    assert data["pam_attention"].shape == (2, 2, 3)
    np.testing.assert_allclose(data["pam_attention"].sum((1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(data["cells"], [[0, 0], [1, 2]])
    np.testing.assert_array_equal(data["fused_prediction"], CLASS_MAP)
    assert data["cam_attention"].shape == (4, 4) and list(data["classes"]) == list(CLASSES)

    stats = point_statistics(result, points, rows, CLASSES)
    model = model_summary(loaded_tiny(), "cd" * 32, model_id("cd" * 32))
    text = json_record(model, image_summary("i.png", "ab" * 32, (4, 6), (40, 60)), result,
                       [s.to_dict() for s in stats], {"upsampling": "nearest"})
    record = json.loads(text)
    assert record["image"]["sha256"] == "ab" * 32
    assert record["model"]["config"]["backbone"] == "mobilenetv2_100"
    assert record["model"]["sha256"] == "cd" * 32 and record["model"]["id"] == "sha256:" + "cd" * 32
    assert [p["x"] for p in record["points"]] == [0, 5]
    assert record["inference"]["grid_size"] == {"height": 2, "width": 3}


def test_json_record_names_height_and_width_the_same_way_everywhere():
    # bug: image.size was [W, H] and inference.image_size [H, W]; a 4 x 6 (H x W) image tells them apart
    result = make_result(CLASS_MAP, torch.zeros(6, 6), torch.zeros(6, 6))
    record = json.loads(json_record({}, image_summary("i.png", "ab" * 32, result.image_size, (8, 12)), result, []))
    assert record["image"]["size"] == record["inference"]["image_size"] == {"height": 4, "width": 6}
    assert record["image"]["original_size"] == {"height": 8, "width": 12}


def test_json_record_and_model_facts_give_timm_backbones_no_stem():
    # bug: the sidebar and the record called MobileNetV2's stem "7x7"
    mobilenet = loaded_tiny()
    record = json.loads(json_record(model_summary(mobilenet, "ab" * 32, "id"), {},
                                    make_result(CLASS_MAP, torch.zeros(6, 6), torch.zeros(6, 6)), []))
    assert record["model"]["config"]["stem"] is None
    assert "stem" not in model_facts(describe(mobilenet)) and "dilation" not in model_facts(describe(mobilenet))
    resnet = loaded_tiny(backbone="resnet18", stem="deep64")
    facts = model_facts(describe(resnet), "ab" * 32, "cpu")
    assert facts["stem"] == "deep64" and facts["layer4 dilations"] == "2, 4"
    assert facts["weights sha256"] == "ab" * 32 and facts["device"] == "cpu"
    assert "None" not in facts.values()


def test_model_id_is_the_content_hash_not_a_size_and_mtime_stamp(tmp_path):
    # bug: the id was f"{size}-{mtime}"; two files with the same size and mtime but other bytes
    # must get different ids, and the same bytes anywhere the same id
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(path)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    stat = path.stat()
    path.write_bytes(b"b" * 1000)                                   # same size ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))         # ... and the same mtime
    assert file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest() != first
    copy = tmp_path / "copy.bin"
    copy.write_bytes(b"b" * 1000)
    assert file_sha256(copy) == file_sha256(path)
    assert model_id(first) == f"sha256:{first}"
    assert model_id(first, "2-4-4", "camvid") != model_id(first) != model_id(first, dataset="voc")


def test_recorded_scores_from_the_card_for_the_default_and_from_metadata_otherwise():
    card = default_card()
    shipped = recorded_scores({"epoch": 27}, card)
    assert shipped.miou == card.metrics["val_miou"] and shipped.epoch == 27
    assert shipped.per_class_iou == card.per_class_iou and shipped.licence == card.licence and shipped.any
    other = recorded_scores({"val_miou": 12.5, "val_iou": {"a": 3, "b": None}, "epoch": "x", "license": "MIT"})
    assert other.miou == 12.5 and other.pixel_accuracy is None and other.epoch is None
    assert other.per_class_iou == {"a": 3.0, "b": None} and other.licence == "MIT"
    assert not recorded_scores({"val_miou": "high"}).any               # free-form junk is not a score


def test_compose_panels_lays_out_a_grid():
    red = np.zeros((30, 40, 3), np.uint8)
    red[..., 0] = 255
    grid = compose_panels([("one", red), ("two", red), ("three", red)], columns=2, panel_width=80)
    assert grid.shape[1] == 2 * (80 + 8) + 8
    assert grid.shape[0] > 2 * 60                        # two rows of 60-px panels plus titles
    assert Image.open(io.BytesIO(encode_png(grid))).size == (grid.shape[1], grid.shape[0])


def test_cluster_order_groups_block_structure():
    rng = np.random.default_rng(0)
    groups = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    matrix = np.where(groups[:, None] == groups[None, :], 0.2, 0.05) + rng.uniform(0, 0.001, (8, 8))
    order = cluster_order(matrix)
    assert sorted(order) == list(range(8))
    ordered = groups[order]
    assert (np.diff(ordered) != 0).sum() == 1             # the two groups end up contiguous


def test_cam_figures_keep_original_channel_ids():
    matrix = np.arange(9, dtype=float).reshape(3, 3)
    figure = cam_matrix_figure(matrix, order=np.array([2, 0, 1]))
    heat = figure.data[0]
    assert list(heat.x) == ["2", "0", "1"]
    assert heat.customdata[0][1] == matrix[2, 0]          # row 2, column 0 of the original
    assert "weight" in heat.hovertemplate
    assert len(channel_maps_figure(np.zeros((2, 3)), np.ones((2, 3)), 4).data) == 2
    assert list(channel_mix_figure([(3, 0.5), (1, 0.2)], 0, uniform=0.1).data[0].x) == ["ch 3", "ch 1"]


def test_forward_counter_and_result_key():
    counter = ForwardCounter()
    assert counter.total == 0 and counter.last_seconds is None
    counter.record(0.5)
    assert counter.total == 1 and counter.last_seconds == 0.5
    assert result_key("m", "img", "cpu") != result_key("m", "img", "cuda")


def test_the_app_record_round_trips_through_the_bounded_reader():
    """A record the app exports (json_record) is read back by the app's loader unchanged."""
    from danet_app.state import points_from_record

    result = make_result(np.zeros((96, 128), np.int64), torch.zeros(6, 6), torch.zeros(6, 6))
    points = [{"index": 1, "x": 5, "y": 6, "class": "a"}, {"index": 2, "x": 120, "y": 90, "class": "b"}]
    model = {"classes": [f"class {i}" for i in range(3000)]}
    metrics = {w: {"miou": None, "iou": {f"class {i}": 0.5 for i in range(3000)}} for w in ("fused", "pam", "cam")}
    text = json_record(model, image_summary("i.png", "ab" * 32, (96, 128), (96, 128)), result, points,
                       metrics=metrics)
    assert points_from_record(text, "ab" * 32, (96, 128)) == [(5, 6), (120, 90)]
def test_a_dataset_guessed_from_the_class_count_says_so():
    from danet_app.state import dataset_guess, dataset_label

    guessed = {"dataset_from": "guessed from the class count (19)"}
    assert dataset_label("cityscapes", guessed) == "cityscapes (guessed from the class count (19))"
    assert dataset_guess(guessed) == "guessed from the class count (19)"
    assert dataset_label("cityscapes", {"dataset_from": "checkpoint meta"}) == "cityscapes"
    assert dataset_label("camvid", None) == "camvid" and dataset_guess({"dataset_from": 3}) is None
