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


def sandbox_section(jobs: int) -> list[str]:
    return ["(sandbox section: to come)"]


def tiny_section(count: int) -> list[str]:
    return ["(tiny section: to come)"]


# ---- the command ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="memory,sandbox,tiny")
    parser.add_argument("--size", default="480x360", help="memory: the frame, WxH")
    parser.add_argument("--classes", type=int, default=3000)
    parser.add_argument("--tiny-n", type=int, default=300, help="tiny: how many images")
    parser.add_argument("--jobs", type=int, default=10, help="sandbox: concurrent hostile jobs")
    args = parser.parse_args(argv)
    wanted = args.sections.split(",")
    load = os.getloadavg()
    lines = [f"# Issue 26 limits ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
             f"load {load[0]:.2f} at start)", ""]
    if "memory" in wanted:
        width, height = (int(v) for v in args.size.lower().split("x"))
        lines += memory_section((width, height), args.classes) + [""]
    if "sandbox" in wanted:
        lines += sandbox_section(args.jobs) + [""]
    if "tiny" in wanted:
        lines += tiny_section(args.tiny_n) + [""]
    lines.append(f"load average at end: {os.getloadavg()[0]:.2f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
