"""Make a trained model the shipped default, its card measured rather than copied.

    python -m danet.jobs.publish runs/x/best.safetensors --data ../shared/data/camvid \\
        --command "danet train ..." --history "1: 71.1, ..." --note "..."

The file is loaded through ``danet.load`` (every check a stranger's file gets), evaluated on val
exactly as shipped (fp16 weights, single scale, no flip), and written with that figure as the
card's val mIoU; the figure the training loop measured in fp32 is kept beside it. ``--command``,
``--history`` and ``--note`` replace the card's rows when given (a model trained in stages has
more than one command). Maintainers only: the package never runs this.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch

from danet.checkpoints.save import save_model
from danet.jobs.evaluate import evaluate_loaded, scores_record
from danet.loader import load
from danet.weights import default_card, default_weights_path

EVALUATED_WITH = ("danet evaluate --data ../shared/data/camvid --split val "
                  "(single scale, no flip, fp16 weights as shipped)")


def publish(source: str | Path, data: str | Path, target: str | Path | None = None, *, command: str | None = None,
            history: str | None = None, note: str | None = None) -> dict:
    """Write ``source`` with its measured card to ``target`` (default: the package's file)."""
    target = Path(target) if target else default_weights_path()
    loaded = load(source, device="cpu")
    extra = dict(loaded.meta.extra)
    with tempfile.TemporaryDirectory() as folder:
        # the shipped precision: what users load is the fp16 file, so that is what is evaluated
        staged = Path(folder) / "staged.safetensors"
        save_model(loaded.model, loaded.meta, staged, dtype=torch.float16)
        shipped = load(staged, device="cpu")
        scores = scores_record(evaluate_loaded(shipped, data, "val"), shipped.meta.classes)
        if "val_miou" in extra and "val_miou_training_fp32" not in extra:
            extra["val_miou_training_fp32"] = extra["val_miou"]
        extra.update(
            val_miou=round(100 * scores["miou"], 2), val_pixel_accuracy=round(100 * scores["pixel_accuracy"], 2),
            val_iou={c: None if v is None else round(100 * v, 2) for c, v in scores["iou"].items()},
            evaluated_with=EVALUATED_WITH)
        for key, value in (("training_command", command), ("training_history", history), ("training_note", note)):
            if value is not None:
                extra[key] = value
    tmp = target.with_suffix(".tmp")
    save_model(shipped.model, dataclasses.replace(shipped.meta, layout="danet-lens", extra=extra), tmp,
               dtype=torch.float16)
    tmp.replace(target)
    default_card.cache_clear()
    return extra


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the trained model (best.safetensors of a run)")
    parser.add_argument("--data", type=Path, required=True, help="CamVid folder with val/ and valannot/")
    parser.add_argument("--target", type=Path, help="where to write (default: the package's default weights)")
    parser.add_argument("--command", help="the card's 'trained with' row")
    parser.add_argument("--history", help="the card's 'val mIoU per epoch' row")
    parser.add_argument("--note", help="the card's note")
    args = parser.parse_args(argv)
    extra = publish(args.source, args.data, args.target, command=args.command, history=args.history, note=args.note)
    print(f"val mIoU {extra['val_miou']} (fp16, as shipped)")
    if not args.target:
        print(default_card().markdown())


if __name__ == "__main__":
    main()
