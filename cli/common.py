"""Shared CLI helpers. Nothing here imports torch at module level, so ``--help`` stays fast."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


def user_errors(fn: Callable) -> Callable:
    """Turn T2VTurboError (and a few OS errors) into one red line and exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from rich.markup import escape

        from t2vturbo.errors import T2VTurboError, TrainingInterrupted

        try:
            return fn(*args, **kwargs)
        except TrainingInterrupted as err:
            console.print(f"[yellow]interrupted:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except T2VTurboError as err:
            console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except PermissionError as err:
            console.print(f"[bold red]error:[/] cannot write {escape(str(err.filename))}: permission denied; choose a writable "
                          "--output-dir/--out", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def quiet_libraries() -> None:
    """Keep third-party progress bars and advisory warnings out of our output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*deprecated.*", category=UserWarning)


def parse_device(device: str | None) -> str:
    if device:
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def is_tty() -> bool:
    return sys.stderr.isatty()
