"""Checkpoint loading: every public layout, the safety rules, conversion and the CLI."""
from __future__ import annotations

import dataclasses
import json
import pickle
import struct

import pytest
import torch
from typer.testing import CliRunner

from danet.checkpoints import CheckpointError, convert, describe, load_model
from danet.data.palettes import CITYSCAPES, DatasetInfo
from conftest import make_tiny_model
from helpers_checkpoints import foreign_state, make_model, outputs, randomize, wrap

FOREIGN = ("official", "mmseg", "tramac", "blog")


@pytest.fixture(scope="module")
def models():
    """One random-weight network per layout, shaped as that layout's code builds it."""
    return {layout: make_model(layout, seed=i) for i, layout in enumerate(FOREIGN + ("danet-lens",))}


def save(obj, path):
    torch.save(obj, path)
    return path


def assert_same_outputs(expected, loaded, size=(64, 64)):
    for want, got in zip(outputs(expected, size), outputs(loaded, size)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# ---- every layout loads and gives the original outputs ----------------------------------
@pytest.mark.parametrize("layout", FOREIGN)
def test_each_layout_loads_to_the_same_network(models, layout, tmp_path):
    model = models[layout]
    path = save(wrap(foreign_state(model, layout), layout), tmp_path / f"{layout}.pth")
    loaded = load_model(path)
    assert loaded.meta.layout == layout
    assert not loaded.model.training
    got, want = loaded.model.config, model.config
    assert (got.backbone, got.stem, got.num_classes, got.output_stride, got.multi_grid, got.align_corners) == \
        (want.backbone, want.stem, want.num_classes, want.output_stride, want.multi_grid, want.align_corners)
    assert loaded.model.head.pam.alpha.item() == pytest.approx(0.7)
    assert loaded.model.head.cam.beta.item() == pytest.approx(0.3)
    assert loaded.warnings == []
    assert_same_outputs(model, loaded.model)


def test_official_layout_with_module_prefix(models, tmp_path):
    model = models["official"]
    path = save(wrap(foreign_state(model, "official"), "official", module_prefix=True), tmp_path / "DANet101.pth.tar")
    loaded = load_model(path)
    assert loaded.meta.layout == "official"
    assert "module." in loaded.meta.extra["wrapper"]
    assert loaded.meta.config.multi_grid and loaded.meta.config.align_corners
    assert_same_outputs(model, loaded.model)


@pytest.mark.slow
def test_mmseg_resnet50_bottleneck_with_meta_classes(tmp_path):
    """R-50 (Bottleneck, downsample) with 0-d gammas, an aux head and CLASSES/PALETTE in meta."""
    model = make_model("mmseg", backbone="resnet50", num_classes=19, head_channels=16)
    meta = {"mmseg_version": "0.5.0", "CLASSES": list(CITYSCAPES.classes), "PALETTE": [list(c) for c in CITYSCAPES.palette],
            "config": "norm_cfg = dict(type='SyncBN')\nmodel = dict(decode_head=dict(align_corners=True), "
                      "auxiliary_head=dict(align_corners=True))"}
    state = foreign_state(model, "mmseg")
    assert state["decode_head.pam.gamma.scale"].dim() == 0
    path = save(wrap(state, "mmseg", meta=meta), tmp_path / "danet_r50-d8_769x769_40k_cityscapes.pth")
    loaded = load_model(path)
    assert loaded.meta.config.backbone == "resnet50" and loaded.meta.config.stem == "deep32"
    assert loaded.meta.dataset.name == "cityscapes"
    assert loaded.meta.extra["dataset_from"] == "checkpoint meta"
    assert loaded.meta.config.align_corners is True          # read from the 769x769 config text
    assert loaded.meta.extra["ignored_keys"] >= 7             # the auxiliary head + BN counters
    model.config = dataclasses.replace(model.config, align_corners=True)   # what the config text says
    assert_same_outputs(model, loaded.model, size=(48, 48))


def test_mmseg_meta_with_unknown_class_names(models, tmp_path):
    names = ["sky", "ground", "thing", "stuff", "water"]
    meta = {"CLASSES": names, "PALETTE": [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12], [13, 14, 15]]}
    path = save(wrap(foreign_state(models["mmseg"], "mmseg"), "mmseg", meta=meta), tmp_path / "m.pth")
    loaded = load_model(path)
    assert loaded.meta.classes == tuple(names)
    assert loaded.meta.palette[4].tolist() == [13, 14, 15]
    assert loaded.meta.config.align_corners is False


def test_tramac_without_aux_classifiers_warns_and_keeps_fused_output(models, tmp_path):
    model = models["tramac"]
    state = {k: v for k, v in foreign_state(model, "tramac").items()
             if not k.startswith(("head.conv_p3.", "head.conv_c3."))}
    loaded = load_model(save(state, tmp_path / "danet_resnet101_citys.pth"))
    assert any("no PAM-only and CAM-only classifiers" in w for w in loaded.warnings)
    fused, pam, cam = outputs(loaded.model)
    torch.testing.assert_close(fused, outputs(model)[0], rtol=0, atol=1e-6)
    assert pam.abs().max() == 0 and cam.abs().max() == 0


def test_our_own_layout_in_a_training_checkpoint(models, tmp_path):
    model = models["danet-lens"]
    path = save({"model": model.state_dict(), "optimizer": {}, "step": 3, "best": "{}"}, tmp_path / "last.pt")
    loaded = load_model(path)
    assert loaded.meta.layout == "danet-lens"
    assert_same_outputs(model, loaded.model)


@pytest.mark.slow
def test_our_timm_layout_finds_the_backbone(tmp_path):
    model = randomize(make_tiny_model(11, align_corners=False))     # a training run's bare last.pt
    loaded = load_model(save({"model": model.state_dict()}, tmp_path / "last.pt"))
    assert loaded.meta.config.backbone == "mobilenetv2_100"
    assert loaded.meta.dataset.name == "camvid"
    assert_same_outputs(model, loaded.model)


def test_bytes_source_and_safetensors_without_our_metadata(models, tmp_path):
    from safetensors.torch import save_file

    model = models["blog"]
    state = {k: v.contiguous() for k, v in foreign_state(model, "blog").items()}
    save_file(state, str(tmp_path / "blog.safetensors"))
    loaded = load_model((tmp_path / "blog.safetensors").read_bytes(), name="upload.safetensors")
    assert loaded.meta.layout == "blog" and loaded.meta.config.output_stride == 32
    assert_same_outputs(model, loaded.model)


# ---- options ---------------------------------------------------------------------------------
def test_dilation_and_align_corners_options(models, tmp_path):
    path = save(foreign_state(models["tramac"], "tramac"), tmp_path / "t.pth")
    loaded = load_model(path, dilation="multi-grid", align_corners=False)
    assert describe(loaded)["layer4_dilations"] == [4, 8]
    assert loaded.meta.config.align_corners is False
    assert load_model(path, dilation="os16").meta.config.output_stride == 16
    with pytest.raises(CheckpointError, match="unknown dilation"):
        load_model(path, dilation="3-3-3")


def test_dataset_option_and_class_count_mismatch(models, tmp_path):
    path = save(foreign_state(models["tramac"], "tramac"), tmp_path / "t.pth")   # 5 classes
    custom = DatasetInfo("five", tuple("abcde"), ((0, 0, 0),) * 5)
    assert load_model(path, dataset=custom).meta.classes == tuple("abcde")
    with pytest.raises(CheckpointError, match="'cityscapes' has 19 classes.*predicts 5"):
        load_model(path, dataset="cityscapes")
    with pytest.raises(CheckpointError, match="unknown dataset"):
        load_model(path, dataset="kitti-ish")


def test_default_dataset_by_class_count(tmp_path):
    model = make_model("official", num_classes=19, head_channels=16)
    loaded = load_model(save(wrap(foreign_state(model, "official"), "official"), tmp_path / "c.pth"))
    assert loaded.meta.dataset.name == "cityscapes"


# ---- refusals ------------------------------------------------------------------------------
class CreatesFile:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(models, tmp_path):
    marker = tmp_path / "pwned.txt"
    payload = {"state_dict": foreign_state(models["tramac"], "tramac"), "hook": CreatesFile(marker)}
    path = save(payload, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not a plain tensor checkpoint.*run code") as info:
        load_model(path)
    assert "open" in str(info.value)
    assert not marker.exists()


def test_legacy_pickle_format_is_refused_too(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "old.pth"
    path.write_bytes(pickle.dumps({"x": CreatesFile(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match="refused"):
        load_model(path)
    assert not marker.exists()


def test_text_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="not a checkpoint: it looks like a text file"):
        load_model(path)


def test_truncated_pth(models, tmp_path):
    data = (save(foreign_state(models["tramac"], "tramac"), tmp_path / "full.pth")).read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(path)


def test_bad_safetensors_header(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 10 ** 12) + b"{not json")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(path)
    path.write_bytes(struct.pack("<Q", 9) + b"{not json" + b"\0" * 8)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(path)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model(tmp_path / "empty.pth")


def test_unknown_layout_names_its_keys(tmp_path):
    state = {"encoder.conv.weight": torch.zeros(4, 3, 3, 3), "decoder.cls.weight": torch.zeros(2, 4, 1, 1)}
    with pytest.raises(CheckpointError, match="no known layout") as info:
        load_model(save(state, tmp_path / "other.pth"))
    assert "encoder.conv.weight" in str(info.value) and "official" in str(info.value)


def test_non_dict_and_dict_without_tensors(tmp_path):
    with pytest.raises(CheckpointError, match="holds a list"):
        load_model(save([torch.zeros(1)], tmp_path / "list.pth"))
    with pytest.raises(CheckpointError, match="no weights found.*epoch"):
        load_model(save({"epoch": 3}, tmp_path / "empty.pth"))


def test_wrong_shape_names_layout_and_key(models, tmp_path):
    state = foreign_state(models["official"], "official")
    state["head.conv51.0.weight"] = torch.zeros(32, 32, 1, 1)
    with pytest.raises(CheckpointError, match=r"official layout detected.*wrong shape 1: head\.conv51\.0\.weight"):
        load_model(save(wrap(state, "official"), tmp_path / "w.pth"))


def test_missing_and_unexpected_keys_name_layout_and_keys(models, tmp_path):
    state = foreign_state(models["official"], "official")
    del state["pretrained.layer2.1.bn1.running_var"]
    with pytest.raises(CheckpointError, match=r"official layout.*missing 1: pretrained\.layer2\.1\.bn1\.running_var"):
        load_model(save(state, tmp_path / "m.pth"))
    state = foreign_state(models["official"], "official")
    state["head.conv5a.1.extra_buffer"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"official layout.*unexpected 1: head\.conv5a\.1\.extra_buffer"):
        load_model(save(state, tmp_path / "u.pth"))
    state = foreign_state(models["official"], "official")
    state["head.conv5a.2.weight"] = torch.zeros(3)
    state["head.conv9.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"official layout detected.*2 keys have no place in its da head or backbone: "
                                              r"head\.conv5a\.2\.weight, head\.conv9\.weight"):
        load_model(save(state, tmp_path / "x.pth"))


def test_nan_weights_load_with_a_warning(models, tmp_path):
    state = foreign_state(models["tramac"], "tramac")
    state["head.conv_p2.0.weight"][0, 0, 0, 0] = float("nan")
    state["pretrained.layer1.0.bn1.bias"][0] = float("inf")
    loaded = load_model(save(state, tmp_path / "n.pth"))
    assert len(loaded.warnings) == 1
    assert "2 weight tensors contain NaN or Inf" in loaded.warnings[0]
    assert "head.conv_p2.0.weight" in loaded.warnings[0]


# ---- conversion ------------------------------------------------------------------------------
def test_convert_round_trip_keeps_metadata_and_outputs(models, tmp_path):
    model = models["official"]
    src = save(wrap(foreign_state(model, "official"), "official"), tmp_path / "DANet.pth.tar")
    dst = tmp_path / "danet.safetensors"
    convert(src, dst, dataset=DatasetInfo("five", tuple("abcde"), ((1, 2, 3),) * 5))
    loaded = load_model(dst)
    meta = loaded.meta
    assert meta.layout == "official"
    assert meta.extra["container"] == "danet-lens safetensors" and meta.extra["source_file"] == "DANet.pth.tar"
    assert meta.classes == tuple("abcde") and meta.palette[0].tolist() == [1, 2, 3]
    assert (meta.config.backbone, meta.config.stem, meta.config.multi_grid, meta.config.align_corners) == \
        ("resnet18", "7x7", True, True)
    assert tuple(meta.mean) == pytest.approx((0.485, 0.456, 0.406))
    assert_same_outputs(model, loaded.model)


def test_convert_fp16_and_bad_destination(models, tmp_path):
    src = save(foreign_state(models["blog"], "blog"), tmp_path / "b.pth")
    convert(src, tmp_path / "half.safetensors", dtype="float16")
    half = load_model(tmp_path / "half.safetensors")
    assert half.model.head.pam.alpha.dtype == torch.float32
    assert half.meta.config.output_stride == 32
    for want, got in zip(outputs(models["blog"]), outputs(half.model)):
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
    with pytest.raises(CheckpointError, match=r"must end in \.safetensors"):
        convert(src, tmp_path / "out.pth")


# ---- CLI -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli():
    from danet.cli import app

    return app


def test_cli_convert_and_info(cli, models, tmp_path):
    runner = CliRunner()
    src = save(wrap(foreign_state(models["mmseg"], "mmseg"), "mmseg"), tmp_path / "m.pth")
    dst = tmp_path / "m.safetensors"
    result = runner.invoke(cli, ["convert", str(src), str(dst), "--dilation", "2-4-4", "--align-corners"])
    assert result.exit_code == 0, result.output
    assert "mmseg layout" in result.output and dst.exists()
    result = runner.invoke(cli, ["info", str(dst), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["layout"] == "mmseg" and summary["stem"] == "deep32"
    assert summary["align_corners"] is True and summary["layer4_dilations"] == [2, 4]
    assert summary["parameters"] == sum(p.numel() for p in models["mmseg"].parameters())
    text = runner.invoke(cli, ["info", str(src)]).output
    for expected in ("layout", "mmseg", "deep32", "output stride", "8", "parameters", "meta wrapper"):
        assert expected in text


def test_cli_bad_input_is_one_error_line(cli, tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.pth"
    bad.write_text("hello")
    for args in (["info", str(bad)], ["convert", str(bad), str(tmp_path / "o.safetensors")],
                 ["info", str(tmp_path / "missing.pth")]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert "Traceback" not in result.output


def test_cli_info_without_argument_shows_the_default_model(cli, models, tmp_path, monkeypatch):
    import danet.loader

    default = tmp_path / "default.safetensors"
    convert(save(foreign_state(models["tramac"], "tramac"), tmp_path / "t.pth"), default)
    monkeypatch.setattr(danet.loader, "default_weights_path", lambda: default)
    result = CliRunner().invoke(cli, ["info", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["layout"] == "tramac" and summary["source"] == "embedded default"
