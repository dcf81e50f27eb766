"""The five benchmark sections. Each returns a ``Table``; ``run.py`` prints and saves them.

1. DA head alone, ours vs the reference PAM: time and peak memory per feature grid.
2. Whole-model forward of the default model: time and where it goes.
3. Click latency: PAM rows from a cached result vs rows from a stored N x N matrix.
4. Growth with N: fitted exponents, and PAM aggregation alone around the explicit/SDPA switch.
5. The app's cache: a rerun after a click vs the first forward.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from danet.render import overlays as viz
from danet.data.palettes import generic_dataset
from danet.inspection import inspect_image
from danet.inspection.memory import available_bytes, pam_method_for, pam_working_bytes
from danet.models import DANetConfig, create_model
from danet.maps.dot_softmax import EXPLICIT_MAX_POSITIONS
from danet.models import pam_aggregate, pam_attention_explicit

from .measure import PieceTimer, interleaved_medians, median_seconds, run_probe
from .probe import HEAD_CONVS, probe_head, probe_head_times
from .reference import CHUNK_ROWS, LABELS, METHODS, ReferencePAM, chunked_aggregate, make_head
from .report import Table, fit_exponent, megabytes


@dataclass
class Plan:
    """Sizes and repeats of one run; ``quick`` keeps every section but makes it tiny."""

    quick: bool = False
    device: str = "cpu"
    in_process: bool = False                 # measure in this process instead of fresh ones
    threads: int | None = None               # torch intra-op threads (None: torch's default)
    head_channels: tuple[int, int, int] = (2048, 512, 19)   # in, inter, classes (ResNet heads)
    head_grids: list[tuple[int, int]] = field(default_factory=lambda: [(45, 60), (64, 128), (96, 96), (128, 256)])
    growth_extra: list[tuple[int, int]] = field(default_factory=lambda: [(30, 40), (64, 64)])
    sweep_positions: list[int] = field(default_factory=lambda: [2048, 2700, 4096, 6144, 8192, 12288])
    sweep_channels: int = 512
    model_sizes: list[tuple[int, int]] = field(default_factory=lambda: [(360, 480), (512, 1024)])
    paper_model: bool = True                 # also time the ResNet-50 config of the paper
    repeats: int = 3
    click_repeats: int = 30
    memory_headroom: float = 0.8

    @classmethod
    def quick_plan(cls, device: str = "cpu", threads: int | None = 1) -> "Plan":
        # One thread by default: on a busy 2-core machine two OpenMP threads can make small
        # ops 100x slower (each barrier waits for a time slice), and the smoke test must be quick.
        return cls(quick=True, device=device, in_process=True, threads=threads, head_channels=(128, 32, 5),
                   head_grids=[(8, 12), (12, 16), (16, 16), (16, 32)], growth_extra=[(6, 8), (8, 8)],
                   sweep_positions=[128, 256, 512], sweep_channels=32, model_sizes=[(64, 96), (96, 128)],
                   paper_model=False, repeats=1, click_repeats=3)

    def repeats_for(self, positions: int) -> int:
        return 1 if positions > 10_000 else self.repeats


# ---- 1 and 4: the DA head ----------------------------------------------------------------------
def head_memory_need(positions: int, method: str, plan: Plan) -> int:
    """Rough bytes one head probe needs, to skip sizes the machine cannot hold."""
    cin, inter, _ = plan.head_channels
    path = {"reference": "explicit", "chunked": "chunked"}.get(method) or pam_method_for(positions)
    if path in ("explicit", "sdpa"):
        pam = pam_working_bytes(positions, inter // 8, inter, path, plan.device)
    else:                                               # a query-chunked path: a few blocks of rows
        pam = 2 * 4 * CHUNK_ROWS * positions
    return pam + 4 * positions * (2 * cin + 10 * inter)


def measure_head(grid, method: str, plan: Plan) -> dict:
    """Peak memory of one method at one grid, in a fresh process (one run: memory does not vary)."""
    cin, inter, classes = plan.head_channels
    positions = grid[0] * grid[1]
    need, free = head_memory_need(positions, method, plan), available_bytes(plan.device)
    if need > plan.memory_headroom * free:
        return {"skipped": f"{grid[0]}x{grid[1]} {method}: needs ~{need / 2**30:.1f} GiB, "
                           f"{free / 2**30:.1f} GiB free"}
    spec = {"probe": "head", "grid": list(grid), "method": method, "in_channels": cin,
            "inter_channels": inter, "num_classes": classes, "repeats": 1,
            "device": plan.device, "threads": plan.threads}
    return probe_head(spec) if plan.in_process else run_probe(spec)


def time_heads(grid, methods: list[str], plan: Plan) -> dict:
    """Times of ``methods`` at one grid, taking turns in one process: {method: result}."""
    cin, inter, classes = plan.head_channels
    spec = {"probe": "head_times", "grid": list(grid), "methods": methods, "in_channels": cin,
            "inter_channels": inter, "num_classes": classes, "repeats": plan.repeats,
            "device": plan.device, "threads": plan.threads}
    return probe_head_times(spec) if plan.in_process else run_probe(spec)


def head_results(plan: Plan, log) -> dict:
    """Every head measurement the sections need, once: {(grid, method): result}.

    Memory: one fresh process per (grid, method). Time: below 10k positions, the methods take
    turns in one process (``plan.repeats`` runs each); above, each method's single memory run is
    also its time (a second pass would double the longest part of the benchmark).
    """
    grids = sorted(set(plan.head_grids) | set(plan.growth_extra), key=lambda g: g[0] * g[1])
    results = {}
    for index, grid in enumerate(grids):
        shift = index % len(METHODS)                     # rotate the order: no method always runs last
        for method in METHODS[shift:] + METHODS[:shift]:
            log(f"head {grid[0]}x{grid[1]} {method}: peak memory")
            results[grid, method] = measure_head(grid, method, plan)
        fit = [m for m in METHODS if "skipped" not in results[grid, m]]
        if grid[0] * grid[1] <= 10_000 and fit:
            log(f"head {grid[0]}x{grid[1]}: times, methods taking turns")
            for method, timing in time_heads(grid, fit, plan).items():
                results[grid, method].update(timing)
    return results


def check_same_outputs(plan: Plan) -> float:
    """Largest |ours - reference| over the head's outputs on a small grid (both PAM paths)."""
    cin, inter, classes = plan.head_channels
    worst = 0.0
    side = int(EXPLICIT_MAX_POSITIONS ** 0.5) + 1          # just above the switch: SDPA path
    with torch.inference_mode():
        for grid in ((8, 12), (side, side) if not plan.quick else (8, 12)):
            x = torch.randn(1, cin, *grid, generator=torch.Generator().manual_seed(2))
            ours = make_head(cin, inter, classes, "ours").inspect(x)
            reference = make_head(cin, inter, classes, "reference").inspect(x)
            worst = max(worst, max(float((ours.logits[name] - reference.logits[name]).abs().max())
                                   for name in ours.logits))
    return worst


def _ratio(numerator, denominator):
    return numerator / denominator if numerator and denominator else None


def head_table(results: dict, plan: Plan, same_outputs: float) -> Table:
    cin, inter, classes = plan.head_channels
    table = Table("head", f"1. DA head alone (in {cin}, inter {inter}, key {inter // 8}, {classes} classes), "
                          f"{plan.device}",
                  ["feature grid", "N", "our PAM path", "ours time", "reference time", "ours / reference time",
                   "ours peak MiB", "reference peak MiB", "reference / ours memory",
                   "candidate time", "candidate peak MiB"])
    skipped, slowest = [], None
    for grid in plan.head_grids:
        ours, ref, cand = (results[grid, m] for m in METHODS)
        for r in (ours, ref, cand):
            if "skipped" in r:
                skipped.append(r["skipped"])
        get = lambda r, k: r.get(k) if "skipped" not in r else None      # noqa: E731
        time_ratio = _ratio(get(ours, "seconds"), get(ref, "seconds"))
        memory_ratio = _ratio(get(ref, "peak_bytes"), get(ours, "peak_bytes"))
        if time_ratio and (slowest is None or time_ratio > slowest[0]):
            slowest = (time_ratio, grid)
        table.add(f"{grid[0]}x{grid[1]}", grid[0] * grid[1], get(ours, "pam_path"),
                  get(ours, "seconds"), get(ref, "seconds"), time_ratio,
                  megabytes(get(ours, "peak_bytes")) if get(ours, "peak_bytes") else None,
                  megabytes(get(ref, "peak_bytes")) if get(ref, "peak_bytes") else None, memory_ratio,
                  get(cand, "seconds"), megabytes(get(cand, "peak_bytes")) if get(cand, "peak_bytes") else None)
    sample = next((r for r in results.values() if "measure" in r), {})
    table.notes.append(f"Times: seconds of `DAHead.inspect` on a random feature map, median of {plan.repeats} "
                       f"runs with the three methods taking turns in one process (above 10k positions: one "
                       f"run each, from the memory measurement). Memory: the {sample.get('measure', '?')} of "
                       f"one call, each (size, method) in "
                       f"{'this process (quick mode)' if plan.in_process else 'a fresh process'}.")
    table.notes.append("Methods: " + "; ".join(f"**{m}** = {LABELS[m]}" for m in METHODS) + ".")
    table.notes.append(f"Same weights for all three; largest |ours - reference| over the three outputs: "
                       f"{same_outputs:.1e}. Where our path is explicit (N <= {EXPLICIT_MAX_POSITIONS}) ours "
                       f"and the reference do the same products, so their time ratio there is this run's noise floor.")
    largest = plan.head_grids[-1]
    big = table.rows[-1]
    if big[8] is not None:
        verdict = "met" if big[8] >= 10 else "NOT met"
        table.notes.append(f"Target: at {largest[0]}x{largest[1]} peak memory >= 10x lower than the reference: "
                           f"{big[8]:.1f}x, {verdict}.")
    if slowest is not None:
        verdict = "met" if slowest[0] <= 1.05 else "NOT met"
        table.notes.append(f"Target: at no size slower than the reference by more than 5%: slowest ratio "
                           f"{slowest[0]:.2f} at {slowest[1][0]}x{slowest[1][1]}, {verdict}.")
    table.notes += [f"Skipped: {s}" for s in skipped]
    return table


def growth_table(results: dict, plan: Plan) -> Table:
    grids = sorted({g for g, _ in results}, key=lambda g: g[0] * g[1])
    table = Table("growth", "4. Growth with the number of positions N (DA head, same runs as section 1)",
                  ["method", "N measured", "time exponent", "peak memory exponent", "PAM-piece time exponent",
                   "time at largest N", "peak MiB at largest N"])
    for method in METHODS:
        done = [(g, results[g, method]) for g in grids if "skipped" not in results[g, method]]
        if not done:
            continue
        sizes = [g[0] * g[1] for g, _ in done]
        table.add(LABELS[method], ", ".join(str(n) for n in sizes),
                  fit_exponent(sizes, [r["seconds"] for _, r in done]),
                  fit_exponent(sizes, [r["peak_bytes"] for _, r in done]),
                  fit_exponent(sizes, [r["pieces"].get("PAM", 0) for _, r in done]),
                  done[-1][1]["seconds"], megabytes(done[-1][1]["peak_bytes"]))
    table.notes.append("Exponents are least-squares slopes of log(value) on log(N): 1 = linear, 2 = quadratic. "
                       "The head's convolutions are linear in N, so the whole-head time exponent sits between "
                       "1 and 2; the PAM-piece column isolates the attention (projections included).")
    return table


def chunked_method(query, key, value):
    return chunked_aggregate(query, key, value, CHUNK_ROWS)


def pam_sweep_table(plan: Plan, log) -> Table:
    """PAM aggregation alone (no convs): explicit vs SDPA path vs candidate, around the switch."""
    c = plan.sweep_channels
    d = c // 8
    table = Table("sweep", f"4b. PAM aggregation alone, C = {c}, d = {d}, {plan.device}: where SDPA starts to pay",
                  ["N", "explicit", "sdpa (package code)", "sdpa / explicit", "candidate (chunked)",
                   "candidate / explicit", "package picks"])
    crossover = None
    generator = torch.Generator().manual_seed(3)
    for n in plan.sweep_positions:
        log(f"PAM sweep N={n}")
        query = (torch.randn(1, n, d, generator=generator) / 4).to(plan.device)
        key = (torch.randn(1, n, d, generator=generator) / 4).to(plan.device)
        value = torch.randn(1, n, c, generator=generator).to(plan.device)
        functions = {"explicit": lambda: pam_aggregate(query, key, value, "explicit"),
                     "sdpa": lambda: pam_aggregate(query, key, value, "sdpa"),
                     "chunked": lambda: chunked_method(query, key, value)}
        with torch.inference_mode():
            for fn in functions.values():
                fn()                                                         # warm-up
            times = interleaved_medians(functions, plan.repeats, plan.device)
        ratio = times["sdpa"] / times["explicit"]
        if crossover is None and ratio <= 1.0:
            crossover = n
        table.add(n, times["explicit"], times["sdpa"], ratio, times["chunked"],
                  times["chunked"] / times["explicit"], pam_method_for(n))
    table.notes.append(f"Median of {plan.repeats} runs, seconds, in this process, the three methods taking turns. "
                       f"Random q, k, v; no convolutions. 'package picks' is `pam_aggregate`'s own choice on "
                       f"{plan.device}; it leaves the explicit product above "
                       f"EXPLICIT_MAX_POSITIONS = {EXPLICIT_MAX_POSITIONS}.")
    table.notes.append("Crossover (first N where SDPA is no slower than explicit): "
                       + (f"N = {crossover}." if crossover else "none in the measured range: SDPA was slower "
                          "than explicit at every N measured here."))
    return table


# ---- 2: the whole model ------------------------------------------------------------------------
def default_model():
    """The shipped model (weights if present; the config alone is enough for timing)."""
    try:
        import danet

        loaded = danet.load(device="cpu")
        return loaded.model.eval(), "shipped default (MobileNetV2 CamVid weights)"
    except Exception:  # noqa: BLE001 - weights absent or being rewritten by training
        from danet.models import danet_mobilenetv2

        return danet_mobilenetv2().eval(), "shipped default config (MobileNetV2, random weights)"


def sample_image(height: int, width: int) -> np.ndarray:
    """A CamVid frame resized to the size when the data is present, else smooth noise."""
    try:
        from danet.data.camvid import find_camvid, list_pairs

        root = find_camvid()
        if root is not None:
            path = list_pairs(root, "val")[0][0]
            return np.array(Image.open(path).convert("RGB").resize((width, height), Image.BILINEAR))
    except Exception:  # noqa: BLE001 - any problem with the data: fall back to noise
        pass
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (max(height // 8, 1), max(width // 8, 1), 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def time_model(model, image: np.ndarray, repeats: int, device) -> tuple[dict, dict, tuple[int, int]]:
    """Median ``inspect_image`` seconds with the package PAM and with the reference PAM (taking
    turns), each piece's share of the package runs' time (by wrapping the pieces), the grid."""
    timer = PieceTimer(device)
    timer.wrap_module(model.backbone, "backbone")
    for name in HEAD_CONVS:
        timer.wrap_module(getattr(model.head, name), "head convs")
    ours_pam = model.head.pam
    timer.wrap(ours_pam, "attend", "PAM")
    timer.wrap(model.head.cam, "attend", "CAM")
    reference_pam = ReferencePAM(ours_pam)

    timed_total = [0.0]                      # wall time of the runs whose pieces were timed

    def run_with(pam, timed: bool):
        model.head.pam, timer.enabled = pam, timed
        start = time.perf_counter()
        try:
            inspect_image(model, image)
        finally:
            model.head.pam, timer.enabled = ours_pam, True
            if timed:
                timed_total[0] += time.perf_counter() - start

    try:
        grid = inspect_image(model, image).grid_size                          # warm-up
        run_with(reference_pam, False)
        timer.reset()
        seconds = interleaved_medians({"ours": lambda: run_with(ours_pam, True),
                                       "reference": lambda: run_with(reference_pam, False)}, repeats, device)
        shares = {piece: total / timed_total[0] for piece, total in timer.seconds.items()}
        return seconds, shares, grid
    finally:
        for module in (model.backbone, ours_pam, model.head.cam, *(getattr(model.head, n) for n in HEAD_CONVS)):
            module.__dict__.pop("forward", None)
            module.__dict__.pop("attend", None)


def model_table(plan: Plan, log) -> Table:
    table = Table("model", f"2. Whole-model forward (`inspect_image`), {plan.device}",
                  ["model", "input (WxH)", "grid N", "ours", "reference PAM", "ours / reference",
                   "backbone", "head convs", "PAM", "CAM", "upsample + rest"])
    model, label = default_model()
    models = [(label, model)]
    if plan.paper_model:
        models.append(("paper config (dilated ResNet-50, head 512, 19 classes, random weights)",
                       create_model(DANetConfig()).eval()))
    for name, model in models:
        model = model.to(plan.device)
        for height, width in plan.model_sizes:
            log(f"model {name[:30]} {width}x{height}")
            image = sample_image(height, width)
            with torch.inference_mode():
                times, pieces, grid = time_model(model, image, plan.repeats, plan.device)
            seconds, reference = times["ours"], times["reference"]
            positions = grid[0] * grid[1]
            shares = [100 * pieces.get(p, 0) for p in ("backbone", "head convs", "PAM", "CAM")]
            table.add(name, f"{width}x{height}", positions, seconds, reference, seconds / reference,
                      *(f"{s:.0f}%" for s in shares), f"{max(0.0, 100 - sum(shares)):.0f}%")
    table.notes.append(f"Median of {plan.repeats} forwards, seconds. Shares: wall time inside each piece "
                       "(timed by wrapping `model.backbone`, the head convs, `head.pam.attend`, "
                       "`head.cam.attend`) over the whole forward; PAM includes its q/k/v projections; "
                       "'upsample + rest' is the logits' upsampling to input size, normalisation and copies.")
    table.notes.append("'reference PAM' is the same model with `head.pam` swapped for the reference computation; "
                       "the two take turns, run by run. Where both use the explicit product (N <= "
                       f"{EXPLICIT_MAX_POSITIONS}) their ratio shows this run's noise floor.")
    return table


# ---- 3 and 5: clicks and the app's cache -----------------------------------------------------
def random_points(rng, count: int, height: int, width: int) -> list[tuple[int, int]]:
    return [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(count)]


def click_table(plan: Plan, log) -> tuple[Table, Table]:
    model, _ = default_model()
    model = model.to(plan.device)
    clicks = Table("clicks", "3. Click latency: cached result -> PAM rows upsampled to the image, cpu",
                   ["input (WxH)", "grid N", "rows", "ours (Q/K kept)", "stored N x N matrix",
                    "ours state KiB", "stored matrix MiB", "matrix build (once)"])
    cache = Table("cache", "5. The app's cache: rerun after a click vs the first forward, cpu",
                  ["input (WxH)", "points", "first forward + views", "rerun after a click",
                   "first / rerun", "forward alone"])
    rng = np.random.default_rng(4)
    target = None
    for height, width in plan.model_sizes:
        log(f"clicks {width}x{height}")
        image = sample_image(height, width)
        result = inspect_image(model, image)                 # the cached result the app keeps
        n = result.num_positions
        start = time.perf_counter()
        matrix = pam_attention_explicit(result.pam_query[None], result.pam_key[None])[0]
        build = time.perf_counter() - start

        def stored_rows(points):
            cells = [result.pixel_to_cell(x, y) for x, y in points]
            index = torch.tensor([r * result.grid_size[1] + c for r, c in cells])
            return result.upsample_maps(matrix[index].reshape(len(points), *result.grid_size).numpy())

        for count in (1, 6):
            batches = [random_points(rng, count, height, width) for _ in range(plan.click_repeats)]
            ours = _median_over(batches, result.rows_upsampled)
            stored = _median_over(batches, stored_rows)
            state = (result.pam_query.numel() + result.pam_key.numel()) * 4
            clicks.add(f"{width}x{height}", n, count, ours, stored, state / 1024,
                       megabytes(matrix.numel() * 4), build)
            if count == 1 and (height, width) == plan.model_sizes[0]:
                target = ours
        del matrix
        # 5: first display = forward + class views; rerun = rows + heatmaps + markers only.
        palette = generic_dataset(model.config.num_classes).palette_array()

        def first_display():
            fresh = inspect_image(model, image)
            views = {w: viz.mask_overlay(image, fresh.prediction(w), palette, 0.5) for w in ("fused", "pam", "cam")}
            views["disagreement"] = viz.colorize(viz.disagreement(*(fresh.prediction(w) for w in
                                                                    ("fused", "pam", "cam"))), viz.DISAGREEMENT_PALETTE)
            return viz.mark_points(views["fused"], [])

        both = interleaved_medians({"forward": lambda: inspect_image(model, image), "first": first_display},
                                   plan.repeats)
        forward, first = both["forward"], both["first"]
        for count in (1, 6):
            points = random_points(rng, count, height, width)

            def rerun():
                maps = result.rows_upsampled(points)
                panels = [viz.mark_points(viz.heatmap_overlay(image, m, 0.5, "jet", vmin=0.0, vmax=float(m.max())),
                                          [p]) for p, m in zip(points, maps)]
                return viz.mark_points(image, points), panels

            again = median_seconds(rerun, plan.click_repeats)
            cache.add(f"{width}x{height}", count, first, again, first / again, forward)
    clicks.notes.append(f"Median over {plan.click_repeats} clicks at random pixels, seconds. 'ours' = "
                        "`InspectionResult.rows_upsampled` (one (P, d) x (d, N) product, softmax, bilinear "
                        "upsampling); 'stored N x N matrix' = what a viewer that keeps the explicit attention "
                        "does: index the rows, then the same upsampling.")
    if target is not None:
        h, w = plan.model_sizes[0]
        verdict = "met" if target < 0.050 else "NOT met"
        clicks.notes.append(f"Target: one row at {w}x{h} in < 50 ms on the CPU: {target * 1000:.1f} ms, {verdict}.")
    cache.notes.append("'first forward + views' = `inspect_image` + class overlays of the three outputs and the "
                       "disagreement map (what the app computes once per image); 'rerun after a click' = rows "
                       "of every point from the cached result + one heatmap overlay and markers per point "
                       "(`danet.render.overlays`). 'forward alone' is what every rerun would cost without the cache.")
    return clicks, cache


def _median_over(batches, fn) -> float:
    times = []
    for points in batches:
        start = time.perf_counter()
        fn(points)
        times.append(time.perf_counter() - start)
    return float(np.median(times))
