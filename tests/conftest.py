"""Shared test fixtures: one tiny DANet and its checkpoint file, made once per session, and
the helpers that make more (``make_tiny_model``, ``save_tiny``, ``make_camvid_like``); for the
browser tests a real app server (``app_server``) and a headless chromium (``browser``).

Markers (``pyproject.toml``): slow, app, browser, fuzz, camvid. The fast lane is
``pytest -m "not slow"``; CI runs everything.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))   # tests/helpers_*.py

from danet.checkpoints import ModelMeta, save_model        # noqa: E402
from danet.data.palettes import CAMVID, DatasetInfo, generic_dataset  # noqa: E402
from danet.models import DANet, create_model               # noqa: E402
from danet_app import warmup                                # noqa: E402  (stdlib only)
from helpers_browser import launch_chromium, streamlit_server  # noqa: E402

# AppTest runs app.py in this process, where the app's background warm-up (the default model and a
# forward) would race the tests' own loads and forward counts. The servers the browser tests start
# are processes of their own and warm up as a user's do.
warmup.disable()

REPO = Path(__file__).resolve().parent.parent

# The test models are tiny: one intra-op thread runs them as fast as several and, on a shared
# two-core CI machine, avoids spin-waiting threads that made single forwards 10-30x slower.
# DANET_TEST_THREADS overrides (e.g. to test with the machine's default).
torch.set_num_threads(int(os.environ.get("DANET_TEST_THREADS", "1")))


def make_tiny_model(num_classes: int = 5, *, backbone: str = "mobilenetv2_100", head_channels: int = 16,
                    alpha: float = 0.5, beta: float = 0.5, seed: int = 0, **config) -> DANet:
    """A small random DANet in eval mode with both attention modules switched on."""
    torch.manual_seed(seed)
    model = create_model(backbone=backbone, num_classes=num_classes, head_channels=head_channels, **config).eval()
    with torch.no_grad():
        model.head.pam.alpha.fill_(alpha)
        model.head.cam.beta.fill_(beta)
    return model


def save_tiny(model: DANet, path: Path, dataset: DatasetInfo | None = None, dtype=None, **extra) -> Path:
    """``model`` as our .safetensors (with metadata) at ``path``."""
    dataset = dataset or (CAMVID if model.config.num_classes == 11 else generic_dataset(model.config.num_classes))
    save_model(model, ModelMeta(config=model.config, dataset=dataset, extra=extra), path, dtype=dtype)
    return path


def make_camvid_like(root: Path, n_train: int = 4, n_val: int = 2, size=(48, 64)) -> Path:
    """A tiny dataset in CamVid's folder layout: class 0 (sky-grey) on top, class 3 (road-purple)
    below, a void (11) border on the left; enough for training and evaluation to run."""
    rng = np.random.default_rng(0)
    h, w = size
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            cut = int(h * rng.uniform(0.3, 0.7))
            label = np.full((h, w), 3, np.uint8)
            label[:cut] = 0
            label[:, :2] = 11
            image = np.where(label[..., None] == 0, [200, 200, 210], [120, 60, 130]).astype(np.uint8)
            image = np.clip(image + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / split / f"f{i}.png")
            Image.fromarray(label).save(root / f"{split}annot" / f"f{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_camvid_model() -> DANet:
    """11 CamVid classes, MobileNetV2 + 16-channel head, alpha = beta = 0.5."""
    return make_tiny_model(11)


@pytest.fixture(scope="session")
def tiny_camvid_checkpoint(tiny_camvid_model, tmp_path_factory) -> Path:
    """``tiny_camvid_model`` as fp16 .safetensors (with a made-up val_miou in its card)."""
    return save_tiny(tiny_camvid_model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors",
                     dtype=torch.float16, val_miou=12.5)


@pytest.fixture(scope="session")
def camvid_root() -> Path | None:
    """The CamVid folder, or None (tests that need it skip with the reason)."""
    for candidate in (os.environ.get("DANET_CAMVID"), REPO.parent / "shared" / "data" / "camvid"):
        if candidate and (Path(candidate) / "val").is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def camvid(camvid_root) -> Path:
    if camvid_root is None:
        pytest.skip("CamVid not found at ../shared/data/camvid or $DANET_CAMVID")
    return camvid_root


@pytest.fixture(scope="module")
def app_server(request):
    """A fresh ``streamlit run app.py`` per test module (fresh caches, forward counter 0): its URL.
    Logs to ``test-artifacts/streamlit-<module>.log``; killed by its PID after."""
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with streamlit_server(artifacts / f"streamlit-{request.module.__name__}.log") as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium through Playwright (``helpers_browser``), one per test module."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser test needs the playwright package")
    with sync_api.sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()
