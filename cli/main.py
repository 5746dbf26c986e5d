"""``t2vturbo``: distill, sample, score, export (and convert original checkpoints)."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="t2vturbo",
    help="T2V-Turbo: distill a 4-step text-to-video student with mixed reward feedback, sample, score, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """T2V-Turbo: distill a 4-step text-to-video student with mixed reward feedback, sample, score, export."""


# Each command lives in its own module and registers itself on `app`; core imports happen inside commands.
for _mod in ("distill_cmd", "sample_cmd", "score_cmd", "export_cmd", "convert_cmd", "prepare_cmd", "serve_cmd",
             "vbench_cmd"):
    try:
        importlib.import_module(f"{__package__}.{_mod}")
    except ModuleNotFoundError as _err:
        if _err.name != f"{__package__}.{_mod}":
            raise


def main() -> None:  # pragma: no cover - entry point
    app()
