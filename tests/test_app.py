"""The Streamlit app through ``streamlit.testing.v1.AppTest``: selection, points, caching, pages,
bad input.

``app.py`` is an ``st.navigation`` entrypoint: ``at.switch_page("app_pages/<page>.py")`` picks a
page as the navigation menu would. Clicks are simulated by writing ``session_state["points"]``
(what the view's pin trigger does; its logic, ``danet_app.state.apply_click``, is tested in
test_app_state.py); the real click path is covered by test_browser.py.
"""
from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import make_tiny_model, save_tiny
from danet.weights import default_card, default_weights_path
from danet_app import sidebar
from danet_app.state import FORWARDS
from helpers_app import SAMPLES, errors, png, point_cards, rendered, small_image, texts, with_tiny_model

pytestmark = pytest.mark.app              # slow ones (several forwards, big inputs) are marked slow too

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
INSPECTOR, CHANNELS, MODEL = "app_pages/inspector.py", "app_pages/channels.py", "app_pages/model.py"
TIMEOUT = 180          # a forward on a busy 2-core CPU


@pytest.fixture
def fresh_caches():
    """Empty the app's caches (shared by every AppTest in this process) for forward counting."""
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_camvid_checkpoint) -> bytes:
    """The shared tiny CamVid DANet (conftest) as upload bytes."""
    return tiny_camvid_checkpoint.read_bytes()


@pytest.mark.slow
def test_default_model_on_a_sample(fresh_caches):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert errors(at) == []
    assert at.title[0].value == "DANet inspector"
    caption = rendered(at.caption[0].value)
    assert SAMPLES[0].name in caption and "forward" in caption and ("cpu" in caption or "cuda" in caption)
    assert "(just now)" in caption                # fresh caches: this run did the forward
    assert len(at.metric) == 3                     # sample ground truth: mIoU of fused, PAM, CAM
    assert any("mobilenetv2_100" in c for c in texts(at.sidebar.caption))
    (verdict,) = [c for c in texts(at.caption) if "typical query" in c]     # the verdict next to the map
    assert "-1.08 val mIoU (model card)" in verdict and "on Building" in verdict
    at.run()
    assert "(cached)" in at.caption[0].value
    # the model's identity is the sha256 of the shipped file's bytes (was a size+mtime stamp)
    digest = hashlib.sha256(default_weights_path().read_bytes()).hexdigest()
    selection = at.session_state["selection"]
    assert selection.is_default and selection.model_sha256 == digest
    assert selection.model_id == f"sha256:{digest}" and selection.result_key.startswith(selection.model_id)


def test_model_page_reads_the_shipped_card_and_describe():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page(MODEL).run()
    assert not at.exception and errors(at) == []
    assert at.title[0].value == "Model details"
    card = default_card()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["val mIoU"] == f"{card.metrics['val_miou']:.2f} %"
    assert metrics["val pixel accuracy"] == f"{card.metrics['val_pixel_accuracy']:.2f} %"
    facts = at.dataframe[0].value["value"]
    assert facts["source"].startswith("embedded default") and facts["backbone"] == card.backbone
    assert facts["head channels (C)"] == str(card.head_channels)
    assert facts["weights sha256"] == hashlib.sha256(default_weights_path().read_bytes()).hexdigest()
    assert "stem" not in facts.index                       # MobileNetV2 has no ResNet stem
    assert any(card.licence in m for m in texts(at.markdown))


def test_sidebar_names_no_stem_for_a_timm_backbone(tiny_checkpoint):
    # bug: the sidebar said "stem 7x7" for MobileNetV2
    at = with_tiny_model(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), tiny_checkpoint)
    summary = " ".join(texts(at.sidebar.caption))
    assert "mobilenetv2_100" in summary and "output stride 8" in summary
    assert "stem" not in summary and "7x7" not in summary


@pytest.mark.slow
def test_clicks_sliders_and_pages_never_rerun_the_network(tiny_checkpoint):
    at = with_tiny_model(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), tiny_checkpoint, small_image())
    start = FORWARDS.total
    assert errors(at) == [] and not at.exception
    digest = hashlib.sha256(tiny_checkpoint).hexdigest()             # the upload's identity: its bytes
    assert at.session_state["selection"].model_sha256 == digest
    assert not at.session_state["selection"].is_default
    at.session_state["points"] = [(10, 10), (120, 90)]
    at.run()
    cards = point_cards(at)
    assert len(cards) == 2 and cards[0] != cards[1]
    assert "(10, 10)" in cards[0] and "(120, 90)" in cards[1]
    at.slider(key="mask_opacity").set_value(0.9).run()
    at.slider(key="attention_opacity").set_value(0.3).run()
    at.radio(key="attention_mode").set_value("nearest").run()
    at.selectbox(key="attention_display").set_value("specific").run()
    at.radio(key="attention_view_kind").set_value("column").run()
    at.selectbox(key="attention_cmap").set_value("viridis").run()
    at.session_state["points"] = at.session_state["points"] + [(60, 40)]
    at.run()
    assert len(point_cards(at)) == 3
    at.switch_page(CHANNELS).run()
    assert not at.exception and errors(at) == []
    assert at.title[0].value == "Channel attention (CAM)" and point_cards(at) == []
    at.toggle(key="cam_cluster").set_value(True).run()
    at.number_input(key="cam_channel").set_value(7).run()
    assert not at.exception
    at.switch_page(MODEL).run()
    assert not at.exception and any(m.value == "12.50 %" for m in at.metric)
    assert at.sidebar.file_uploader(key="checkpoint_upload").value is not None   # the sidebar is kept
    at.switch_page(INSPECTOR).run()
    assert len(point_cards(at)) == 3                                   # points survive page changes
    assert at.slider(key="mask_opacity").value == 0.9                  # and so do the controls
    assert at.radio(key="attention_mode").value == "nearest"
    assert at.selectbox(key="attention_display").value == "specific"
    at.switch_page(CHANNELS).run()
    assert at.toggle(key="cam_cluster").value is True and at.number_input(key="cam_channel").value == 7
    assert FORWARDS.total - start == 0                                 # the one forward was before `start`
    assert "forward passes" in " ".join(m.value for m in at.sidebar.markdown)


@pytest.mark.slow
def test_one_forward_per_image_and_model(tiny_checkpoint, fresh_caches):
    before = FORWARDS.total
    at = with_tiny_model(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), tiny_checkpoint, small_image())
    # (default, sample), then (tiny, sample), then (tiny, crop)
    expected = 3
    assert FORWARDS.total - before == expected
    for _ in range(3):
        at.run()
    assert FORWARDS.total - before == expected
    other = AppTest.from_file(APP, default_timeout=TIMEOUT)           # a second session, same inputs
    with_tiny_model(other.run(), tiny_checkpoint, small_image())
    assert FORWARDS.total - before == expected                        # served from the shared cache
    flipped = small_image()[:, ::-1].copy()                            # a new image: one more forward
    other.sidebar.file_uploader(key="image_upload").set_value(("flip.png", png(flipped), "image/png")).run()
    assert FORWARDS.total - before == expected + 1


def test_points_are_per_session_and_per_image(tiny_checkpoint):
    first = with_tiny_model(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), tiny_checkpoint, small_image())
    second = with_tiny_model(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), tiny_checkpoint, small_image())
    first.session_state["points"] = [(5, 5), (50, 50)]
    first.run()
    second.session_state["points"] = [(100, 80)]
    second.run()
    assert len(point_cards(first)) == 2 and len(point_cards(second)) == 1
    assert "(100, 80)" in point_cards(second)[0]
    # a new image starts without points; going back to the first image brings its points back
    first.sidebar.file_uploader(key="image_upload").set_value(
        ("other.png", png(small_image()[::-1].copy()), "image/png")).run()
    assert point_cards(first) == [] and first.session_state["points"] == []
    first.sidebar.file_uploader(key="image_upload").set_value(("crop.png", png(small_image()), "image/png")).run()
    assert first.session_state["points"] == [(5, 5), (50, 50)] and len(point_cards(first)) == 2
    assert first.query_params["points"] == "5,5;50,50"                # shareable: the points are in the URL


def test_remove_and_clear_points(tiny_checkpoint):
    at = with_tiny_model(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), tiny_checkpoint, small_image())
    at.session_state["points"] = [(5, 5), (50, 50), (100, 80)]
    at.run()
    at.button(key="remove_50_50").click().run()
    assert at.session_state["points"] == [(5, 5), (100, 80)]
    at.button(key="clear_points").click().run()
    assert at.session_state["points"] == [] and point_cards(at) == []


@pytest.mark.parametrize("name, data", [
    ("notes.png", b"this is a text file, not a picture"),
    ("truncated.png", png(np.zeros((64, 64, 3), np.uint8))[:60]),
    ("empty.jpg", b""),
], ids=["text", "truncated", "empty"])
def test_bad_image_uploads_show_an_error(tiny_checkpoint, name, data):
    at = with_tiny_model(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), tiny_checkpoint)
    at.sidebar.radio(key="image_source").set_value("Upload an image").run()
    at.sidebar.file_uploader(key="image_upload").set_value((name, data, "image/png")).run()
    assert not at.exception
    messages = errors(at)
    assert any(f"Could not use `{name}`" in m for m in messages), messages
    assert [rendered(e.value) for e in at.main.error] == messages and not at.sidebar.error   # in the main area
    assert at.title[0].value == "DANet inspector"                     # the page still renders
    assert not any("Choose a model and an image" in i.value for i in at.info)       # the reason is shown instead


def test_the_image_uploader_takes_every_format_its_refusal_names(tiny_checkpoint):
    """A text file named .png is refused by the decoder, whose message lists the formats it reads:
    the uploader accepts exactly those (it refused GIF and TIFF while the message offered them)."""
    at = with_tiny_model(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), tiny_checkpoint)
    at.sidebar.radio(key="image_source").set_value("Upload an image").run()
    at.sidebar.file_uploader(key="image_upload").set_value(("notes.png", b"just some text\n" * 20, "image/png")).run()
    (message,) = errors(at)
    named = re.search(r"supported formats: ([A-Z, ]+)", message).group(1).split(", ")
    accepted = {suffix.lstrip(".").upper() for suffix in sidebar.IMAGE_TYPES} | {"JPEG"}
    assert set(named) <= accepted and {"GIF", "TIFF"} <= set(named), (named, accepted)
    label = at.sidebar.file_uploader(key="image_upload").label
    assert all(name.lower() in label.lower() for name in ("PNG", "JPEG", "GIF", "WebP", "BMP", "TIFF")), label


@pytest.mark.parametrize("name, data, expected", [
    ("random.pth", bytes(range(256)) * 40, "Could not load `random.pth`"),
    ("empty.safetensors", b"", "Could not load `empty.safetensors`"),
], ids=["random-bytes", "empty"])
def test_bad_checkpoint_uploads_show_an_error(name, data, expected):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.sidebar.radio(key="model_source").set_value("Upload a checkpoint").run()
    at.sidebar.file_uploader(key="checkpoint_upload").set_value((name, data, "application/octet-stream")).run()
    assert not at.exception
    assert any(expected in m for m in errors(at)), errors(at)
    at.run()                                                            # rerun: same message, no crash
    assert any(expected in m for m in errors(at))


def test_checkpoint_of_another_network_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "resnet_classifier.safetensors"
    save_file({"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}, str(path))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.sidebar.radio(key="model_source").set_value("Upload a checkpoint").run()
    at.sidebar.file_uploader(key="checkpoint_upload").set_value(
        (path.name, path.read_bytes(), "application/octet-stream")).run()
    assert not at.exception
    assert any("Could not load" in m for m in errors(at))


def test_label_map_upload_checked(tiny_checkpoint):
    image = small_image()
    at = with_tiny_model(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), tiny_checkpoint, image)
    wrong = np.zeros((50, 50), np.uint8)
    at.sidebar.file_uploader(key="label_upload").set_value(("wrong.png", png(wrong), "image/png")).run()
    assert not at.exception
    assert any("Label map not used" in m and "50x50" in m for m in errors(at))
    assert len(at.metric) == 0

    labels = np.full(image.shape[:2], 3, np.uint8)            # all road ...
    labels[:10] = 200                                           # ... with 1280 pixels of an unknown id
    at.sidebar.file_uploader(key="label_upload").set_value(("labels.png", png(labels), "image/png")).run()
    assert not at.exception and errors(at) == []
    assert any("outside 0..10" in i for i in texts(at.main.info)) and not at.sidebar.info
    assert len(at.metric) == 3 and at.dataframe


@pytest.mark.slow
def test_large_image_is_downscaled_with_a_notice(tiny_checkpoint):
    big = np.asarray(Image.fromarray(small_image()).resize((1600, 1200)))
    at = with_tiny_model(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), tiny_checkpoint)
    at.sidebar.number_input(key="max_mp").set_value(0.1).run()
    at.sidebar.radio(key="image_source").set_value("Upload an image").run()
    at.sidebar.file_uploader(key="image_upload").set_value(("big.png", png(big), "image/png")).run()
    assert not at.exception and errors(at) == []
    assert any("downscaled from 1600x1200" in i for i in texts(at.main.info)) and not at.sidebar.info
    assert "(365x273)" in at.caption[0].value or "(365x274)" in at.caption[0].value


@pytest.mark.slow
def test_official_layout_upload_shows_layout_and_takes_the_sidebar_choices():
    from helpers_checkpoints import foreign_state, make_model, wrap

    model = make_model("official", backbone="resnet18", num_classes=19, head_channels=32)
    buffer = io.BytesIO()
    torch.save(wrap(foreign_state(model, "official"), "official"), buffer)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.sidebar.radio(key="image_source").set_value("Upload an image").run()
    at.sidebar.file_uploader(key="image_upload").set_value(("crop.png", png(small_image()), "image/png")).run()
    at.sidebar.radio(key="model_source").set_value("Upload a checkpoint").run()
    at.sidebar.file_uploader(key="checkpoint_upload").set_value(
        ("DANet18.pth.tar", buffer.getvalue(), "application/octet-stream")).run()
    assert not at.exception and errors(at) == []
    summary = " ".join(texts(at.sidebar.caption))
    assert "layout **official**" in summary and "resnet18" in summary and "multi-grid" in summary
    # 19 classes and no labels in the file: the dataset is a guess, and the caption says so
    assert "dataset **cityscapes** (guessed from the class count (19))" in summary
    at.switch_page(MODEL).run()
    assert at.dataframe[0].value["value"]["dataset"] == "cityscapes (guessed from the class count (19))"
    at.switch_page(INSPECTOR).run()
    at.sidebar.selectbox(key="dilation").set_value("2-4-4").run()        # what the file cannot tell
    at.sidebar.selectbox(key="dataset_choice").set_value("cityscapes").run()
    assert not at.exception and errors(at) == []
    summary = " ".join(texts(at.sidebar.caption))
    assert "multi-grid" not in summary and "dataset **cityscapes** ·" in summary and "guessed" not in summary
    assert "stem deep" in summary or "stem 7x7" in summary                # a ResNet does have a stem
    at.switch_page(MODEL).run()
    assert not at.exception
    facts = at.dataframe[0].value["value"]
    assert "DANet18.pth.tar" in facts["source"] and facts["dilation"] == "2-4-4"
    assert facts["stem"] in ("7x7", "deep32", "deep64")


def test_sample_ground_truth_only_scores_models_of_its_dataset(tmp_path):
    path = save_tiny(make_tiny_model(5), tmp_path / "five.safetensors", dtype=torch.float16)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.sidebar.radio(key="model_source").set_value("Upload a checkpoint").run()
    at.sidebar.file_uploader(key="checkpoint_upload").set_value(
        (path.name, path.read_bytes(), "application/octet-stream")).run()
    assert not at.exception and errors(at) == []
    assert any("not scored" in i for i in texts(at.main.info))
    assert len(at.metric) == 0 and at.title[0].value == "DANet inspector"


@pytest.mark.parametrize("page, title", [(INSPECTOR, "DANet inspector"), (CHANNELS, "Channel attention"),
                                         (MODEL, "Model details")])
def test_every_page_says_what_is_missing_without_a_model(page, title):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["model_source"] = "Upload a checkpoint"          # and no file: no selection
    at.run()
    at.switch_page(page).run()
    assert not at.exception and errors(at) == []
    assert at.title[0].value == title and at.session_state["selection"] is None
    assert any("Choose a model and an image" in i.value for i in at.info)
    assert any("Upload a checkpoint to inspect it" in i.value for i in at.sidebar.info)


@pytest.mark.slow
def test_a_ccnet_checkpoint_is_inspected_on_every_page(tmp_path):
    """Another head than DANet's (CCNet: one output, three criss-cross maps, no CAM): the inspector
    draws its default map, the measures a head cannot support say why, nothing raises."""
    from danet.models import create_model

    torch.manual_seed(0)
    model = create_model(num_classes=11, backbone="resnet18", head="cc",
                         head_options={"channels": 16, "key_channels": 4}).eval()
    checkpoint = save_tiny(model, tmp_path / "cc.safetensors").read_bytes()
    at = with_tiny_model(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), checkpoint, small_image())
    assert not at.exception and errors(at) == []
    result = at.session_state["selection"].result
    assert result.head == "cc" and list(result.maps) == ["loop1", "loop2", "composed"]
    assert "cc gain" in rendered(at.caption[0].value)
    at.session_state["points"] = [(10, 10)]
    at.run()
    assert not at.exception and len(point_cards(at)) == 1
    loop1 = point_cards(at)[0]
    at.selectbox(key="attention_map_name").set_value("composed").run()         # the two loops composed
    assert not at.exception and len(point_cards(at)) == 1 and point_cards(at)[0] != loop1
    at.switch_page(CHANNELS).run()
    assert not at.exception and any("no channel attention" in i.value for i in at.info)
    at.switch_page("app_pages/measures.py").run()
    assert not at.exception and any("defined for DANet's PAM and CAM" in i.value for i in at.info)
