"""Compare trained models side by side: the table of issue 15 (val mIoU, what switching PAM or CAM
off costs, how query-specific PAM is, forward time at 480x360) and each run's val curve.

    python -m benchmarks.model_recipes --data ../shared/data/camvid \\
        old=danet/weights/danet_mobilenetv2_camvid.safetensors new=runs/x/best.safetensors \\
        --log new=runs/x/log.jsonl --out benchmarks/model_recipes.md

Accuracy and attention measures come from ``danet.jobs.attention_stats.write_attention_stats`` on the
whole val split (the numbers ``danet attention-stats`` writes). Forward times are measured in
one process, the models taking turns round by round, so load on this shared machine falls on
all of them alike.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from danet import load
from danet.data.camvid import find_camvid
from danet.jobs.attention_stats import write_attention_stats

from .run import machine_lines


def named(text: str) -> tuple[str, str]:
    name, _, path = text.partition("=")
    if not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH")
    return name, path


def measures(loaded, data: Path, points: int) -> dict:
    """Val mIoU, ablation costs and the specificity measures of one model, from a full
    attention-stats run (points sampled per image, seed 0, as ``danet attention-stats``)."""
    with tempfile.TemporaryDirectory() as folder:
        report = write_attention_stats(loaded, data, Path(folder) / "stats", points_per_image=points)
    rows = {row["variant"]: row for row in report.summary["ablation"]}
    full = rows["full model"]
    overall = report.summary["overall"]
    return {
        "miou": 100 * full["miou_fused"], "alpha": full["alpha"], "beta": full["beta"],
        # costs: mIoU points lost when the module is switched off (negative: the model gains)
        "pam_off": -100 * rows["alpha=0 (PAM off)"]["delta_miou_fused"],
        "cam_off": -100 * rows["beta=0 (CAM off)"]["delta_miou_fused"],
        "both_off": -100 * rows["alpha=beta=0 (both off)"]["delta_miou_fused"],
        "changed_pam_off": 100 * overall["changed_pam_off"],
        "js_mean": overall["js_mean"], "mean_row_share": overall["mean_row_share"],
        "pam_contribution": overall["pam_contribution_mean"],
        "cam_effective_channels": overall["cam_effective_channels_mean"],
    }


def forward_times(models: dict, rounds: int, size=(360, 480)) -> dict[str, float]:
    """Median seconds of one forward at ``size`` per model, the models interleaved per round."""
    x = torch.randn(1, 3, *size)
    times = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(x)                                   # warm-up: allocator, kernels
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def val_curve(path: Path) -> str:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return ", ".join(f"{r['epoch']}: {100 * r['val_miou']:.1f}" for r in records if r.get("val_miou") is not None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=named, help="NAME=PATH of a checkpoint")
    parser.add_argument("--data", type=Path, default=find_camvid())
    parser.add_argument("--log", action="append", type=named, default=[], help="NAME=PATH of a run's log.jsonl")
    parser.add_argument("--points", type=int, default=20, help="query cells per val image")
    parser.add_argument("--rounds", type=int, default=10, help="forward timings per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.data is None:
        parser.error("no CamVid folder: pass --data or set $DANET_CAMVID")
    torch.set_num_threads(args.threads)

    started_load = os.getloadavg()
    loaded = {name: load(path, device="cpu") for name, path in args.models}
    results = {}
    for name, model in loaded.items():
        print(f"{name}: attention statistics on val", flush=True)
        results[name] = measures(model, args.data, args.points)
    print("forward timings", flush=True)
    for name, seconds in forward_times({n: m.model for n, m in loaded.items()}, args.rounds).items():
        results[name]["forward_s"] = seconds

    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
             f"`python -m benchmarks.model_recipes {' '.join(f'{n}={p}' for n, p in args.models)}`", "",
             *machine_lines(started_load, args.threads), "",
             "| model | val mIoU | cost of PAM off (alpha=0) | cost of CAM off (beta=0) | cost of both off | pixels changed, PAM off "
             "| alpha | beta | query specificity (JS from mean row) | mean-row share | PAM contribution "
             "| CAM effective channels | forward 480x360 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['miou']:.2f} | {r['pam_off']:+.2f} | {r['cam_off']:+.2f} | {r['both_off']:+.2f} "
                     f"| {r['changed_pam_off']:.2f}% | {r['alpha']:.3f} | {r['beta']:.3f} | {r['js_mean']:.3f} "
                     f"| {r['mean_row_share']:.3f} | {r['pam_contribution']:.3f} | {r['cam_effective_channels']:.2f} "
                     f"| {1000 * r['forward_s']:.0f} ms |")
    if args.log:
        lines += ["", "Val mIoU per epoch:", ""]
        lines += [f"- {name}: {val_curve(Path(path))}" for name, path in args.log]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
