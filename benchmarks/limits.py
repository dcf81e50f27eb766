"""Issue 26's figures in one run: what a stranger's input can cost, before and after.

    python -m benchmarks.limits                              # every section
    python -m benchmarks.limits --sections memory --size 480x360
    python -m benchmarks.limits --sections tiny --tiny-n 2000

Sections:

* ``memory``: ``danet predict`` of one frame with a 3,000-class model (random weights, MobileNetV2
  backbone, head width 8): peak RSS of a fresh process computing it the way predict did before
  (``model(x)``: three (K, H, W) score maps at input size, stacked, then ``argmax``) against
  ``predict_images`` now (grid logits, candidate classes upsampled a chunk at a time).
* ``sandbox``: ten threads each asking the sandbox to decode a hostile file at once (an
  8192x8192 PNG of 260 KB that decodes to 192 MB and converts through ~2 GB), with and without
  the shared memory budget: peak of the process tree (this process and every child, RSS summed,
  sampled every 20 ms), how many children ran at once, and how long a well-behaved job of another
  session waited.
* ``tiny``: ``predict_images`` over N tiny PNGs (16x12): images per second with each image
  decoded in its own sandbox child (one process start per image, the cost the issue measured),
  with the long-lived decoding worker, and in-process.

Every figure is measured in this run on this machine; the load average is printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# ---- memory: predict on 3,000 classes ------------------------------------------------------------
CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[4])
import danet
way, model_path, image_path = sys.argv[1], sys.argv[2], sys.argv[3]
loaded = danet.load(model_path, device="cpu")
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before = peak_mb()
start = time.perf_counter()
if way == "before":       # what danet predict computed before issue 26, minus the file writing
    from danet.data.images import load_image
    from danet.inspection import to_tensor
    from danet.render.overlays import colorize, mask_overlay
    picture = load_image(image_path)
    x = to_tensor(picture.array, loaded.meta.mean, loaded.meta.std)
    with torch.inference_mode():
        outputs = loaded.model(x)
    logits = torch.stack(list(outputs.values() if isinstance(outputs, dict) else outputs), 1).float().cpu().numpy()
    del outputs
    predictions = logits[0].argmax(1)
    for p in predictions:
        colorize(p, loaded.meta.palette), mask_overlay(picture.array, p, loaded.meta.palette, 0.5)
else:
    from danet.jobs.predict import predict_images
    import tempfile
    with tempfile.TemporaryDirectory() as out:
        report = predict_images(loaded, [image_path], out)
        assert report.processed, report.failure()
print(json.dumps({"peak_mb": peak_mb(), "loaded_mb": before, "seconds": time.perf_counter() - start}))
"""


def memory_section(size: tuple[int, int], classes: int) -> list[str]:
    from PIL import Image
    import numpy as np
    from conftest import make_tiny_model, save_tiny

    width, height = size
    with tempfile.TemporaryDirectory() as folder:
        model = save_tiny(make_tiny_model(classes, head_channels=8), Path(folder) / "many.safetensors")
        image = Path(folder) / "frame.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(image)
        rows = {}
        for way in ("after", "before"):
            done = subprocess.run([sys.executable, "-c", CHILD, way, str(model), str(image), str(ROOT)],
                                  capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if done.returncode != 0:
                rows[way] = None
                print(f"{way}: failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            rows[way] = json.loads(done.stdout.strip().splitlines()[-1])
    lines = [f"### Predict on {classes:,} classes, one {width}x{height} frame (peak RSS of a fresh process)", "",
             "| way | peak RSS (MB) | after loading the model (MB) | seconds |", "|---|---|---|---|"]
    for way, label in (("before", "before: `model(x)`, (3, K, H, W) scores, argmax"),
                       ("after", "now: `predict_images` (grid logits, chunked candidate classes)")):
        row = rows.get(way)
        lines.append(f"| {label} | " + (f"{row['peak_mb']:,.0f} | {row['loaded_mb']:,.0f} | {row['seconds']:.1f} |"
                                        if row else "failed (out of memory?) | - | - |"))
    if rows.get("before") and rows.get("after"):
        lines += ["", f"Peak RSS ratio before / now: **{rows['before']['peak_mb'] / rows['after']['peak_mb']:.1f}x**"]
    return lines


SANDBOX_CHILD = r"""
import io, json, sys, threading, time
sys.path.insert(0, sys.argv[3])
import psutil
from PIL import Image
from danet.data.isolated import load_image_isolated
from danet.safety import sandbox
jobs = int(sys.argv[1])
buffer = io.BytesIO()
Image.new("RGB", (8192, 8192), (10, 20, 30)).save(buffer, "PNG", optimize=True)
data = buffer.getvalue()
small = io.BytesIO(); Image.new("RGB", (64, 48), (1, 2, 3)).save(small, "PNG"); small = small.getvalue()
load_image_isolated(small)                                    # the fork server is up before timing

def tree(kind):
    me = psutil.Process()
    total = 0
    for process in [me, *me.children(recursive=True)]:
        try:
            total += getattr(process.memory_full_info(), kind)
        except psutil.Error:
            pass
    return total

base = {"pss": tree("pss"), "rss": tree("rss")}
peak = dict(base)
done = threading.Event()
def sample():
    while not done.wait(0.02):
        for kind in peak:
            peak[kind] = max(peak[kind], tree(kind))
threading.Thread(target=sample, daemon=True).start()
def upload(session):
    with sandbox.session_scope(session):
        load_image_isolated(data, name="big.png")
sandbox.ADMISSION.reset_peaks()
start = time.perf_counter()
threads = [threading.Thread(target=upload, args=(f"tab{i}",)) for i in range(jobs)]
for t in threads:
    t.start()
time.sleep(1.0)
v0 = time.perf_counter()
with sandbox.session_scope("visitor"):
    load_image_isolated(small, name="small.png")
visitor = time.perf_counter() - v0
for t in threads:
    t.join()
done.set()
print(json.dumps({"pss_mb": (peak["pss"] - base["pss"]) / 2**20, "rss_mb": (peak["rss"] - base["rss"]) / 2**20,
                  "seconds": time.perf_counter() - start, "visitor_s": visitor,
                  "children": sandbox.ADMISSION.peak_children, "budget_mb": sandbox.budget_mb()}))
"""


def sandbox_section(jobs: int, before_jobs: int) -> list[str]:
    rows = []
    for label, count, env in ((f"before: no shared budget, {before_jobs} uploads at once", before_jobs,
                               {"DANET_SANDBOX_BUDGET_MB": str(1 << 20), "DANET_SANDBOX_MAX_CHILDREN": "1000",
                                "DANET_SANDBOX_SESSION_SHARE": "1"}),
                              (f"now: shared budget (default), {jobs} uploads at once", jobs, {})):
        done = subprocess.run([sys.executable, "-c", SANDBOX_CHILD, str(count), "", str(ROOT)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **env})
        if done.returncode != 0:
            rows.append(f"| {label} | failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:120]} | | | | |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(f"| {label} | {r['pss_mb']:,.0f} | {r['rss_mb']:,.0f} | {r['children']} | {r['seconds']:.1f} | "
                    f"{r['visitor_s']:.2f} |")
    return ["### Concurrent hostile uploads: an 8192x8192 PNG of 215 KB each, through `load_image_isolated`", "",
            "Process tree = this process and every descendant (the fork server and its children), peak growth "
            "sampled every 20 ms; PSS counts pages the children share with the fork server once, RSS once per child.",
            "", "| run | tree peak PSS (MB) | tree peak RSS (MB) | children at once | seconds | another session's "
            "small upload (s) |", "|---|---|---|---|---|---|", *rows]


TINY_CHILD = r"""
import json, sys, time
from contextlib import contextmanager
sys.path.insert(0, sys.argv[3])
import danet                                  # first: it sets OpenMP's wait policy before torch loads
import torch
from danet.jobs.predict import predict_images
from danet.safety import outputs
folder, out, flags = sys.argv[1], sys.argv[2], sys.argv[4:]
if "per-file-fsync" in flags or "no-fsync" in flags:      # each file fsynced as it is written, as before
    @contextmanager
    def immediate(self, key=None):
        yield self
        self.keys.append((key, len(self.pending)))
    outputs.SyncGroup.collect = immediate
if "no-fsync" in flags:
    outputs._fsync = lambda path: None
    outputs._syncfs = lambda folder: True
loaded = danet.load(device="cpu")
start = time.perf_counter()
report = predict_images(loaded, [folder], out, batch_size=1 if "batch-1" in flags else None)
seconds = time.perf_counter() - start
assert not report.failed, report.failure()
print(json.dumps({"seconds": seconds, "images": len(report.processed), "threads": torch.get_num_threads()}))
"""
TINY_RUNS = (
    ("before: spinning OpenMP waits, batch 1, an fsync per file", {"OMP_WAIT_POLICY": "ACTIVE"},
     ["batch-1", "per-file-fsync"]),
    ("passive OpenMP waits, batch 1, an fsync per file", {}, ["batch-1", "per-file-fsync"]),
    ("passive, CPU batch (up to 64 thumbnails), an fsync per file", {}, ["per-file-fsync"]),
    ("**now**: passive, CPU batch, one flush per batch (`SyncGroup`)", {}, []),
    ("reference: passive, CPU batch, no fsync at all (not durable)", {}, ["no-fsync"]),
)


def tiny_section(count: int) -> list[str]:
    from PIL import Image
    import numpy as np

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        images = Path(folder) / "tiny"
        images.mkdir()
        rng = np.random.default_rng(0)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(images / f"t{i:05d}.png")
        for index, (label, env, flags) in enumerate(TINY_RUNS):
            environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            done = subprocess.run([sys.executable, "-c", TINY_CHILD, str(images), str(Path(folder) / f"out{index}"),
                                   str(ROOT), *flags], capture_output=True, text=True,
                                  env={**environment, "PYTHONPATH": str(ROOT), **env})
            if done.returncode != 0:
                rows.append(f"| {label} | failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:120]} | | |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(f"| {label} | {r['seconds']:.1f} | **{r['images'] / r['seconds']:.1f}** | "
                        f"{os.getloadavg()[0]:.1f} |")
    return [f"### `predict_images` over {count:,} tiny PNGs (16x12, upscaled to 43x32), shipped model, CPU", "",
            "Each run a fresh process, one after the other (the load average after each run is shown).", "",
            "| run | seconds | images / s | load after |", "|---|---|---|---|", *rows]


# ---- the command ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="memory,sandbox,tiny")
    parser.add_argument("--size", default="480x360", help="memory: the frame, WxH")
    parser.add_argument("--classes", type=int, default=3000)
    parser.add_argument("--tiny-n", type=int, default=300, help="tiny: how many images")
    parser.add_argument("--jobs", type=int, default=10, help="sandbox: concurrent hostile uploads, shared budget")
    parser.add_argument("--before-jobs", type=int, default=4,
                        help="sandbox: concurrent uploads without the budget (the issue measured 4: 8.65 GB)")
    args = parser.parse_args(argv)
    wanted = args.sections.split(",")
    load = os.getloadavg()
    lines = [f"# Issue 26 limits ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
             f"load {load[0]:.2f} at start)", ""]
    if "memory" in wanted:
        width, height = (int(v) for v in args.size.lower().split("x"))
        lines += memory_section((width, height), args.classes) + [""]
    if "sandbox" in wanted:
        lines += sandbox_section(args.jobs, args.before_jobs) + [""]
    if "tiny" in wanted:
        lines += tiny_section(args.tiny_n) + [""]
    lines.append(f"load average at end: {os.getloadavg()[0]:.2f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
