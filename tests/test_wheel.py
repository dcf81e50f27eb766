"""A non-editable install works away from the repository: the wheel carries the default weights,
and ``danet info`` run from another folder prints the model card."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from danet.weights import DEFAULT_NAME, default_card

REPO = Path(__file__).resolve().parent.parent
# What the build reads; tests, runs and caches stay behind (and the checkout is never written to).
NOT_BUILT = shutil.ignore_patterns(".git", ".ci", "tests", "runs", "build", "dist", "*.egg-info", "__pycache__",
                                   ".pytest_cache", ".hypothesis", "test-artifacts", ".venv")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --no-deps --target`` of a wheel built from a copy of the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(REPO, source, ignore=NOT_BUILT)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
        str(source), cwd=tmp)
    wheels = list((tmp / "dist").glob("danet_lens-*.whl"))
    assert len(wheels) == 1, wheels
    run(sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp / "site"), str(wheels[0]),
        cwd=tmp)
    return tmp / "site"


def env_for(site: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(site))             # ahead of the editable install's finder
    env.pop("DANET_CAMVID", None)
    return env


def test_the_wheel_carries_the_default_weights(installed):
    weights = installed / "danet" / "weights" / f"{DEFAULT_NAME}.safetensors"
    assert weights.is_file()
    assert weights.stat().st_size == default_card().size_bytes
    probe = ("import json, danet, danet.weights; print(json.dumps([danet.__file__, "
             "str(danet.weights.default_weights_path())]))")
    found = json.loads(run(sys.executable, "-c", probe, cwd=installed.parent, env=env_for(installed)).stdout)
    assert Path(found[0]).is_relative_to(installed), f"imported the checkout, not the wheel: {found[0]}"
    assert Path(found[1]) == weights


def test_danet_info_from_another_folder_prints_the_card(installed):
    done = run(sys.executable, "-c", "from danet.cli import main; main()", "info", cwd=installed.parent,
               env=env_for(installed))
    card = default_card()
    assert str(card.metrics["val_miou"]) in done.stdout, done.stdout
    assert card.backbone in done.stdout
