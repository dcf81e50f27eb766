"""The ``danet`` command line: parse the options, call the library, print the result.

One module per topic; each command body is a call into a library function that Python users can
make too. ``options`` holds the options every model-loading command shares, ``errors`` the one
way trouble is reported (``error: ...`` on stderr, exit code 1).

Help is click's plain layout (``rich_markup_mode=None``): typer 0.29's Rich panels print the
type of every parameter, so flags read ``--force <bool>`` as if they took a value.
"""
from __future__ import annotations

import typer

from danet.cli import attention, checkpoints, evaluate, predict, stats, train

HELP = "DANet attention inspector: train, evaluate, predict, export attention, convert and describe checkpoints."

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, help=HELP,
                  context_settings={"max_content_width": 120})

app.command()(predict.predict)
app.command()(attention.attention)
app.command()(attention.figure)
app.command()(attention.measures)
app.command("attention-stats")(stats.attention_stats)
app.command()(evaluate.evaluate)
app.command()(train.train)
app.command()(checkpoints.convert)
app.command()(checkpoints.info)


def main() -> None:
    """Console-script entry point (``danet = "danet.cli:main"``)."""
    app()
