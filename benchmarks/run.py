"""One command for every benchmark: ``python -m benchmarks.run [--quick] [--out FILE]``.

Prints the tables and writes them, with the machine and its load, to a markdown file
(default ``benchmarks/results.md``). ``--quick`` runs every section at toy sizes in this
process (seconds; used by ``tests/test_bench_smoke.py``); the full run measures each head
size in a fresh process and takes a few minutes on a quiet 2-core CPU.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import sections
from .measure import can_reset_peak, threads
from .report import Table

DEFAULT_OUT = Path(__file__).resolve().parent / "results.md"
SECTIONS = ("head", "growth", "sweep", "model", "clicks", "cache", "measures")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_lines(started_load: tuple[float, float, float], thread_count: int) -> list[str]:
    lines = [f"- CPU: {cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__}, "
             f"{thread_count} intra-op thread{'s' if thread_count != 1 else ''} used",
             f"- load average (1/5/15 min) at start: {started_load[0]:.2f} / {started_load[1]:.2f} / "
             f"{started_load[2]:.2f}; at end: " + " / ".join(f"{v:.2f}" for v in os.getloadavg())]
    if torch.cuda.is_available():
        lines.append(f"- GPU: {torch.cuda.get_device_name(0)}")
    busy = os.getloadavg()[0]
    if busy > 0.5 * (os.cpu_count() or 1):
        lines.append("- **the machine was busy during this run (load average above half the cores): "
                     "absolute times are inflated; ratios measured side by side are less affected**")
    return lines


def run(plan: sections.Plan, wanted: tuple[str, ...], log) -> list[Table]:
    tables: list[Table] = []
    if "head" in wanted or "growth" in wanted:
        results = sections.head_results(plan, log)
        if "head" in wanted:
            tables.append(sections.head_table(results, plan, sections.check_same_outputs(plan)))
        if "growth" in wanted:
            tables.append(sections.growth_table(results, plan))
    if "sweep" in wanted:
        tables.append(sections.pam_sweep_table(plan, log))
    if "model" in wanted:
        tables.append(sections.model_table(plan, log))
    if "clicks" in wanted or "cache" in wanted:
        clicks, cache = sections.click_table(plan, log)
        tables += [t for t in (clicks, cache) if t.key in wanted]
    if "measures" in wanted:
        from .measures import measures_table

        tables.append(measures_table(plan, log))
    return tables


def render(tables: list[Table], plan: sections.Plan, seconds: float, started_load, command: str,
           thread_count: int) -> str:
    head = [f"# danet-lens benchmarks{' (quick smoke run: toy sizes, not results)' if plan.quick else ''}", "",
            f"`{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {seconds / 60:.1f} min.", "",
            *machine_lines(started_load, thread_count), ""]
    return "\n".join(head) + "\n" + "\n".join(t.markdown() for t in tables)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes, in-process: a smoke test in seconds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown file (default {DEFAULT_OUT})")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice, all cores; --quick: 1)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the CPU, and the GPU too when there is one")
    args = parser.parse_args(argv)
    wanted = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if not can_reset_peak():
        parser.error("peak memory is read from /proc/self/clear_refs and VmHWM: this needs Linux")
    devices = ["cpu"] if args.device == "cpu" else []
    if args.device in ("auto", "cuda"):
        if torch.cuda.is_available():
            devices = (["cpu"] if args.device == "auto" else []) + ["cuda"]
        elif args.device == "cuda":
            parser.error("--device cuda: no GPU is available")
        else:
            devices = ["cpu"]

    def log(message: str) -> None:
        print(f"  [{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    started, started_load = time.perf_counter(), os.getloadavg()
    tables: list[Table] = []
    for device in devices:
        plan = (sections.Plan.quick_plan(device, args.threads or 1) if args.quick
                else sections.Plan(device=device, threads=args.threads))
        chosen = wanted if device == "cpu" else tuple(s for s in wanted if s in ("head", "growth", "sweep", "model"))
        with threads(plan.threads):
            device_tables = run(plan, chosen, log)
            thread_count = torch.get_num_threads()
        if device != "cpu":
            for table in device_tables:
                table.key = f"{table.key}-{device}"
                table.title += " (GPU)"
        tables += device_tables
    command = " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])])
    text = render(tables, plan, time.perf_counter() - started, started_load, command, thread_count)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
