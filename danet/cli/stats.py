"""``danet attention-stats``: same-class attention mass and lift, entropy, distance, specificity and PAM
contribution per class, a module ablation, and the per-image measures' means
(``danet.jobs.attention_stats.write_attention_stats``), shown as two tables and a few sentences; under ``torchrun``
the images are shared across the processes and rank 0 writes and prints the merged result."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from danet.runtime import distributed
from danet.jobs.attention_stats import overall_sentences, write_attention_stats
from danet.cli.errors import reports_errors
from danet.cli.options import AlignCorners, Checkpoint, Dataset, Device, Dilation, load_chosen
from danet.cli.ranges import ranged


@reports_errors
def attention_stats(
    data: Path = typer.Option(..., help="labelled folder in the CamVid layout (<split>/, <split>annot/)"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    split: str = typer.Option("val", help="which <split> folder to use"),
    points_per_image: int = ranged("attention-stats", "--points-per-image", 20, "query cells sampled per image "
                                   "(non-void)"),
    max_images: Optional[int] = ranged("attention-stats", "--max-images", None, "use at most this many images, "
                                       "spread evenly"),
    seed: int = ranged("attention-stats", "--seed", 0, "seed of the query sampling"),
    ablation: bool = typer.Option(True, help="also score the model with alpha=0 / beta=0 (on copies)"),
    ignore_index: Optional[int] = ranged("attention-stats", "--ignore-index", None,
                                         "void label id; default: the model's dataset's"),
    checkpoint: Checkpoint = None,
    dilation: Dilation = None,
    dataset: Dataset = None,
    align_corners: AlignCorners = None,
    device: Device = "auto",
):
    """Same-class attention mass and lift, entropy, distance, specificity and PAM contribution per class,
    plus a module ablation."""
    with distributed.process_group(device) as ctx:
        loaded = load_chosen(checkpoint, device=str(ctx.device), dilation=dilation, dataset=dataset,
                             align_corners=align_corners)
        report = write_attention_stats(loaded, data, out, split=split, points_per_image=points_per_image,
                                       max_images=max_images, seed=seed, ablation=ablation,
                                       ignore_index=ignore_index, progress=True)
    if not ctx.is_main:
        return
    print_tables(report.stats, report.summary["images"], split)
    for sentence in overall_sentences(report.stats.overall):
        typer.echo(sentence)
    typer.echo(f"-> {out}")


def print_tables(stats, images: int, split: str) -> None:
    console = Console(width=160)
    table = Table(title=f"PAM attention over {images} {split} images, {stats.summary[-1]['queries']} queries")
    for name in ("class", "n", "same-class GT", "chance", "lift", "same-class pred", "entropy/logN", "dist px",
                 "uniform px", "JS bits", "mean-row share", "PAM contrib"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for row in stats.summary:
        table.add_row(row["class"], str(row["queries"]), f"{row['same_class_mass_gt']:.3f}",
                      f"{row['chance_gt']:.3f}", _number(row.get("lift_gt"), ".3g"),
                      f"{row['same_class_mass_pred']:.3f}", f"{row['entropy_normalised']:.3f}",
                      f"{row['distance_pixels']:.1f}", f"{row['uniform_distance_pixels']:.1f}",
                      _number(row.get("js_from_mean"), ".3f"), _number(row.get("mean_row_share"), ".3f"),
                      _number(row.get("pam_contribution"), ".1%"))
    console.print(table)
    if not stats.ablation:
        return
    ablation = Table(title="mIoU with modules switched off (head recomputed; the model is not changed)")
    for name in ("variant", "fused %", "delta", "PAM output %", "CAM output %", "changed px %"):
        ablation.add_column(name, justify="left" if name == "variant" else "right")
    for row in stats.ablation:
        ablation.add_row(row["variant"], f"{row['miou_fused'] * 100:.2f}", f"{row['delta_miou_fused'] * 100:+.2f}",
                         f"{row['miou_pam_output'] * 100:.2f}", f"{row['miou_cam_output'] * 100:.2f}",
                         _number(row.get("changed_fraction_fused", 0.0) * 100, ".2f"))
    console.print(ablation)


def _number(value, spec: str) -> str:
    """A table cell: ``-`` for a missing or NaN value."""
    return "-" if value is None or value != value else format(value, spec)
