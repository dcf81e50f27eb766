"""``danet attention-stats``: how much PAM attends to same-class pixels, how spread and how far
its attention is, per class, and what switching PAM or CAM off costs in mIoU.

Definitions are in ``danet/attention_stats.py``. Files are written under temporary names and
renamed; ``summary.json`` comes last and marks a complete run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

SUMMARY_COLUMNS = ("class", "queries", "same_class_mass_gt", "same_class_mass_gt_median", "same_class_mass_gt_q25",
                   "same_class_mass_gt_q75", "chance_gt", "lift_gt", "same_class_mass_pred", "chance_pred",
                   "entropy", "entropy_normalised", "distance_cells", "distance_pixels",
                   "uniform_distance_cells", "uniform_distance_pixels")


def attention_stats(
    data: Path = typer.Option(..., help="labelled folder in the CamVid layout (<split>/, <split>annot/)"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    split: str = typer.Option("val", help="which <split> folder to use"),
    points_per_image: int = typer.Option(20, min=1, help="query cells sampled per image (non-void)"),
    max_images: Optional[int] = typer.Option(None, min=1, help="use at most this many images, spread evenly"),
    seed: int = typer.Option(0, help="seed of the query sampling"),
    ablation: bool = typer.Option(True, help="also score the model with alpha=0 / beta=0 (on copies)"),
    ignore_index: Optional[int] = typer.Option(None, help="void label id; default: the model's dataset's"),
    checkpoint: Optional[Path] = typer.Option(None, help="checkpoint file; default: the embedded model"),
    dilation: Optional[str] = typer.Option(
        None, help="layer4 dilation (2-4-4, multi-grid, os16, ...) for checkpoints that do not record it"),
    dataset: Optional[str] = typer.Option(None, help="label set (e.g. camvid), for checkpoints without one"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
):
    """Same-class attention mass, entropy and attended distance per class, plus a module ablation."""
    import time

    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from ..attention_stats import QUERY_COLUMNS, compute_attention_stats, rows_to_csv, select_evenly
    from ..batch import (BatchInputError, describe_model, load_model, one_line, prepare_output_dir, save_json,
                         save_text)
    from ..data.camvid import list_pairs
    from ..figures import attention_stats_figure, save as save_fig

    def fail(message: str):
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1)

    try:
        pairs = select_evenly(list_pairs(data, split), max_images)
        loaded = load_model(checkpoint, device, dilation, dataset, warn=_warn)
        model_info = describe_model(loaded)          # hash now: the file may be replaced later
        prepare_output_dir(out)
    except (BatchInputError, FileNotFoundError) as error:
        fail(one_line(error))
    start = time.perf_counter()
    try:
        stats = compute_attention_stats(loaded.model, loaded.meta, pairs, points_per_image, seed, ablation,
                                        ignore_index, progress=lambda items: tqdm(items, desc="attention-stats",
                                                                                  unit="image"))
    except (ValueError, OSError) as error:
        fail(one_line(error))
    if not stats.summary:
        fail(f"no non-void query cells in {len(pairs)} image(s); check --ignore-index and the labels")
    seconds = time.perf_counter() - start

    (out / "summary.json").unlink(missing_ok=True)
    save_text(out / "attention_stats.csv", rows_to_csv(stats.summary, SUMMARY_COLUMNS))
    save_text(out / "queries.csv", rows_to_csv(stats.query_rows(), QUERY_COLUMNS))
    save_text(out / "ablation.csv", rows_to_csv(stats.ablation))
    save_fig(attention_stats_figure(stats), out / "attention_stats.png", dpi=150)
    save_json(out / "summary.json", {
        "model": model_info, "data": str(data), "split": split, "images": len(pairs),
        "settings": stats.settings, "seconds": round(seconds, 1), "per_class": stats.summary,
        "ablation": stats.ablation,
        "files": ["attention_stats.csv", "queries.csv", "ablation.csv", "attention_stats.png"]})

    console = Console(width=120)
    table = Table(title=f"PAM attention over {len(pairs)} {split} images, "
                        f"{stats.summary[-1]['queries']} queries")
    for name in ("class", "n", "same-class GT", "chance", "same-class pred", "entropy/logN", "dist px", "uniform px"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for row in stats.summary:
        table.add_row(row["class"], str(row["queries"]), f"{row['same_class_mass_gt']:.3f}",
                      f"{row['chance_gt']:.3f}", f"{row['same_class_mass_pred']:.3f}",
                      f"{row['entropy_normalised']:.3f}", f"{row['distance_pixels']:.1f}",
                      f"{row['uniform_distance_pixels']:.1f}")
    console.print(table)
    ablation_table = Table(title="mIoU with modules switched off (model copies)")
    for name in ("variant", "fused %", "delta", "PAM output %", "CAM output %"):
        ablation_table.add_column(name, justify="left" if name == "variant" else "right")
    for row in stats.ablation:
        ablation_table.add_row(row["variant"], f"{row['miou_fused'] * 100:.2f}",
                               f"{row['delta_miou_fused'] * 100:+.2f}", f"{row['miou_pam_output'] * 100:.2f}",
                               f"{row['miou_cam_output'] * 100:.2f}")
    if stats.ablation:
        console.print(ablation_table)
    console.print(f"-> {out}")


def _warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def register(app: typer.Typer) -> None:
    app.command("attention-stats")(attention_stats)
