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
    world_size: int | None = typer.Option(None, "--world-size", min=1, help="With --dry-run: plan the memory per process for this many processes (default: $WORLD_SIZE, else 1)."),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="With --dry-run: count the memory per process on the meta device (a few seconds)."),
) -> None:
    """Distill a 4-step student from a teacher: consistency distillation + mixed reward feedback."""
    from t2vturbo.config import load_recipe

    r = load_recipe(recipe, overrides or [], check=not dry_run)
    out = output_dir or Path(r.output_dir)
    if dry_run:
        from t2vturbo.config import downloads, missing_files, missing_packages
        from t2vturbo.plan import describe_plan

        console.print(f"[bold]plan[/] for {recipe} -> {out}", highlight=False)
        for line in describe_plan(r):
            console.print("  " + line, highlight=False)
        if memory:
            import os

            from t2vturbo.errors import T2VTurboError
            from t2vturbo.memory_plan import describe_memory

            quiet_libraries()
            world = world_size or int(os.environ.get("WORLD_SIZE", 1))
            try:
                for line in describe_memory(r, world):
                    console.print("  " + line, highlight=False, markup=False)
            except T2VTurboError as err:
                console.print(f"  memory plan: not counted ({err})", highlight=False, markup=False)
        needed = downloads(r)
        for cmd, present in needed:
            console.print(f"  {'cached' if present else 'download':<12} {cmd}", highlight=False)
        problems = missing_files(r) + missing_packages(r) + [f"not cached: {c}" for c, ok in needed if not ok]
        for p in problems:
            console.print(f"  [yellow]missing[/] {p}", highlight=False)
        if problems:
            console.print(f"[yellow]recipe valid; {len(problems)} thing(s) to provide before the run can start[/] "
                          "(dry run: nothing loaded, nothing written)", highlight=False)
            raise typer.Exit(1)
        console.print("[green]recipe valid; the run can start[/] (dry run: nothing loaded, nothing written)",
                      highlight=False)
        return
    quiet_libraries()
    import shlex

    from t2vturbo.distill import run_distill
    from t2vturbo.errors import TrainingInterrupted

    again = shlex.join(["t2vturbo", "distill", str(recipe), *(overrides or []), "--output-dir", str(out), "--resume"])
    try:
        # a progress bar only on a terminal; otherwise (a log file, CI, a cluster job) a plain line every few steps
        path = run_distill(r, out, resume=resume, log=lambda m: console.print(m, highlight=False),
                           progress=not no_progress and console.is_terminal,
                           explicit=tuple(o.split("=", 1)[0].strip() for o in overrides or []))
    except TrainingInterrupted as err:
        raise TrainingInterrupted(f"{err}: {again}", err.checkpoint, err.step) from None
    if path is not None:
        from t2vturbo.data import example_caption

        samples = out / "samples"
        caption = example_caption(r)
        prompt = shlex.quote(caption) if caption else '"YOUR PROMPT"'
        console.print(f"[green]done[/]: student in {path}; metrics in {out / 'metrics.jsonl'}, curves in "
                      f"{out / 'curves.png'}" + (f", samples in {samples}/" if samples.is_dir() else ""),
                      highlight=False)
        console.print(f"next: t2vturbo sample {prompt} --student {path}   |   "
                      + (f"t2vturbo score {samples}/ --reward tiny-video   |   "
                         if samples.is_dir() and r.model.teacher == "tiny" else "")
                      + f"t2vturbo export {path} --out exported", highlight=False, markup=False)
