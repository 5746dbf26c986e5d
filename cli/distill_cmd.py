"""``t2vturbo distill RECIPE [key.sub=value ...]``."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, quiet_libraries, user_errors
from .main import app


@app.command(context_settings={"allow_extra_args": False})
@user_errors
def distill(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/tiny.yaml or recipes/modelscope.yaml."),
    overrides: list[str] = typer.Argument(None, help="Overrides as key.sub=value, e.g. train.max_steps=20."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Where to write (default: recipe's output_dir)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in the output dir."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the recipe and print the plan; load no weights."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar (logs only)."),
) -> None:
    """Distill a 4-step student from a teacher: consistency distillation + mixed reward feedback."""
    from t2vturbo.config import load_recipe

    r = load_recipe(recipe, overrides or [], check=not dry_run)
    out = output_dir or Path(r.output_dir)
    if dry_run:
        from t2vturbo.config import downloads, missing_files
        from t2vturbo.distill import describe_plan

        console.print(f"[bold]plan[/] for {recipe} -> {out}", highlight=False)
        for line in describe_plan(r):
            console.print("  " + line, highlight=False)
        for cmd in downloads(r):
            console.print(f"  download     {cmd}", highlight=False)
        problems = missing_files(r)
        for p in problems:
            console.print(f"  [yellow]missing[/] {p}", highlight=False)
        state = "recipe valid" + (f"; {len(problems)} file(s) to provide before a real run" if problems else "")
        console.print(f"[green]{state}[/] (dry run: nothing loaded, nothing written)", highlight=False)
        return
    quiet_libraries()
    from t2vturbo.distill import run_distill

    path = run_distill(r, out, resume=resume, log=lambda m: console.print(m, highlight=False),
                       progress=not no_progress)
    if path is not None:
        console.print(f"[green]done[/]: student in {path}; metrics in {out / 'metrics.jsonl'}", highlight=False)
