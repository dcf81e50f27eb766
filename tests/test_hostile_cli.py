"""Hostile inputs and conditions for the commands that write files (issue 16, output side): every
case is built here and run through the command line; the outcome is one ``error:`` line and exit
code 1, or a correct result, and nothing is written outside ``--out``.

Covered: image names that would leave ``--out`` (``..``, ``.``, hidden, control characters,
over-long, reserved, colliding); symlinked per-image folders and files; a locked output folder
(in-process, stale, and two real concurrent runs); disk full and read-only (simulated, and on a
real tmpfs where this machine may mount one); killed runs (no completion record for an incomplete
result, leftovers cleaned, the rerun completes); resume keys (opacity, align-corners, dilation,
logits, version, old records); a very deep folder tree with a symlink loop; ``.gif``; float TIFFs
with NaN; ``convert``/``figure`` onto a folder; damaged frames in a dataset for ``evaluate``,
``train`` and ``attention-stats``.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_camvid_like, make_tiny_model, save_tiny  # noqa: E402

import danet  # noqa: E402
from danet.jobs import inputs  # noqa: E402
from danet.safety import outputs  # noqa: E402
from danet.data import camvid, images as image_module  # noqa: E402
from danet.jobs.predict import expected_files  # noqa: E402
from helpers_cli import assert_one_line_error  # noqa: E402
from helpers_cli import invoke as run  # noqa: E402

pytestmark = pytest.mark.fuzz
REPO = Path(__file__).resolve().parents[1]


def write_image(path: Path, height: int = 48, width: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    fmt = Image.registered_extensions()[path.suffix.lower()]
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny(make_tiny_model(5, alpha=0.7, beta=0.3), tmp_path_factory.mktemp("model") / "tiny.safetensors")


def predict(inputs, out, checkpoint, *extra):
    return run("predict", *([inputs] if not isinstance(inputs, list) else inputs), "--out", out,
               "--checkpoint", checkpoint, "--device", "cpu", *extra)


def complete_folders(out: Path) -> list[Path]:
    """Per-image folders holding a completion record; each must hold every output, readable."""
    done = []
    for record in out.glob("*/prediction.json"):
        folder = record.parent
        data = json.loads(record.read_text())
        for name in expected_files(bool(data.get("logits_dtype"))):
            assert (folder / name).is_file(), f"{folder.name} has a record but no {name}"
        for name in expected_files(False)[:-1]:
            with Image.open(folder / name) as picture:
                picture.load()                        # a truncated PNG would fail here
        done.append(folder)
    return done


def partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".partial" in p.name or p.name.endswith(".part")]


# ---- the write audit --------------------------------------------------------------------------
_AUDIT: dict = {"on": False, "writes": []}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _audit_hook(event, args):
    if not _AUDIT["on"]:
        return
    try:
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS)
            if not writes or path is None or isinstance(path, int):
                return
            _AUDIT["writes"].append(os.path.realpath(os.fsdecode(os.fspath(path))))
        elif event in ("os.rename", "os.replace", "os.link", "os.symlink"):
            target = os.fsdecode(os.fspath(args[1]))
            _AUDIT["writes"].append(os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(target))),
                                                 os.path.basename(target)))
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.chmod"):
            if isinstance(args[0], int):
                return
            target = os.fsdecode(os.fspath(args[0]))
            _AUDIT["writes"].append(os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(target))),
                                                 os.path.basename(target)))
    except Exception:       # an audit hook must never break the code it watches
        pass


sys.addaudithook(_audit_hook)


class audited:
    """Record every write this process makes; ``outside(out, root)``: those under ``root`` that
    are not inside ``out`` (writes elsewhere are caches of the libraries, not outputs)."""

    def __enter__(self):
        _AUDIT["writes"] = []
        _AUDIT["on"] = True
        return self

    def __exit__(self, *exc):
        _AUDIT["on"] = False
        self.writes = list(_AUDIT["writes"])

    def outside(self, out: Path, root: Path) -> list[str]:
        out, root = os.path.realpath(out), os.path.realpath(root)
        return [w for w in self.writes if (w + os.sep).startswith(root + os.sep)
                and not (w + os.sep).startswith(out + os.sep)]


def listing(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``root`` (folders: their names) except ``skip`` and what
    is in it, not following links."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            continue
        for name in dirnames:
            if Path(dirpath) / name != skip:
                found[os.path.join(dirpath, name)] = "folder"
        for name in filenames:
            info = os.lstat(os.path.join(dirpath, name))
            found[os.path.join(dirpath, name)] = (info.st_size, info.st_mtime_ns)
    return found


# ---- 1. names that would leave --out ---------------------------------------------------------
HOSTILE_NAMES = ["...png", "..png", ".hidden.png", "a\x1b[31mred.png", "new\nline.png", "tab\there.png",
                 "x" * 240 + ".png", "legend.png.png", "manifest.json.png", ".danet.lock.png", "back\\slash.png",
                 "A.png", "a.png", "a.jpg", " .png"]


def test_image_names_that_would_leave_out_stay_inside(tmp_path, checkpoint):
    folder = tmp_path / "images"
    folder.mkdir()
    for index, name in enumerate(HOSTILE_NAMES):
        write_image(folder / name, seed=index)
    out = tmp_path / "work" / "out"
    out.parent.mkdir()
    (out.parent / "prediction.json").write_text("decoy: must survive")
    (out.parent / "legend.png").write_text("decoy: must survive")
    before = listing(tmp_path, out)
    with audited() as audit:
        result = predict(folder, out, checkpoint)
    assert result.exit_code == 0, result.output + result.stderr
    assert f"{len(HOSTILE_NAMES)} predicted" in result.output
    assert audit.outside(out, tmp_path) == []
    assert listing(tmp_path, out) == before                    # nothing beside --out changed
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == len(HOSTILE_NAMES)                  # distinct, none merged
    assert len(complete_folders(out)) == len(HOSTILE_NAMES)
    for folder_path in folders:
        name = folder_path.name
        assert not name.startswith(".") and name not in ("legend.png", "manifest.json")
        assert all(ch.isprintable() for ch in name) and "\\" not in name
        assert len(name.encode()) <= inputs.MAX_NAME_BYTES
    assert (out / "legend.png").is_file() and (out / "manifest.json").is_file()
    again = predict(folder, out, checkpoint)                   # the same names again: all resumed
    assert again.exit_code == 0 and f"0 predicted, {len(HOSTILE_NAMES)} already done" in again.output


def test_output_names_are_deterministic_and_distinct(tmp_path):
    paths = [tmp_path / "p" / name for name in HOSTILE_NAMES] + [tmp_path / "q" / "a.png", tmp_path / "q" / "a-1.png"]
    names = inputs.output_names(paths)
    assert names == inputs.output_names(list(paths))
    assert len({n.casefold() for n in names}) == len(names)
    for name in names:
        assert (tmp_path / name).resolve().parent == tmp_path.resolve()


# ---- 2. symlinks inside --out -----------------------------------------------------------------
def test_symlinked_output_folder_and_file_are_never_followed(tmp_path, checkpoint):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png", seed=1)
    write_image(folder / "b.png", seed=2)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "fused_mask.png").write_text("victim file")
    (victim / "prediction.json").write_text("victim record")
    (tmp_path / "victim.txt").write_text("victim target")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / "a")                              # the per-image folder is a link
    (out / "b").mkdir()
    os.symlink(tmp_path / "victim.txt", out / "b" / "fused_mask.png")   # an output file is a link
    os.symlink(tmp_path / "victim.txt", out / "legend.png")
    with audited() as audit:
        result = predict(folder, out, checkpoint)
    assert result.exit_code == 0, result.output + result.stderr
    assert audit.outside(out, tmp_path) == []
    assert (victim / "fused_mask.png").read_text() == "victim file"
    assert (victim / "prediction.json").read_text() == "victim record"
    assert (tmp_path / "victim.txt").read_text() == "victim target"
    assert not (out / "a").is_symlink() and (out / "a").is_dir()
    assert not (out / "b" / "fused_mask.png").is_symlink() and not (out / "legend.png").is_symlink()
    assert len(complete_folders(out)) == 2


def test_a_file_in_place_of_an_image_folder_is_an_error_not_overwritten(tmp_path, checkpoint):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("user data")
    assert_one_line_error(predict(folder, out, checkpoint), "it is a file, not a folder", str(out / "a"))
    assert (out / "a").read_text() == "user data"


# ---- 3. locking -------------------------------------------------------------------------------
def test_a_locked_output_folder_is_refused_with_the_holders_pid(tmp_path, checkpoint):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    with outputs.output_lock(out):
        result = predict(folder, out, checkpoint)
        assert_one_line_error(result, f"is in use by another danet run (pid {os.getpid()})", str(out))
        attention = run("attention", folder / "a.png", "--point", "3,3", "--out", out, "--checkpoint", checkpoint,
                        "--device", "cpu")
        assert_one_line_error(attention, "in use by another danet run")
    assert not (out / "a").exists() and not (out / "manifest.json").exists()
    assert not (out / outputs.LOCK_NAME).exists()              # released and removed
    assert predict(folder, out, checkpoint).exit_code == 0


def test_a_stale_lock_from_a_killed_run_is_taken_over(tmp_path, checkpoint):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / outputs.LOCK_NAME).write_text("999999\n")           # written, but nobody holds the flock
    result = predict(folder, out, checkpoint)
    assert result.exit_code == 0, result.stderr
    assert not (out / outputs.LOCK_NAME).exists() and len(complete_folders(out)) == 1


def cli_process(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "danet.cli", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def many_images(folder: Path, count: int, size: int = 160) -> Path:
    folder.mkdir()
    for index in range(count):
        write_image(folder / f"img{index:03d}.png", size, size, seed=index)
    return folder


def wait_for(condition, seconds: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the run ended early ({process.returncode}): {out} {err}")
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


WARM_CLI = """
import sys, time
from pathlib import Path
from danet.cli import app
trigger = Path(sys.argv[1])
while not (trigger.exists() and trigger.read_text().strip()):
    time.sleep(0.02)
app(sys.argv[2:])
"""


@pytest.mark.slow
def test_two_concurrent_runs_one_proceeds_the_other_exits_with_the_lock_message(tmp_path, checkpoint):
    folder = many_images(tmp_path / "images", 40, size=224)
    out = tmp_path / "out"
    args = ["predict", folder, "--out", out, "--checkpoint", checkpoint, "--device", "cpu"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    # The second run is imported and waiting before the first starts, so it meets the first mid-run.
    second = subprocess.Popen([sys.executable, "-c", WARM_CLI, str(out / outputs.LOCK_NAME), *map(str, args)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = cli_process(*args)
    try:
        stdout, stderr = second.communicate(timeout=180)
        assert second.returncode == 1, stdout + stderr
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert lines[-1] == (f"error: {out} is in use by another danet run (pid {first.pid}); wait for it to "
                             "finish or choose another --out"), stderr
        assert "Traceback" not in stderr
        assert first.poll() is None                     # refused while the first was still running
        stdout, stderr = first.communicate(timeout=300)
        assert first.returncode == 0, stderr
        assert "40 predicted" in stdout
    finally:
        first.kill()
        second.kill()
    assert len(complete_folders(out)) == 40 and not partials(out)


# ---- 4. killed runs ---------------------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_run_leaves_no_record_for_an_incomplete_result_and_the_rerun_completes(tmp_path, checkpoint):
    folder = many_images(tmp_path / "images", 16, size=224)
    out = tmp_path / "out"
    process = cli_process("predict", folder, "--out", out, "--checkpoint", checkpoint, "--device", "cpu",
                          "--save-logits")
    try:
        wait_for(lambda: len(list(out.glob("*/prediction.json"))) >= 2, 180, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    done = complete_folders(out)                          # each record vouches for complete files
    assert 2 <= len(done) < 16
    leftover = out / done[0].name / ".fused_mask.4194304-0123abcd.partial.png"
    leftover.write_bytes(b"half a png")                   # as a kill during a write leaves it
    rerun = predict(folder, out, checkpoint, "--save-logits")
    assert rerun.exit_code == 0, rerun.stderr
    assert f"{16 - len(done)} predicted, {len(done)} already done" in rerun.output
    assert len(complete_folders(out)) == 16
    assert not partials(out) and not (out / outputs.LOCK_NAME).exists()


# ---- 5. disk full and read-only ---------------------------------------------------------------
def test_disk_full_is_one_line_naming_the_path_and_leaves_no_record_or_partial(tmp_path, checkpoint, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in "abc":
        write_image(folder / f"{name}.png", seed=ord(name))
    out = tmp_path / "out"
    real_fsync = outputs._fsync

    def full(path):
        if path.name.startswith(".cam_overlay") and path.parent.name == "b":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(path)

    monkeypatch.setattr(outputs, "_fsync", full)
    line = assert_one_line_error(predict(folder, out, checkpoint), "no space left on device",
                                 str(out / "b" / "cam_overlay.png"))
    assert "cannot write" in line
    assert not (out / "b" / "prediction.json").exists() and not (out / "b" / "cam_overlay.png").exists()
    assert [p.name for p in complete_folders(out)] == ["a"] and not partials(out)
    monkeypatch.setattr(outputs, "_fsync", real_fsync)
    rerun = predict(folder, out, checkpoint)
    assert rerun.exit_code == 0 and "2 predicted, 1 already done" in rerun.output
    assert "redid 1 of 3 images: an earlier run did not finish" in rerun.output


def test_read_only_output_is_one_line_naming_the_path(tmp_path, checkpoint, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png")
    out = tmp_path / "out"

    def read_only(source, target):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(outputs.os, "replace", read_only)
    assert_one_line_error(predict(folder, out, checkpoint), "read-only", str(out / "legend.png"))
    assert not partials(out) and not (out / outputs.LOCK_NAME).exists()


@pytest.mark.slow
def test_a_file_too_large_for_the_process_limit_is_one_line(tmp_path, checkpoint):
    """A real kernel write failure (RLIMIT_FSIZE: EFBIG) in a child process."""
    import resource

    folder = many_images(tmp_path / "images", 1, size=200)
    out = tmp_path / "out"
    process = cli_process("predict", folder, "--out", out, "--checkpoint", checkpoint, "--device", "cpu",
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000)))
    stdout, stderr = process.communicate(timeout=180)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 1 and lines[-1].startswith(f"error: cannot write {out}"), stderr
    assert "File too large" in lines[-1] and "Traceback" not in stderr
    assert not partials(out) and not list(out.glob("*/prediction.json"))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 96 KiB tmpfs mounted under tmp_path (skips where this process may not mount)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_real_full_disk_is_one_line_and_no_record_vouches_for_partial_files(tmp_path, checkpoint, small_tmpfs):
    folder = many_images(tmp_path / "images", 6, size=96)
    out = small_tmpfs / "out"
    result = predict(folder, out, checkpoint)
    assert_one_line_error(result, "no space left on device", f"cannot write {out}")
    complete_folders(out)
    assert not partials(out) and not (out / outputs.LOCK_NAME).exists()


def test_a_real_read_only_folder_is_one_line(tmp_path, checkpoint, small_tmpfs):
    folder = many_images(tmp_path / "images", 1, size=64)
    out = small_tmpfs / "out"
    out.mkdir()
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], capture_output=True).returncode == 0
    assert_one_line_error(predict(folder, out, checkpoint), f"cannot write to {out}", "read-only")
    assert_one_line_error(predict(folder, small_tmpfs / "new", checkpoint), "cannot create", str(small_tmpfs / "new"))


def test_convert_onto_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, checkpoint, small_tmpfs):
    destination = small_tmpfs / "model.safetensors"
    assert_one_line_error(run("convert", checkpoint, destination), f"cannot write {destination}",
                          "no space left on device")
    assert not any(small_tmpfs.iterdir())


# ---- 6. convert / figure onto a folder --------------------------------------------------------
def test_convert_and_figure_onto_a_folder_are_clean_errors_without_part_files(tmp_path, checkpoint):
    image = write_image(tmp_path / "a.png")
    taken = tmp_path / "taken.safetensors"
    taken.mkdir()
    assert_one_line_error(run("convert", checkpoint, taken), "is a folder")
    figure = tmp_path / "figure.png"
    figure.mkdir()
    assert_one_line_error(run("figure", image, "--point", "3,3", "--out", figure, "--checkpoint", checkpoint),
                          "is a folder")
    assert not partials(tmp_path) and not any(taken.iterdir()) and not any(figure.iterdir())


def test_convert_writes_atomically_and_clears_a_dead_runs_partial(tmp_path, checkpoint):
    destination = tmp_path / "out" / "model.safetensors"
    destination.parent.mkdir()
    stale = destination.parent / ".model.4194304-0123abcd.partial.safetensors"    # pid beyond pid_max
    stale.write_bytes(b"half")
    with audited() as audit:
        result = run("convert", checkpoint, destination)
    assert result.exit_code == 0, result.stderr
    assert audit.outside(destination.parent, tmp_path) == []
    assert not stale.exists() and not partials(tmp_path)
    assert danet.load(destination, device="cpu").meta.config.num_classes == 5


# ---- 7. resume keys ---------------------------------------------------------------------------
def test_a_rerun_redoes_what_a_setting_changed_and_says_why(tmp_path, checkpoint, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in "abc":
        write_image(folder / f"{name}.png", seed=ord(name))
    out = tmp_path / "out"
    assert predict(folder, out, checkpoint).exit_code == 0
    overlay = np.asarray(Image.open(out / "a" / "fused_overlay.png"))

    changed = predict(folder, out, checkpoint, "--opacity", "0.9")
    assert "3 predicted, 0 already done" in changed.output
    assert "redid 3 of 3 images: --opacity changed" in changed.output
    assert not np.array_equal(overlay, np.asarray(Image.open(out / "a" / "fused_overlay.png")))
    record = json.loads((out / "a" / "prediction.json").read_text())
    assert record["settings"]["opacity"] == 0.9 and record["settings"]["version"] == danet.__version__

    same = predict(folder, out, checkpoint, "--opacity", "0.9")
    assert "0 predicted, 3 already done" in same.output and "redid" not in same.output
    corners = predict(folder, out, checkpoint, "--opacity", "0.9", "--no-align-corners")
    assert "redid 3 of 3 images: --align-corners changed" in corners.output
    stride = predict(folder, out, checkpoint, "--opacity", "0.9", "--no-align-corners", "--dilation", "os16")
    assert stride.exit_code == 0, stride.stderr
    assert "redid 3 of 3 images: --dilation changed" in stride.output
    assert json.loads((out / "b" / "prediction.json").read_text())["settings"]["config"]["output_stride"] == 16
    logits = predict(folder, out, checkpoint, "--opacity", "0.9", "--no-align-corners", "--dilation", "os16",
                     "--save-logits")
    assert "redid 3 of 3 images: --save-logits asked for logits" in logits.output

    record = json.loads((out / "c" / "prediction.json").read_text())
    del record["settings"]                                   # as an older danet-lens wrote it
    (out / "c" / "prediction.json").write_text(json.dumps(record))
    monkeypatch.setattr(danet, "__version__", "99.0")
    mixed = predict(folder, out, checkpoint, "--opacity", "0.9", "--no-align-corners", "--dilation", "os16")
    assert "redid 3 of 3 images: " in mixed.output
    assert f"danet-lens {danet.__version__} made it" not in mixed.output
    assert "made it, this is 99.0 (2)" in mixed.output and "an older danet-lens made it (1)" in mixed.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["redone"]) == {"a", "b", "c"} and manifest["settings"]["version"] == "99.0"


# ---- 8. inputs --------------------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path):
    """A folder for a very deep tree, removed bottom-up here (pytest's recursive cleanup could not)."""
    root = tmp_path / "tree"
    yield root
    chain, stack = [], [str(root)]
    while stack:                                  # every real folder, parents before children
        folder = stack.pop()
        chain.append(folder)
        for entry in os.scandir(folder):
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    for folder in reversed(chain):
        for entry in os.scandir(folder):
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
        os.rmdir(folder)


def test_recursive_over_a_very_deep_tree_with_a_symlink_loop(tmp_path, tree, checkpoint):
    root = tree
    deep = root
    root.mkdir()
    for _ in range(1500):                                    # deeper than Python's recursion limit
        deep = deep / "d"
        os.mkdir(deep)
    write_image(deep / "bottom.gif")
    Image.open(deep / "bottom.gif").verify()
    write_image(root / "top.png")
    os.symlink(root, root / "d" / "loop")                    # a loop back to the top
    os.symlink(deep, root / "shortcut")                      # a second way to the same folder
    found = inputs.collect_images([root], recursive=True)
    assert sorted(p.name for p in found) == ["bottom.gif", "top.png"]
    out = tmp_path / "out"
    result = predict(root, out, checkpoint, "--recursive")
    assert result.exit_code == 0, result.stderr
    assert "2 predicted" in result.output and len(complete_folders(out)) == 2


def test_one_suffix_list_for_predict_and_datasets(tmp_path):
    assert inputs.IMAGE_SUFFIXES is image_module.IMAGE_SUFFIXES
    assert ".gif" in inputs.IMAGE_SUFFIXES
    for suffix in inputs.IMAGE_SUFFIXES:                      # every listed suffix opens as what it names
        fmt = Image.registered_extensions()[suffix]
        assert fmt in image_module.ALLOWED_FORMATS or fmt == "MPO"
    data = make_camvid_like(tmp_path / "data", n_train=1, n_val=1)
    Image.open(data / "val" / "f0.png").save(data / "val" / "g.gif")
    Image.open(data / "valannot" / "f0.png").save(data / "valannot" / "g.png")
    assert [p[0].name for p in camvid.list_pairs(data, "val")] == ["f0.png", "g.gif"]


def float_tiff(path: Path, nan_pixels: int) -> Path:
    values = np.linspace(0.0, 1000.0, 48 * 64, dtype=np.float32).reshape(48, 64)
    values.ravel()[:nan_pixels] = np.nan
    Image.fromarray(values, mode="F").save(path)
    return path


def test_a_float_tiff_with_a_few_nans_is_predicted_with_a_notice_not_black(tmp_path, checkpoint):
    image = float_tiff(tmp_path / "nan.tif", 5)
    picture = image_module.load_image(image)
    assert picture.array.max() == 255 and picture.array.std() > 50          # not silently black
    assert any("5 pixels" in n and "NaN" in n for n in picture.notices)
    out = tmp_path / "out"
    result = predict(image, out, checkpoint)
    assert result.exit_code == 0, result.stderr
    assert any("NaN" in n for n in json.loads((out / "nan" / "prediction.json").read_text())["notices"])
    all_nan = float_tiff(tmp_path / "void.tif", 48 * 64)
    assert_one_line_error(predict(all_nan, tmp_path / "out2", checkpoint), "void.tif", "no finite pixel values")


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A small PNG whose header declares ``width`` x ``height`` (refused before decoding)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    body = zlib.compress(b"\x00" * (width + 1) * 8)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def truncated_png(path: Path) -> Path:
    write_image(path, 48, 64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


DATASET_CASES = {
    "truncated": (lambda p: truncated_png(p), "truncated"),
    "bomb": (lambda p: bomb_png(p), "decompression bomb"),
    "too large": (lambda p: Image.new("RGB", (2100, 2100), (9, 9, 9)).save(p), "2100x2100"),
    "fifo": (lambda p: os.mkfifo(p), "not a regular file"),
    "label bomb": (None, "decompression bomb"),
}


@pytest.mark.parametrize("case", list(DATASET_CASES))
@pytest.mark.parametrize("command", ["evaluate", "train", "attention-stats"])
def test_a_bad_frame_in_a_dataset_is_one_line_naming_the_file(tmp_path, checkpoint, case, command):
    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=2)
    split = "train" if command == "train" else "val"
    make, fragment = DATASET_CASES[case]
    if make is None:
        target = data / f"{split}annot" / "f1.png"
        target.unlink()
        bomb_png(target)
    else:
        target = data / split / "f1.png"
        target.unlink()
        make(target)
    if command == "train":
        args = ["train", "--data", data, "--out", tmp_path / "run", "--backbone", "resnet18", "--head-channels", "16",
                "--no-imagenet", "--batch-size", "2", "--crop", "32,48", "--device", "cpu", "--max-steps", "1"]
    elif command == "evaluate":
        args = ["evaluate", "--data", data, "--checkpoint", checkpoint, "--device", "cpu"]
    else:
        args = ["attention-stats", "--data", data, "--out", tmp_path / "stats", "--checkpoint", checkpoint,
                "--device", "cpu"]
    started = time.monotonic()
    result = run(*args)
    assert_one_line_error(result, "f1.png", fragment)
    assert time.monotonic() - started < 60


def test_read_pair_goes_through_the_guarded_loader(tmp_path):
    data = make_camvid_like(tmp_path / "data", n_train=1, n_val=1)
    image, label = camvid.read_pair(data / "val" / "f0.png", data / "valannot" / "f0.png")
    assert image.dtype == np.uint8 and image.shape == (48, 64, 3) and label.shape == (48, 64)
    np.testing.assert_array_equal(label, np.asarray(Image.open(data / "valannot" / "f0.png")))
    np.testing.assert_array_equal(image, np.asarray(Image.open(data / "val" / "f0.png").convert("RGB")))
    with pytest.raises(danet.ImageLoadError, match="is a folder"):
        camvid.read_image(data / "val")


def test_the_audit_sees_writes_beside_out(tmp_path):
    """The guard above can fail: a write next to ``out`` and one through a link are both caught."""
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(tmp_path, out / "link")
    with audited() as audit:
        (tmp_path / "beside.txt").write_text("x")
        (out / "link" / "through.txt").write_text("x")
        (out / "inside.txt").write_text("x")
    assert sorted(Path(p).name for p in audit.outside(out, tmp_path)) == ["beside.txt", "through.txt"]


# ---- every numeric option at its bounds and beyond (issue 26) ---------------------------------
# The least each command needs to parse; nothing here runs a command's body.
REQUIRED = {"predict": ["x.png", "--out", "o"], "attention": ["x.png", "--point", "1,1", "--out", "o"],
            "figure": ["x.png", "--point", "1,1", "--out", "f.png"], "measures": ["x.png"],
            "attention-stats": ["--data", "d", "--out", "o"], "evaluate": ["--data", "d"], "train": ["--data", "d"],
            "convert": ["a.pth", "b.safetensors"], "info": []}


def numeric_options():
    """(command, option, Range) for every option of every command whose value is a number; an option
    typed int/float without a ``ranged`` declaration fails here, so none can be added unbounded."""
    import typing

    import typer.main

    from danet.cli import app
    from danet.cli.ranges import RangeCheck

    def numeric(annotation) -> bool:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return annotation in (int, float) or any(numeric(a) for a in inner)

    group = typer.main.get_command(app)
    found, unbounded = [], []
    for name, command in group.commands.items():
        for param in command.params:
            described = param.type_descriptor
            parser = getattr(described.parameter_info, "parser", None)
            if isinstance(parser, RangeCheck):
                found.append((name, parser.option, parser.spec))
            elif numeric(described.annotation):
                unbounded.append(f"{name} {param.opts[0]}")
    assert not unbounded, f"numeric options without a documented range: {unbounded}"
    assert set(REQUIRED) == set(group.commands), "a new command needs its required arguments in REQUIRED"
    return found


NUMERIC = numeric_options()


def test_every_numeric_option_is_in_the_ranges_table():
    from danet.cli.ranges import RANGES

    assert {f"{command} {option}" for command, option, _ in NUMERIC} == set(RANGES)
    assert len(NUMERIC) == len(RANGES) == 28


def parse_only(command: str, option: str, value: str):
    """The value the option gets after parsing ``danet COMMAND ... OPTION VALUE`` (the body is not run)."""
    import typer.main

    from danet.cli import app

    group = typer.main.get_command(app)
    context = group.commands[command].make_context(command, [*REQUIRED[command], option, value])
    name = next(p.name for p in group.commands[command].params if option in p.opts)
    got = context.params[name]
    return got[-1] if isinstance(got, (list, tuple)) else got


def beyond(spec) -> list[str]:
    """Values just outside ``spec``, plus values that are no number at all."""
    if spec.whole:
        outside = [str(int(spec.low) - 1), str(int(spec.high) + 1), str(10**30), "-" + str(10**30), "1.5", "1e3"]
        outside += [str(v) for v in range(int(spec.low), int(spec.high) + 1) if v not in spec.choices][:2] if spec.choices else []
    else:
        step = max((spec.high - spec.low) * 1e-3, 1e-9)
        outside = [repr(spec.low - step), repr(spec.high + step), "1e400", "-1e400", "nan", "inf"]
    return outside + ["abc", "", "0x10"]


@pytest.mark.parametrize("command, option, spec", NUMERIC, ids=[f"{c} {o}" for c, o, _ in NUMERIC])
def test_numeric_option_at_its_bounds_parses(command, option, spec):
    values = list(spec.choices) or [spec.low, spec.high]
    for value in values:
        text = str(int(value)) if spec.whole else repr(float(value))
        assert parse_only(command, option, text) == value, (command, option, text)


@pytest.mark.parametrize("command, option, spec", NUMERIC, ids=[f"{c} {o}" for c, o, _ in NUMERIC])
def test_numeric_option_beyond_its_bounds_is_one_line_before_any_work(command, option, spec, monkeypatch):
    import danet.cli.options as options

    monkeypatch.setattr(options, "load", lambda *a, **k: pytest.fail("a model was loaded for a bad option"))
    for value in beyond(spec):
        result = run(command, *REQUIRED[command], option, value)
        line = assert_one_line_error(result, option)
        assert f"its range is {spec.text()}" in line or f"outside its range {spec.text()}" in line or \
            f"is not one of {spec.text()}" in line, line


@pytest.mark.parametrize("args, fragment", [
    (["measures", "x.png", "--point", "5,5", "--draws", "1000000000"], "--draws 1000000000 is outside its range 1 to 100"),
    (["measures", "x.png", "--seed", "-1"], "--seed -1 is outside its range 0 to 4,294,967,295"),
    (["train", "--data", "d", "--crop", "100000,100000"], "each side must be 32 to 4096 pixels"),
    (["train", "--data", "d", "--scale", "0.1,1e400"], "need 0.1 <= LOW <= HIGH <= 4"),
    (["evaluate", "--data", "d", "--scales", ",".join(["1"] * 9)], "lists 9 scales; at most 8"),
    (["evaluate", "--data", "d", "--scales", "nan"], "each scale must lie between 0.1 and 4"),
])
def test_numbers_inside_text_options_are_bounded_too(args, fragment):
    assert_one_line_error(run(*args), fragment)


def test_points_are_bounded_in_number_and_value(tmp_path):
    from danet.jobs.attention import MAX_QUERY_POINTS

    image = write_image(tmp_path / "x.png")
    many = [a for i in range(MAX_QUERY_POINTS + 1) for a in ("--point", f"{i % 60},1")]
    assert_one_line_error(run("attention", image, *many, "--out", tmp_path / "o"), "65 points given; at most 64")
    for point, fragment in [("1e400,5", "is not finite"), ("nan,5", "is not finite"), ("5", "is not X,Y"),
                            ("64,5", "lies outside the 64x48 image"), ("-1,5", "lies outside")]:
        assert_one_line_error(run("measures", image, "--point", point), fragment)


def test_the_library_refuses_the_same_knockout_settings():
    from danet.analysis.knockout import check_knockout_settings
    from danet.errors import InputError

    check_knockout_settings(10**6, 100, 2**32 - 1)             # max_k stops at the grid's cells anyway
    for max_k, draws, seed, fragment in [(0, 5, 0, "max_k must be"), (64, 10**9, 0, "draws must be"),
                                         (64, 0, 0, "draws must be"), (64, 5, -1, "seed must be"),
                                         (64, 5, 2**32, "seed must be"), (64, True, 0, "draws must be")]:
        with pytest.raises(InputError, match=fragment):
            check_knockout_settings(max_k, draws, seed)


def test_measures_runs_at_the_upper_bounds_of_its_numbers(tmp_path, checkpoint):
    """The reported case, at the largest values its ranges allow: a result, not a MemoryError."""
    image = write_image(tmp_path / "x.png")
    result = run("measures", image, "--point", "5,5", "--draws", 100, "--max-k", 4096, "--seed", 2**32 - 1,
                 "--checkpoint", checkpoint, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["settings"]["draws"] == 100 and record["settings"]["seed"] == 2**32 - 1


def test_docs_list_every_range():
    from danet.cli.ranges import RANGES

    text = (REPO / "docs" / "cli.md").read_text()
    missing = [k for k, spec in RANGES.items() if f"| `{k}` | {spec.text()} |" not in text]
    assert not missing, f"docs/cli.md does not list the ranges of {missing}"


# ---- a FIFO or a link to /dev/zero for every command's file argument (issue 26) ---------------
def special_file(kind: str, path: Path) -> Path:
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    return path


# name -> (arguments given the special file S, a good image I, a checkpoint C, a dataset D, a folder T)
FILE_ARGUMENTS = {
    "predict IMAGE": lambda S, I, C, D, T: ["predict", S("x.png"), "--out", T / "o", "--checkpoint", C],
    "predict --checkpoint": lambda S, I, C, D, T: ["predict", I, "--out", T / "o", "--checkpoint", S("m.safetensors")],
    "attention IMAGE": lambda S, I, C, D, T: ["attention", S("x.png"), "--point", "1,1", "--out", T / "o",
                                             "--checkpoint", C],
    "attention --checkpoint": lambda S, I, C, D, T: ["attention", I, "--point", "1,1", "--out", T / "o",
                                                    "--checkpoint", S("m.pth")],
    "figure IMAGE": lambda S, I, C, D, T: ["figure", S("x.png"), "--point", "1,1", "--out", T / "f.png",
                                          "--checkpoint", C],
    "figure --checkpoint": lambda S, I, C, D, T: ["figure", I, "--point", "1,1", "--out", T / "f.png",
                                                 "--checkpoint", S("m.pth")],
    "measures IMAGE": lambda S, I, C, D, T: ["measures", S("x.png"), "--checkpoint", C],
    "measures --labels": lambda S, I, C, D, T: ["measures", I, "--labels", S("l.png"), "--checkpoint", C],
    "measures --checkpoint": lambda S, I, C, D, T: ["measures", I, "--checkpoint", S("m.safetensors")],
    "attention-stats --checkpoint": lambda S, I, C, D, T: ["attention-stats", "--data", D, "--out", T / "o",
                                                          "--checkpoint", S("m.pth")],
    "evaluate --checkpoint": lambda S, I, C, D, T: ["evaluate", "--data", D, "--checkpoint", S("m.pth")],
    "train --init": lambda S, I, C, D, T: ["train", "--data", D, "--out", T / "run", "--init", S("m.pth"),
                                          "--no-imagenet", "--max-steps", 1],
    "convert SOURCE": lambda S, I, C, D, T: ["convert", S("m.pth"), T / "out.safetensors"],
    "info CHECKPOINT": lambda S, I, C, D, T: ["info", S("m.pth")],
    "info --checkpoint": lambda S, I, C, D, T: ["info", "--checkpoint", S("m.safetensors")],
}


def run_with_deadline(seconds: float, args, fifos: list[Path]):
    """``run(*args)`` in a thread; a hang fails the test (and the FIFO's blocked reader is released)."""
    import threading

    box = {}
    thread = threading.Thread(target=lambda: box.update(result=run(*args)), daemon=True)
    started = time.perf_counter()
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:                       # let a reader blocked in open() go, then fail
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(5)
        pytest.fail(f"danet {' '.join(map(str, args))} still ran after {seconds} s")
    return box["result"], time.perf_counter() - started


@pytest.mark.parametrize("kind", ["fifo", "dev_zero_link"])
@pytest.mark.parametrize("case", list(FILE_ARGUMENTS))
def test_a_special_file_as_any_file_argument_is_refused_at_once(case, kind, tmp_path, checkpoint):
    image = write_image(tmp_path / "ok.png")
    data = make_camvid_like(tmp_path / "camvid")
    specials: list[Path] = []

    def special(name: str) -> Path:
        specials.append(special_file(kind, tmp_path / name))
        return specials[-1]

    args = FILE_ARGUMENTS[case](special, image, checkpoint, data, tmp_path)
    result, seconds = run_with_deadline(30, [*args, "--device", "cpu"] if case.split()[0] not in ("convert",)
                                        else args, specials)
    assert_one_line_error(result, str(specials[0].name), "not a regular file (a pipe, socket or device)")
    assert seconds < 30


@pytest.mark.parametrize("kind", ["fifo", "dev_zero_link"])
def test_a_special_file_in_place_of_an_output_file_is_replaced_not_written_through(kind, tmp_path, checkpoint):
    """Output files are renamed into place, so a FIFO or a /dev/zero link there is replaced: no hang."""
    image = write_image(tmp_path / "ok.png")
    figure = special_file(kind, tmp_path / "f.png")
    result, _ = run_with_deadline(60, ["figure", image, "--point", "1,1", "--out", figure, "--checkpoint", checkpoint,
                                       "--device", "cpu", "--dpi", 50], [figure])
    assert result.exit_code == 0, result.output
    assert figure.is_file() and not figure.is_symlink() and figure.read_bytes()[:4] == b"\x89PNG"
    destination = special_file(kind, tmp_path / "out.safetensors")
    result, _ = run_with_deadline(60, ["convert", checkpoint, destination], [destination])
    assert result.exit_code == 0, result.output
    assert destination.is_file() and not destination.is_symlink() and Path("/dev/zero").is_char_device()


def test_a_folder_holding_a_fifo_or_a_dev_zero_link_skips_them(tmp_path, checkpoint):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "good.png")
    special_file("fifo", folder / "pipe.png")
    special_file("dev_zero_link", folder / "zero.png")
    result, _ = run_with_deadline(60, ["predict", folder, "--out", tmp_path / "o", "--checkpoint", checkpoint,
                                       "--device", "cpu"], [folder / "pipe.png"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.is_dir()) == ["good"]


# ---- many classes under an address-space limit (issue 26) --------------------------------------
LIMITED = """
import re, resource, sys
mapped = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read())[1]) * 1024
limit = int(sys.argv[1]) if sys.argv[1] != "+" else None
from danet.cli import app                      # torch and the model code mapped before the limit
if limit is None:
    limit = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read())[1]) * 1024 + int(sys.argv[2])
    del sys.argv[2]
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.argv = ["danet"] + sys.argv[2:]
app()
"""


def run_limited(limit: str, *args, extra: str | None = None, timeout: int = 300):
    command = [sys.executable, "-c", LIMITED, limit, *([extra] if extra else []), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"})


def result_or_one_line(done: subprocess.CompletedProcess) -> str:
    """Exit 0, or exit 1 with one ``error:`` line; never a traceback or the allocator's message."""
    text = done.stdout + done.stderr
    assert "Traceback" not in text and "DefaultCPUAllocator" not in text, text[-2000:]
    if done.returncode == 0:
        return "result"
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert done.returncode == 1 and len(lines) == 1, text[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def many_classes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    model = save_tiny(make_tiny_model(3000, head_channels=8), folder / "c3000.safetensors")
    return model, write_image(folder / "frame.png", 360, 480)


@pytest.mark.slow
def test_3000_classes_under_a_4_gb_address_space_limit_is_a_result_or_one_line(tmp_path, many_classes):
    model, frame = many_classes
    for command in (["predict", frame, "--out", tmp_path / "p"],
                    ["attention", frame, "--point", "10,10", "--out", tmp_path / "a"]):
        outcome = result_or_one_line(run_limited(str(4 << 30), *command, "--checkpoint", model, "--device", "cpu"))
        assert outcome == "result" or "use a smaller image" in outcome, outcome
        print(f"\n{command[0]} under 4 GiB: {outcome[:300]}")


@pytest.mark.slow
def test_3000_classes_predict_within_2_gb_above_the_loaded_libraries(tmp_path, many_classes):
    """Before: 18.6 GB peak for one 480x360 frame. Now it fits in 2 GiB of address space above what
    torch maps, and the masks equal those of an unlimited run (same threads: a random 3,000-class
    model has near-ties that another thread count's rounding can flip)."""
    model, frame = many_classes
    done = run_limited("+", "predict", frame, "--out", tmp_path / "limited", "--checkpoint", model, "--device", "cpu",
                       extra=str(2 << 30))
    assert result_or_one_line(done) == "result"
    free = run_limited("+", "predict", frame, "--out", tmp_path / "free", "--checkpoint", model, "--device", "cpu",
                       extra=str(64 << 30))                     # the same process set-up, no limit that binds
    assert result_or_one_line(free) == "result"
    for name in ("fused_mask.png", "pam_mask.png", "cam_mask.png"):
        limited = np.asarray(Image.open(tmp_path / "limited" / "frame" / name))
        assert np.array_equal(limited, np.asarray(Image.open(tmp_path / "free" / "frame" / name))), name


# ---- thumbnails: batched, one flush per batch (issue 26) ---------------------------------------
def test_a_sync_group_puts_files_in_place_only_at_commit_and_keeps_what_completed(tmp_path, monkeypatch):
    group = outputs.SyncGroup(tmp_path)
    with group.collect(key="a"):
        outputs.save_text(tmp_path / "a.txt", "first")
    with group.collect(key="b"):
        outputs.save_text(tmp_path / "b.txt", "second")
        outputs.save_text(tmp_path / "b2.txt", "third")
    assert not (tmp_path / "a.txt").exists() and len(partials(tmp_path)) == 3     # nothing named yet
    real_fsync = outputs._fsync

    def full(path):
        if path.name.startswith(".b2"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(path)

    monkeypatch.setattr(outputs, "_fsync", full)
    committed = []
    with pytest.raises(outputs.OutputError, match=r"cannot write .*b2\.txt: no space left on device"):
        for key in group.commit():
            committed.append(key)
    assert committed == ["a"] and (tmp_path / "a.txt").read_text() == "first"
    assert (tmp_path / "b.txt").exists() and not (tmp_path / "b2.txt").exists() and not partials(tmp_path)


def test_thumbnails_are_batched_on_the_cpu_with_the_masks_of_batch_1(tmp_path, checkpoint):
    folder = tmp_path / "tiny"
    folder.mkdir()
    for i in range(12):
        write_image(folder / f"t{i:02d}.png", 12, 16, seed=i)
    assert predict(folder, tmp_path / "batched", checkpoint).exit_code == 0
    assert predict(folder, tmp_path / "single", checkpoint, "--batch-size", 1).exit_code == 0
    records = [json.loads((tmp_path / "batched" / f"t{i:02d}" / "prediction.json").read_text()) for i in range(12)]
    assert {r["batch"] for r in records} == {12}
    agree = [np.mean(np.asarray(Image.open(tmp_path / "batched" / f"t{i:02d}" / "fused_mask.png"))
                     == np.asarray(Image.open(tmp_path / "single" / f"t{i:02d}" / "fused_mask.png")))
             for i in range(12)]
    assert min(agree) > 0.999, agree                             # batched convolutions round alike but for ties


def test_importing_danet_makes_openmp_wait_passively():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", "import os, danet; print(os.environ['OMP_WAIT_POLICY'])"],
                          capture_output=True, text=True, timeout=120, env={**env, "PYTHONPATH": str(REPO)})
    assert done.stdout.strip() == "PASSIVE", done.stderr


@pytest.mark.parametrize("command", ["predict", "attention", "measures"])
def test_out_help_says_one_run_per_folder_and_how_to_run_two(command):
    import re as _re

    text = " ".join(run(command, "--help", env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"}).output.split())
    assert _re.search(r"a second run on the same --out stops at once .*intended.* run two jobs at once with two "
                      r"folders", text), text
