"""The command line through ``typer``'s ``CliRunner``: invoking ``danet``, the one-error-line
contract, the small sky-over-road test image and reading the CSVs the commands write. Shared by
test_cli.py, test_cli_measures.py and test_hostile_cli.py.
"""
from __future__ import annotations

import csv

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from danet.cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}      # no wrapping of help texts and tables


def invoke(*args, env=None):
    """``danet *args`` in this process (arguments made strings)."""
    return runner.invoke(app, [str(a) for a in args], env=env)


def assert_one_line_error(result, *fragments) -> str:
    """Non-zero exit, and stderr ends with exactly one ``error: ...`` line naming the problem; returns it."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1, result.stderr
    assert "Traceback" not in result.output + result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def write_image(path, height=64, width=96, seed=0):
    """Sky-blue over road-grey halves with seeded noise, saved at ``path``."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = (70, 130, 200)
    image[height // 2:] = (90, 90, 90)
    image = np.clip(image + rng.integers(-25, 25, image.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path)
    return path


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
