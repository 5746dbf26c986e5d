"""``t2vturbo prepare RECIPE [key.sub=value ...] --out DIR``: encode a video folder once for ``data.source: latents``."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from .common import console, quiet_libraries, user_errors
from .main import app


@app.command()
@user_errors
def prepare(
    recipe: Path = typer.Argument(..., help="The recipe you will train with (its model.teacher, video shape and data folder)."),
    overrides: list[str] = typer.Argument(None, help="Overrides as key.sub=value, e.g. data.path=videos/."),
    out: Path = typer.Option(..., "--out", "-o", help="The prepared folder to write (then train with data.source=latents data.path=DIR)."),
    windows: int = typer.Option(1, "--windows", help="Windows sampled from each clip (each a random start, frames at data.sample_fps)."),
    shard_clips: int = typer.Option(64, "--shard-clips", help="Clips per shard file (the unit of resuming and of splitting work across processes)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the dataset, the shards and what will be skipped; load no model, write nothing."),
) -> None:
    """Encode each clip's window(s) with the teacher's VAE and each caption with its text encoder, once, into
    sharded safetensors files plus an index: atomic, resumable (run it again), split across processes under
    torchrun / accelerate launch."""
    from t2vturbo.config import load_recipe
    from t2vturbo.latents import plan_prepare, prepare_dataset

    r = load_recipe(recipe, overrides or [])
    if dry_run:
        plan = plan_prepare(r, out, windows, shard_clips)
        console.print(f"[bold]prepare plan[/] for {recipe} -> {out}", highlight=False)
        for line in plan.describe():
            console.print("  " + line, highlight=False)
        console.print("dry run: nothing loaded, nothing written", highlight=False)
        return
    quiet_libraries()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    index = prepare_dataset(r, out, windows, shard_clips, rank=rank, world_size=world,
                            log=lambda m: console.print(m, highlight=False))
    if index is not None:
        import shlex

        kept = [o for o in overrides or [] if o.split("=", 1)[0].strip() not in ("data.source", "data.path")]
        again = shlex.join(["t2vturbo", "distill", str(recipe), *kept, "data.source=latents", f"data.path={out}"])
        console.print(f"done: {index['samples']} windows of {index['clips']} clips in {out}; train from them with: "
                      f"{again}", highlight=False, markup=False)
