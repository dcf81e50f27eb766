"""The command line end to end through ``danet.cli.app``, on tiny random models (``conftest``).

CamVid tests (marked ``camvid``) use 2 frames and are skipped when the data is absent.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.main import get_command

import danet
from conftest import make_camvid_like, make_tiny_model, save_tiny
from danet.cli import app
from danet.data.camvid import list_pairs
from danet.data.palettes import CAMVID, generic_dataset
from danet.jobs.evaluate import evaluate_loaded
from danet.render.overlays import colorize
from danet.weights import default_card
from helpers_cli import WIDE, assert_one_line_error, read_csv, runner, write_image
from helpers_cli import invoke as run

PALETTE = generic_dataset(5).palette_array()
ALPHA, BETA = 0.7, 0.3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """5 classes, MobileNetV2 + 16-channel head, alpha/beta set so both modules act."""
    return save_tiny(make_tiny_model(5, alpha=ALPHA, beta=BETA), tmp_path_factory.mktemp("model") / "tiny.safetensors")


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
READS_A_CHECKPOINT = ("predict", "attention", "figure", "measures", "attention-stats", "evaluate", "info")
COMMANDS = READS_A_CHECKPOINT + ("convert", "train")     # every one loads or trains a model


def test_the_command_list_is_the_one_these_tests_know():
    assert sorted(get_command(app).commands) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command):
    """Exit 0; --device everywhere, --checkpoint wherever a checkpoint is read; flags show no
    value type (typer 0.29's Rich help printed ``--force <bool>``)."""
    result = runner.invoke(app, [command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output and "BOOLEAN" not in result.output
    assert "--device DEVICE" in result.output
    assert ("--checkpoint PATH" in result.output) == (command in READS_A_CHECKPOINT)
    if command in READS_A_CHECKPOINT or command == "convert":
        for option in ("--dilation PATTERN", "--dataset NAME", "--align-corners / --no-align-corners"):
            assert option in result.output


@pytest.mark.parametrize("command, option", [("predict", "--save-logits / --no-save-logits"),
                                             ("attention", "--channel"), ("figure", "--dpi"),
                                             ("attention-stats", "--points-per-image"), ("evaluate", "--flip"),
                                             ("train", "--max-steps"), ("info", "--json")])
def test_help_names_the_commands_own_options(command, option):
    result = runner.invoke(app, [command, "--help"], env=WIDE)
    assert result.exit_code == 0 and option in result.output


def test_shared_options_have_one_help_text():
    """Each shared option reads the same in every command that takes it."""
    texts = {}
    for command in COMMANDS:
        for param in get_command(app).commands[command].params:
            if param.name in ("checkpoint", "dilation", "dataset", "align_corners", "device"):
                texts.setdefault(param.name, set()).add(param.help)
    assert set(texts) == {"checkpoint", "dilation", "dataset", "align_corners", "device"}
    assert all(len(helps) == 1 for helps in texts.values()), texts


def test_top_level_help_lists_every_command():
    result = runner.invoke(app, ["--help"], env=WIDE)
    assert result.exit_code == 0 and "<bool>" not in result.output
    assert all(command in result.output for command in COMMANDS)


@pytest.mark.slow
def test_python_m_danet_cli():
    result = subprocess.run([sys.executable, "-m", "danet.cli", "--help"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "attention-stats" in result.stdout and "<bool>" not in result.stdout


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


# ---- evaluate, info, convert, train ---------------------------------------------------------------
@pytest.fixture(scope="module")
def generic11_checkpoint(tmp_path_factory):
    """11 classes saved under a generic label set, so --dataset camvid visibly changes the names."""
    return save_tiny(make_tiny_model(11, alpha=ALPHA, beta=BETA), tmp_path_factory.mktemp("g11") / "g11.safetensors",
                     dataset=generic_dataset(11))


def test_evaluate_honours_dilation_dataset_and_align_corners(tmp_path, generic11_checkpoint):
    """The bug: evaluate loaded every checkpoint with its recorded config, whatever the options said."""
    data = make_camvid_like(tmp_path / "data")
    plain, chosen = tmp_path / "plain.json", tmp_path / "chosen.json"
    result = run("evaluate", "--data", data, "--checkpoint", generic11_checkpoint, "--device", "cpu", "--json", plain)
    assert result.exit_code == 0, result.output
    result = run("evaluate", "--data", data, "--checkpoint", generic11_checkpoint, "--device", "cpu", "--json", chosen,
                 "--dilation", "os16", "--dataset", "camvid", "--no-align-corners")
    assert result.exit_code == 0, result.output
    before, after = json.loads(plain.read_text()), json.loads(chosen.read_text())
    assert before["model"]["config"]["output_stride"] == 8 and after["model"]["config"]["output_stride"] == 16
    assert before["model"]["config"]["align_corners"] is True and after["model"]["config"]["align_corners"] is False
    assert before["model"]["dataset"] == "generic11" and after["model"]["dataset"] == "camvid"
    assert list(before["iou"]) == list(generic_dataset(11).classes) and list(after["iou"]) == list(CAMVID.classes)
    # The scores are those of the model as the options describe it.
    expected = evaluate_loaded(danet.load(generic11_checkpoint, device="cpu", dilation="os16", dataset="camvid",
                                          align_corners=False), data)
    assert after["miou"] == pytest.approx(expected["miou"]) and after["confusion"] == expected["confusion"].tolist()


@pytest.mark.parametrize("command", ["predict", "attention", "attention-stats", "evaluate", "info", "convert"])
def test_unknown_dataset_is_one_error_line(tmp_path, images, checkpoint, command):
    data = make_camvid_like(tmp_path / "data")
    args = {"predict": ["predict", images, "--out", tmp_path / "o", "--checkpoint", checkpoint],
            "attention": ["attention", images / "a.png", "--point", "1,1", "--out", tmp_path / "o",
                          "--checkpoint", checkpoint],
            "attention-stats": ["attention-stats", "--data", data, "--out", tmp_path / "o", "--checkpoint", checkpoint],
            "evaluate": ["evaluate", "--data", data, "--checkpoint", checkpoint],
            "info": ["info", checkpoint],
            "convert": ["convert", checkpoint, tmp_path / "c.safetensors"]}[command]
    assert_one_line_error(run(*args, "--dataset", "no-such-set", "--device", "cpu"), "unknown dataset 'no-such-set'")
    assert not (tmp_path / "o").exists() and not (tmp_path / "c.safetensors").exists()


def test_info_takes_the_checkpoint_as_argument_or_option(tmp_path, checkpoint):
    as_argument = run("info", checkpoint, "--json", "--device", "cpu")
    as_option = run("info", "--checkpoint", checkpoint, "--json")
    assert as_argument.exit_code == 0 and as_option.exit_code == 0, as_argument.output + as_option.output
    assert json.loads(as_argument.stdout) == json.loads(as_option.stdout)
    assert json.loads(as_option.stdout)["card"] is None           # a file has no model card
    assert_one_line_error(run("info", checkpoint, "--checkpoint", tmp_path / "other.safetensors"), "once")
    assert_one_line_error(run("info", checkpoint, "--device", "tpu"), "unknown device")
    assert_one_line_error(run("info", "--checkpoint", tmp_path / "absent.pt"), "does not exist")


def test_convert_takes_the_model_options_and_device(tmp_path, generic11_checkpoint):
    out = tmp_path / "converted.safetensors"
    result = run("convert", generic11_checkpoint, out, "--dataset", "camvid", "--dilation", "os16",
                 "--no-align-corners", "--device", "cpu")
    assert result.exit_code == 0, result.output
    loaded = danet.load(out, device="cpu")
    assert (loaded.meta.dataset.name, loaded.meta.config.output_stride, loaded.meta.config.align_corners) == \
        ("camvid", 16, False)
    assert_one_line_error(run("convert", generic11_checkpoint, tmp_path / "x.safetensors", "--device", "tpu"),
                          "unknown device")
    assert not (tmp_path / "x.safetensors").exists()


def test_info_of_the_embedded_default_shows_its_model_card(tmp_path, monkeypatch):
    """From any folder, ``danet info`` describes the packaged weights and prints their card."""
    monkeypatch.chdir(tmp_path)
    card = default_card()
    text = run("info")
    assert text.exit_code == 0, text.output
    for fact in (card.name, str(card.metrics["val_miou"]), card.licence, ", ".join(card.classes), "embedded default"):
        assert fact in text.stdout, fact
    summary = json.loads(run("info", "--json").stdout)
    assert summary["card"]["metrics"] == card.metrics and summary["card"]["licence"] == card.licence
    assert summary["classes"] == list(card.classes) and summary["backbone"] == card.backbone


@pytest.mark.parametrize("args, fragment", [
    (["--device", "tpu"], "unknown device"),
    (["--crop", "288"], "--crop '288' is not H,W"),
    (["--class-weights", "inverse", "--max-steps", "1"], "class_weights must be"),
])
def test_train_bad_options_are_one_error_line(tmp_path, args, fragment):
    data = make_camvid_like(tmp_path / "data")
    result = run("train", "--data", data, "--out", tmp_path / "run", "--backbone", "resnet18", "--head-channels", "16",
                 "--no-imagenet", "--batch-size", "2", "--crop", "32,48", *args)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_train_missing_data_is_one_error_line(tmp_path):
    assert_one_line_error(run("train", "--data", tmp_path / "absent", "--out", tmp_path / "run", "--device", "cpu"),
                          "CamVid layout")


@pytest.mark.slow
def test_train_one_step_then_info_and_evaluate(tmp_path):
    data = make_camvid_like(tmp_path / "data")
    run_dir = tmp_path / "run"
    result = run("train", "--data", data, "--out", run_dir, "--backbone", "resnet18", "--head-channels", "16",
                 "--no-imagenet", "--epochs", "1", "--batch-size", "2", "--crop", "32,48", "--class-weights", "none",
                 "--threads", "1", "--max-steps", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert 0 <= json.loads(result.stdout.splitlines()[-1])["best_val_miou"] <= 1
    info = json.loads(run("info", run_dir / "last.pt", "--json").stdout)
    assert (info["backbone"], info["dataset"], info["align_corners"]) == ("resnet18", "camvid", False)
    scores = tmp_path / "scores.json"
    result = run("evaluate", "--data", data, "--checkpoint", run_dir / "best.safetensors", "--device", "cpu",
                 "--json", scores)
    assert result.exit_code == 0, result.output
    assert json.loads(scores.read_text())["images"] == 2


# ---- CamVid (2 frames) ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.camvid
def test_camvid_predict_and_stats(tmp_path, camvid, tiny_camvid_checkpoint):
    frames = [image for image, _ in list_pairs(camvid, "val")[:2]]
    out = tmp_path / "pred"
    result = run("predict", *frames, "--out", out, "--checkpoint", tiny_camvid_checkpoint, "--device", "cpu")
    assert result.exit_code == 0, result.output + result.stderr
    for frame in frames:
        mask = png(out / frame.stem / "fused_mask.png")
        assert mask.shape == (360, 480, 3) and palette_only(mask, CAMVID.palette_array())

    stats_out = tmp_path / "stats"
    result = run("attention-stats", "--data", camvid, "--max-images", "2", "--points-per-image", "5",
                 "--no-ablation", "--out", stats_out, "--checkpoint", tiny_camvid_checkpoint, "--device", "cpu")
    assert result.exit_code == 0, result.output + result.stderr
    table = read_csv(stats_out / "attention_stats.csv")
    assert int(table[-1]["queries"]) == 10
    assert {row["class"] for row in table[:-1]} <= set(CAMVID.classes)
    for row in table:
        assert 0.0 <= float(row["same_class_mass_gt"]) <= 1.0
        assert 0.0 <= float(row["entropy_normalised"]) <= 1.0
    summary = json.loads((stats_out / "summary.json").read_text())
    assert summary["settings"]["ignore_index"] == 11     # from the model's dataset
