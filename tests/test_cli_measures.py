"""``danet measures`` (per-image measures of issue 14) and the measures that ``danet attention-stats``
now reports: the command runs end to end, its numbers are the library's, bad input is one error line."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

import danet
from conftest import make_tiny_model, save_tiny
from danet.analysis import ablate, contribution, knockout_curve, measure_image
from danet.jobs.attention import read_query
from danet.analysis.attention_stats import IMAGE_COLUMNS
from danet.inspection import inspect_image
from danet.jobs.measures import measure_query, write_measures
from helpers_cli import WIDE, assert_one_line_error, invoke, read_csv, write_image

ALPHA, BETA = 0.7, 0.3
HEIGHT, WIDTH = 64, 96
VERDICTS = ("faithful", "not faithful", "no effect")


def run(*args):
    return invoke(*args, env=WIDE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """5 classes; alpha and beta large enough that both modules change something."""
    return save_tiny(make_tiny_model(5, alpha=ALPHA, beta=BETA), tmp_path_factory.mktemp("model") / "tiny.safetensors")


def write_labels(path, height=HEIGHT, width=WIDTH, void=None):
    label = np.zeros((height, width), np.uint8)
    label[height // 2:] = 1
    label[height // 2:, width // 2:] = 2
    if void is not None:
        label[:] = void
    Image.fromarray(label).save(path)
    return path


@pytest.fixture()
def image(tmp_path):
    return write_image(tmp_path / "frame.png")


POINTS = ((10, 5), (70, 50))


# ---- help ----------------------------------------------------------------------------------------
def test_measures_help_shows_its_options_and_no_bool():
    result = run("measures", "--help")
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output and "BOOLEAN" not in result.output
    for option in ("--point X,Y", "--out", "--labels LABELMAP", "--json", "--max-k", "--checkpoint PATH",
                   "--dilation PATTERN", "--dataset NAME", "--align-corners / --no-align-corners", "--device DEVICE"):
        assert option in result.output, option


# ---- end to end, against the library --------------------------------------------------------------
def test_measures_end_to_end_matches_the_library(tmp_path, image, checkpoint):
    labels = write_labels(tmp_path / "labels.png")
    out = tmp_path / "measures"
    args = ["measures", image, "--labels", labels, "--max-k", "12", "--draws", "3", "--checkpoint", checkpoint,
            "--device", "cpu"]
    for x, y in POINTS:
        args += ["--point", f"{x},{y}"]
    result = run(*args, "--out", out)
    assert result.exit_code == 0, result.output + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("PAM changes the features by") for line in lines)
    assert any("JS divergence" in line for line in lines)
    assert any(line.startswith("CAM ") for line in lines)
    assert any(line.startswith("Pixels whose class changes with PAM off") and "mIoU" in line for line in lines)
    point_lines = [line for line in lines if line.startswith("point ")]
    assert len(point_lines) == 2 and all(any(v in line for v in VERDICTS) for line in point_lines)

    record = json.loads((out / "measures.json").read_text())
    assert record["files"] == ["sinks.png", "pam_contribution.png", "deletion_point1.png", "deletion_point2.png"]
    for name in record["files"]:
        with Image.open(out / name) as picture:
            assert picture.size[0] > 200 and picture.size[1] > 150

    # The same measures straight from the library, on the same inputs.
    loaded = danet.load(checkpoint, device="cpu")
    picture = read_query(image, [f"{x},{y}" for x, y in POINTS]).picture
    inspected = inspect_image(loaded.model, picture.array, loaded.meta.mean, loaded.meta.std)
    measured = measure_image(inspected)
    assert record["specificity"]["js_mean"] == pytest.approx(measured.specificity.js_mean, rel=1e-5)
    assert record["specificity"]["mean_row_share"] == pytest.approx(measured.specificity.share_mean, rel=1e-5)
    assert record["specificity"]["sink_peak"] == pytest.approx(measured.specificity.sink_peak, rel=1e-5)
    top = measured.specificity.top_sinks(1)[0]
    assert (record["specificity"]["top_sinks"][0]["row"], record["specificity"]["top_sinks"][0]["col"]) == top[:2]
    assert record["contribution"]["pam_contribution_mean"] == pytest.approx(measured.contribution.pam_mean, rel=1e-5)
    assert record["contribution"]["cam_contribution_mean"] == pytest.approx(measured.contribution.cam_mean, rel=1e-5)
    assert record["contribution"]["alpha"] == pytest.approx(ALPHA, rel=1e-3)
    assert record["cam"]["cam_effective_channels_mean"] == pytest.approx(measured.cam.effective_mean, rel=1e-5)

    label_ids = np.asarray(Image.open(tmp_path / "labels.png")).astype(np.int64)
    expected = {(True, False): "PAM off", (False, True): "CAM off", (True, True): "PAM and CAM off"}
    assert [row["variant"] for row in record["ablation"]] == list(expected.values())
    for row, (pam_off, cam_off) in zip(record["ablation"], expected):
        ablation = ablate(loaded.model, inspected, pam_off=pam_off, cam_off=cam_off, label=label_ids,
                          ignore_index=255)
        assert row["changed_fraction"] == pytest.approx(ablation.changed_fraction, abs=1e-9)
        assert row["miou_change"] == pytest.approx(ablation.miou_change, abs=1e-9)
        assert 0.0 <= row["changed_fraction"] <= 1.0

    for entry, (x, y) in zip(record["points"], POINTS):
        knockout = knockout_curve(loaded.model, inspected, (x, y), max_k=12, draws=3)
        assert entry["cell"] == list(knockout.cell)
        assert entry["verdict"] == knockout.verdict
        for name in ("top", "random", "least"):
            assert entry[f"auc_{name}"] == pytest.approx(knockout.auc[name], abs=1e-6)
            assert entry["drops"][name] == pytest.approx(knockout.drops[name].tolist(), abs=1e-6)
        assert entry["ks"] == list(range(1, 13))


def test_json_flag_prints_the_record_of_measure_query(image, checkpoint):
    result = run("measures", image, "--point", "40,30", "--max-k", "4", "--draws", "2", "--json",
                 "--checkpoint", checkpoint, "--device", "cpu")
    assert result.exit_code == 0, result.output + result.stderr
    printed = json.loads(result.stdout)                 # stdout is the JSON alone, strictly valid
    loaded = danet.load(checkpoint, device="cpu")
    report = measure_query(loaded, read_query(image, ["40,30"]), max_k=4, draws=2)
    expected = report.record()
    assert printed.keys() == expected.keys()
    assert printed["labels"] is None and len(printed["points"]) == 1
    for section in ("specificity", "contribution", "cam"):
        for key, value in expected[section].items():
            if isinstance(value, float):
                assert printed[section][key] == pytest.approx(value, rel=1e-5), (section, key)
    assert printed["sentences"] == report.sentences()


def test_write_measures_without_points_and_nan_as_null(tmp_path, image, checkpoint):
    """No --point: the image-level measures only; every number in the record is finite or null."""
    loaded = danet.load(checkpoint, device="cpu")
    report = measure_query(loaded, read_query(image, [], need_points=False))
    record = write_measures(report, tmp_path / "m")
    assert record["points"] == [] and record["files"] == ["sinks.png", "pam_contribution.png"]
    text = (tmp_path / "m" / "measures.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in measures.json"))


# ---- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, fragment", [
    (["--point", "500,10"], "outside"),
    (["--point", "1;2"], "X,Y"),
    (["--labels", "{missing}"], "does not exist"),
    (["--labels", "{wrong_size}"], "label map must cover"),
    (["--labels", "{all_void}"], "void"),
    (["--out", "{a_file}"], "not a folder"),
])
def test_measures_bad_input_is_one_error_line(tmp_path, image, checkpoint, extra, fragment):
    paths = {"missing": tmp_path / "nope.png",
             "wrong_size": write_labels(tmp_path / "labels.png", 50, 50),
             "all_void": write_labels(tmp_path / "void.png", void=255),
             "a_file": write_image(tmp_path / "occupied.png")}
    extra = [e.format(**paths) for e in extra]
    result = run("measures", image, *extra, "--checkpoint", checkpoint, "--device", "cpu")
    assert_one_line_error(result, fragment)


def test_measures_unreadable_image_and_bad_checkpoint(tmp_path, checkpoint):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert_one_line_error(run("measures", broken, "--checkpoint", checkpoint), "broken.png")
    assert_one_line_error(run("measures", tmp_path / "absent.png", "--checkpoint", checkpoint), "does not exist")
    image = write_image(tmp_path / "ok.png")
    assert_one_line_error(run("measures", image, "--checkpoint", tmp_path / "none.safetensors"), "does not exist")


# ---- attention-stats reports the new measures --------------------------------------------------------
def make_dataset(root, count=3):
    (root / "val").mkdir(parents=True)
    (root / "valannot").mkdir()
    for i in range(count):
        write_image(root / "val" / f"f{i}.png", seed=i)
        label = np.asarray(Image.open(write_labels(root / "valannot" / f"f{i}.png"))).copy()
        label[:, :12] = 11
        Image.fromarray(label).save(root / "valannot" / f"f{i}.png")
    return root


def number(text):
    return float(text) if text != "" else math.nan


@pytest.mark.slow
def test_attention_stats_reports_lift_specificity_contribution_and_changed_pixels(tmp_path, checkpoint):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "stats"
    result = run("attention-stats", "--data", data, "--out", out, "--points-per-image", "6", "--ignore-index", "11",
                 "--checkpoint", checkpoint, "--device", "cpu")
    assert result.exit_code == 0, result.output + result.stderr
    for heading in ("lift", "JS bits", "mean-row share", "PAM contrib", "changed px %"):
        assert heading in result.stdout, heading
    assert "PAM changes the features by" in result.stdout and "effective channels" in result.stdout

    table = read_csv(out / "attention_stats.csv")
    assert table[-1]["class"] == "all"
    for row in table:
        mass, chance, lift = (number(row[c]) for c in ("same_class_mass_gt", "chance_gt", "lift_gt"))
        assert lift == pytest.approx(mass / chance, rel=1e-4)
        assert number(row["lift_gt_median"]) >= 0
        assert 0.0 <= number(row["js_from_mean"]) <= 1.0
        assert 0.0 <= number(row["mean_row_share"]) <= 1.0
        assert 0.0 < number(row["pam_contribution"]) < 10.0

    # A query's PAM contribution is the library's contribution map at its cell.
    queries = read_csv(out / "queries.csv")
    loaded = danet.load(checkpoint, device="cpu")
    first = queries[0]
    picture = np.asarray(Image.open(data / "val" / first["image"]).convert("RGB"))
    pam_map = contribution(inspect_image(loaded.model, picture, loaded.meta.mean, loaded.meta.std)).pam
    assert number(first["pam_contribution"]) == pytest.approx(float(pam_map[int(first["row"]), int(first["col"])]),
                                                              rel=1e-4)

    ablation = read_csv(out / "ablation.csv")
    changed = [number(row["changed_fraction_fused"]) for row in ablation]
    assert changed[0] == 0.0 and all(0.0 <= c <= 1.0 for c in changed)
    images = read_csv(out / "images.csv")
    assert len(images) == 3 and list(images[0]) == list(IMAGE_COLUMNS)
    for row in images:
        assert number(row["cam_effective_channels_mean"]) >= 1.0
        assert 0.0 <= number(row["changed_both_off"]) <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert "images.csv" in summary["files"] and len(summary["per_image"]) == 3
    assert summary["overall"]["js_mean"] == pytest.approx(np.mean([number(r["js_mean"]) for r in images]), rel=1e-4)
    assert Image.open(out / "attention_stats.png").size[1] > 1000
