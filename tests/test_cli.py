"""The batch subcommands end to end through ``danet.cli.app``, on a tiny random model saved by the test.

CamVid tests (marked ``camvid``) use 2 frames and are skipped when the data is absent.
"""
from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from danet.checkpoints import save_model
from danet.checkpoints.meta import ModelMeta
from danet.cli import app
from danet.data.camvid import find_camvid, list_pairs
from danet.data.palettes import CAMVID, generic_dataset
from danet.models import create_model
from danet.viz import colorize

runner = CliRunner()
PALETTE = generic_dataset(5).palette_array()
ALPHA, BETA = 0.7, 0.3


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    """Non-zero exit, and stderr ends with exactly one ``error: ...`` line naming the problem."""
    assert result.exit_code != 0, result.output
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1
    assert "Traceback" not in result.output + result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """5 classes, MobileNetV2 + 16-channel head, alpha/beta set so both modules act."""
    torch.manual_seed(0)
    model = create_model(backbone="mobilenetv2_100", num_classes=5, head_channels=16).eval()
    with torch.no_grad():
        model.head.pam.alpha.fill_(ALPHA)
        model.head.cam.beta.fill_(BETA)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(model, ModelMeta(config=model.config, dataset=generic_dataset(5)), path)
    return path


def write_image(path, height, width, seed):
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = (70, 130, 200)
    image[height // 2:] = (90, 90, 90)
    image = np.clip(image + rng.integers(-25, 25, image.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path)
    return path


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png", 64, 96, 0)
    write_image(folder / "b.png", 64, 96, 1)
    write_image(folder / "c.jpg", 72, 80, 2)
    return folder


def png(path):
    return np.array(Image.open(path).convert("RGB"))


def palette_only(image, palette):
    colours = {tuple(c) for c in image.reshape(-1, 3).tolist()}
    return colours <= {tuple(int(v) for v in c) for c in palette}


# ---- help ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("command, option", [("predict", "--save-logits"), ("attention", "--channel"),
                                             ("figure", "--dpi"), ("attention-stats", "--points-per-image")])
def test_help(command, option):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0
    for expected in (option, "--checkpoint", "--device"):
        assert expected in result.output


# ---- predict -------------------------------------------------------------------------------------
def test_predict_writes_masks_overlays_logits_and_resumes(tmp_path, images, checkpoint):
    out = tmp_path / "out"
    result = run("predict", images, "--out", out, "--checkpoint", checkpoint, "--save-logits", "--logits-dtype",
                 "float32", "--device", "cpu")
    assert result.exit_code == 0, result.output + result.stderr
    assert "3 predicted, 0 already done" in result.output
    assert png(out / "legend.png").shape[0] > 5 * 18     # one swatch row per class
    for name, (height, width) in (("a", (64, 96)), ("b", (64, 96)), ("c", (72, 80))):
        folder = out / name
        with np.load(folder / "logits.npz") as data:
            logits, probabilities = data["logits"], data["probabilities"]
            assert list(data["outputs"]) == ["fused", "pam", "cam"]
        assert logits.shape == (3, 5, height, width) and logits.dtype == np.float32
        np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
        for index, which in enumerate(("fused", "pam", "cam")):
            mask = png(folder / f"{which}_mask.png")
            overlay = png(folder / f"{which}_overlay.png")
            assert mask.shape == overlay.shape == (height, width, 3)
            assert palette_only(mask, PALETTE)
            np.testing.assert_array_equal(mask, colorize(logits[index].argmax(0), PALETTE))
            assert not palette_only(overlay, PALETTE)      # the photo shows through
        record = json.loads((folder / "prediction.json").read_text())
        assert record["size"] == [width, height]
        source = images / (name + (".jpg" if name == "c" else ".png"))
        assert record["image_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert sum(record["class_fractions"]["fused"]) == pytest.approx(1.0, abs=1e-4)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["processed"]) == ["a", "b", "c"] and manifest["failed"] == {}

    # Second run: everything is skipped and nothing is rewritten.
    stamp = (out / "a" / "fused_mask.png").stat().st_mtime_ns
    again = run("predict", images, "--out", out, "--checkpoint", checkpoint, "--save-logits", "--logits-dtype",
                "float32", "--device", "cpu")
    assert again.exit_code == 0 and "0 predicted, 3 already done" in again.output
    assert (out / "a" / "fused_mask.png").stat().st_mtime_ns == stamp
    # Without logits the same outputs count as complete too.
    assert "0 predicted, 3 already done" in run("predict", images, "--out", out, "--checkpoint", checkpoint).output

    # A lost output file or a new image makes only those images run again.
    (out / "b" / "cam_overlay.png").unlink()
    write_image(images / "d.png", 64, 96, 3)
    third = run("predict", images, "--out", out, "--checkpoint", checkpoint, "--save-logits", "--logits-dtype",
                "float32", "--device", "cpu")
    assert third.exit_code == 0 and "2 predicted, 2 already done" in third.output
    assert (out / "b" / "cam_overlay.png").is_file() and (out / "d" / "prediction.json").is_file()

    # Asking for float16 logits redoes the images whose logits are float32.
    fourth = run("predict", images, "--out", out, "--checkpoint", checkpoint, "--save-logits", "--device", "cpu")
    assert fourth.exit_code == 0 and "4 predicted, 0 already done" in fourth.output
    with np.load(out / "a" / "logits.npz") as data:
        assert data["logits"].dtype == np.float16
        np.testing.assert_allclose(data["probabilities"].astype(np.float32).sum(1), 1.0, atol=5e-3)
    assert not list(out.rglob("*.partial*"))


def test_predict_batches_give_the_same_masks(tmp_path, images, checkpoint):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run("predict", images, "--out", one, "--checkpoint", checkpoint, "--device", "cpu").exit_code == 0
    result = run("predict", images, "--out", two, "--checkpoint", checkpoint, "--batch-size", "2", "--device", "cpu")
    assert result.exit_code == 0
    assert json.loads((two / "a" / "prediction.json").read_text())["batch"] == 2
    assert json.loads((two / "c" / "prediction.json").read_text())["batch"] == 1     # other size
    for name in ("a", "b", "c"):
        for which in ("fused", "pam", "cam"):
            np.testing.assert_array_equal(png(one / name / f"{which}_mask.png"), png(two / name / f"{which}_mask.png"))


def test_predict_reports_unreadable_images_and_keeps_the_rest(tmp_path, images, checkpoint):
    (images / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    result = run("predict", images, "--out", out, "--checkpoint", checkpoint, "--device", "cpu")
    assert_one_line_error(result, "1 of 4 images", "broken.png")
    assert (out / "a" / "prediction.json").is_file()
    assert not (out / "broken" / "prediction.json").exists()


@pytest.mark.parametrize("args, fragment", [
    (["missing-folder"], "does not exist"),
    (["notes.txt"], "not an image"),
])
def test_predict_bad_inputs(tmp_path, checkpoint, args, fragment, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    result = run("predict", *args, "--out", tmp_path / "out", "--checkpoint", checkpoint)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "out").exists()


def test_output_folder_that_is_a_file(tmp_path, images, checkpoint):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert_one_line_error(run("predict", images, "--out", taken, "--checkpoint", checkpoint), "not a folder")
    assert_one_line_error(run("attention", images / "a.png", "--point", "1,1", "--out", taken,
                              "--checkpoint", checkpoint), "not a folder")
    assert taken.read_text() == "a file"


def test_bad_checkpoint_and_device(tmp_path, images):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    assert_one_line_error(run("predict", images, "--out", tmp_path / "o", "--checkpoint", garbage), "could not load")
    assert_one_line_error(run("predict", images, "--out", tmp_path / "o", "--checkpoint", tmp_path / "nope.pt"),
                          "does not exist")
    if not torch.cuda.is_available():
        assert_one_line_error(run("predict", images, "--out", tmp_path / "o", "--checkpoint", garbage,
                                  "--device", "cuda"))
    assert_one_line_error(run("predict", images, "--out", tmp_path / "o", "--device", "tpu"), "unknown device")


# ---- attention -----------------------------------------------------------------------------------
def test_attention_exports_maps_matrix_channels_and_manifest(tmp_path, images, checkpoint):
    out = tmp_path / "att"
    image = images / "a.png"
    every_channel = [arg for c in range(16) for arg in ("--channel", c)]
    result = run("attention", image, "--point", "10,10", "--point", "95,63", "--point", "50.5,20",
                 *every_channel, "--out", out, "--checkpoint", checkpoint, "--device", "cpu")
    assert result.exit_code == 0, result.output + result.stderr

    maps = np.load(out / "pam_maps.npy")
    assert maps.shape == (3, 8, 12)                       # 64 x 96 at output stride 8
    np.testing.assert_allclose(maps.sum((1, 2)), 1.0, atol=1e-5)
    assert np.all(maps >= 0)
    for index in range(3):
        single = np.load(out / f"pam_point{index + 1}.npy")
        np.testing.assert_array_equal(single, maps[index])
        assert png(out / f"pam_point{index + 1}.png").shape == (64, 96, 3)
    assert png(out / "image_points.png").shape == (64, 96, 3)
    assert not np.array_equal(maps[0], maps[1])           # different points, different attention

    matrix = np.load(out / "cam_matrix.npy")
    assert matrix.shape == (16, 16)
    np.testing.assert_allclose(matrix.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.loadtxt(out / "cam_matrix.csv", delimiter=","), matrix, rtol=1e-6, atol=1e-9)
    assert Image.open(out / "cam_matrix.png").size[0] > 300

    before = np.stack([np.load(out / f"channel{c}_before.npy") for c in range(16)])
    after = np.stack([np.load(out / f"channel{c}_after.npy") for c in range(16)])
    assert before.shape == after.shape == (16, 8, 12)
    # The exported maps obey CAM's definition: after = beta * attn @ before + before.
    np.testing.assert_allclose(after, BETA * np.einsum("ij,jhw->ihw", matrix, before) + before, rtol=1e-4, atol=1e-4)
    assert png(out / "channel7_after.png").shape == (64, 96, 3)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["image"]["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert manifest["grid_size"] == [8, 12]
    assert manifest["alpha"] == pytest.approx(ALPHA) and manifest["beta"] == pytest.approx(BETA)
    assert manifest["model"]["source"] == str(checkpoint)
    cells = [p["cell"] for p in manifest["points"]]
    assert cells == [[int(y * 8 / 64), int(x * 12 / 96)] for x, y in ((10, 10), (95, 63), (50.5, 20))]
    assert [(p["x"], p["y"]) for p in manifest["points"]] == [(10, 10), (95, 63), (50.5, 20)]
    for point, grid_map in zip(manifest["points"], maps):
        assert point["self_weight"] == pytest.approx(float(grid_map[tuple(point["cell"])]))
    channel7 = manifest["channels"][7]
    assert channel7["channel"] == 7 and len(channel7["top_sources"]) == 5
    assert channel7["top_sources"][0][1] == pytest.approx(matrix[7].max(), rel=1e-5)
    assert all((out / name).is_file() for name in manifest["files"])


@pytest.mark.parametrize("args, fragment", [
    (["--point", "96,10"], "outside the 96x64 image"),
    (["--point", "10;10"], "not X,Y"),
    (["--point", "a,b"], "not X,Y"),
    (["--point", "5,5", "--channel", "16"], "channel 16 does not exist"),
])
def test_attention_bad_input(tmp_path, images, checkpoint, args, fragment):
    out = tmp_path / "att"
    result = run("attention", images / "a.png", *args, "--out", out, "--checkpoint", checkpoint)
    assert_one_line_error(result, fragment)
    assert not (out / "manifest.json").exists()


def test_attention_unreadable_image(tmp_path, checkpoint):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG nope")
    assert_one_line_error(run("attention", broken, "--point", "1,1", "--out", tmp_path / "o",
                              "--checkpoint", checkpoint), "broken.png")
    assert_one_line_error(run("attention", tmp_path / "absent.png", "--point", "1,1", "--out", tmp_path / "o",
                              "--checkpoint", checkpoint), "absent.png")


# ---- figure --------------------------------------------------------------------------------------
def test_figure_in_three_formats(tmp_path, images, checkpoint):
    for suffix in ("png", "pdf", "svg"):
        out = tmp_path / f"fig.{suffix}"
        result = run("figure", images / "a.png", "--point", "10,10", "--point", "80,50", "--out", out,
                     "--checkpoint", checkpoint, "--dpi", "100", "--title", "Tiny model")
        assert result.exit_code == 0, result.output + result.stderr
        data = out.read_bytes()
        if suffix == "png":
            picture = Image.open(out)
            # 4 panels of 2.6 in at 100 dpi, minus the tight bounding box's trim.
            assert 800 < picture.size[0] < 1100 and picture.size[1] > 400
            pixels = np.array(picture.convert("RGB"))
            assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50      # real content, not blank
        elif suffix == "pdf":
            assert data.startswith(b"%PDF")
        else:
            assert b"<svg" in data and b"Tiny model" in data and b"Point 2" in data   # text kept as text
    assert not list(tmp_path.glob(".*partial*"))


def test_figure_rejects_unknown_format_before_loading(tmp_path, images):
    result = run("figure", images / "a.png", "--point", "1,1", "--out", tmp_path / "fig.gif",
                 "--checkpoint", tmp_path / "never-read.safetensors")
    assert_one_line_error(result, "unsupported figure format")


# ---- attention-stats -----------------------------------------------------------------------------
def make_dataset(root, count=3, size=(64, 96)):
    """CamVid layout: val/ + valannot/, three classes in blocks, a void (11) stripe."""
    (root / "val").mkdir(parents=True)
    (root / "valannot").mkdir()
    h, w = size
    for i in range(count):
        label = np.zeros((h, w), np.uint8)
        label[: h // 2] = 1
        label[h // 2:, w // 2:] = 2
        label[:, :12] = 11
        write_image(root / "val" / f"f{i}.png", h, w, i)
        Image.fromarray(label).save(root / "valannot" / f"f{i}.png")
    return root


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_attention_stats_end_to_end(tmp_path, checkpoint):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "stats"
    result = run("attention-stats", "--data", data, "--out", out, "--points-per-image", "7", "--ignore-index", "11",
                 "--checkpoint", checkpoint, "--device", "cpu")
    assert result.exit_code == 0, result.output + result.stderr
    table = read_csv(out / "attention_stats.csv")
    assert table[-1]["class"] == "all" and int(table[-1]["queries"]) == 21
    assert sum(int(row["queries"]) for row in table[:-1]) == 21
    assert {row["class"] for row in table[:-1]} <= {"class 0", "class 1", "class 2"}
    for row in table:
        for column in ("same_class_mass_gt", "chance_gt", "same_class_mass_pred", "entropy_normalised",
                       "same_class_mass_gt_median"):
            assert 0.0 <= float(row[column]) <= 1.0, (row["class"], column)
        assert 0 <= float(row["distance_pixels"]) <= np.hypot(64, 96)
    queries = read_csv(out / "queries.csv")
    assert len(queries) == 21 and all(int(q["gt_class"]) in (0, 1, 2) for q in queries)
    ablation = read_csv(out / "ablation.csv")
    assert [row["variant"] for row in ablation][0] == "full model" and len(ablation) == 4
    assert float(ablation[0]["alpha"]) == pytest.approx(ALPHA) and float(ablation[1]["alpha"]) == 0
    assert Image.open(out / "attention_stats.png").size[0] > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3 and summary["settings"]["points_per_image"] == 7
    assert "PAM attention over 3 val images" in result.output


def test_attention_stats_bad_data(tmp_path, checkpoint):
    result = run("attention-stats", "--data", tmp_path / "nothing", "--out", tmp_path / "s", "--checkpoint", checkpoint)
    assert_one_line_error(result, "CamVid layout")
    data = make_dataset(tmp_path / "mismatch", count=1)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(data / "valannot" / "f0.png")
    result = run("attention-stats", "--data", data, "--out", tmp_path / "s", "--checkpoint", checkpoint)
    assert_one_line_error(result, "does not match")
    assert not (tmp_path / "s" / "summary.json").exists()


# ---- CamVid (2 frames) ---------------------------------------------------------------------------
CAMVID_ROOT = find_camvid()
camvid = pytest.mark.skipif(CAMVID_ROOT is None, reason="CamVid not found (../shared/data/camvid or $DANET_CAMVID)")


@pytest.fixture(scope="module")
def camvid_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(backbone="mobilenetv2_100", num_classes=11, head_channels=16).eval()
    with torch.no_grad():
        model.head.pam.alpha.fill_(ALPHA)
        model.head.cam.beta.fill_(BETA)
    path = tmp_path_factory.mktemp("camvid-model") / "camvid-tiny.safetensors"
    save_model(model, ModelMeta(config=model.config, dataset=CAMVID), path)
    return path


@camvid
@pytest.mark.camvid
def test_camvid_predict_and_stats(tmp_path, camvid_checkpoint):
    frames = [image for image, _ in list_pairs(CAMVID_ROOT, "val")[:2]]
    out = tmp_path / "pred"
    result = run("predict", *frames, "--out", out, "--checkpoint", camvid_checkpoint, "--device", "cpu")
    assert result.exit_code == 0, result.output + result.stderr
    for frame in frames:
        mask = png(out / frame.stem / "fused_mask.png")
        assert mask.shape == (360, 480, 3) and palette_only(mask, CAMVID.palette_array())

    stats_out = tmp_path / "stats"
    result = run("attention-stats", "--data", CAMVID_ROOT, "--max-images", "2", "--points-per-image", "5",
                 "--no-ablation", "--out", stats_out, "--checkpoint", camvid_checkpoint, "--device", "cpu")
    assert result.exit_code == 0, result.output + result.stderr
    table = read_csv(stats_out / "attention_stats.csv")
    assert int(table[-1]["queries"]) == 10
    assert {row["class"] for row in table[:-1]} <= set(CAMVID.classes)
    for row in table:
        assert 0.0 <= float(row["same_class_mass_gt"]) <= 1.0
        assert 0.0 <= float(row["entropy_normalised"]) <= 1.0
    summary = json.loads((stats_out / "summary.json").read_text())
    assert summary["settings"]["ignore_index"] == 11     # from the model's dataset
