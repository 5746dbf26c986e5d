"""``t2vturbo score``: reward scores for video files, as a table, JSON and CSV.

Exit codes: 0 every video was scored; 1 some files failed (unreadable, no prompt, scoring error) and the rest
was scored; 2 usage or user error (no videos, unknown reward, missing weights, bad prompts file).
"""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, parse_device, quiet_libraries, user_errors
from .main import app


@app.command()
@user_errors
def score(
    paths: list[str] = typer.Argument(..., help="Video files (mp4/gif/webm), folders (searched recursively) or globs."),
    reward: list[str] = typer.Option(
        None, "--reward", "-r", help="Reward name (repeatable): hpsv2, hpsv2.1, clip, pickscore, viclip, internvideo2; offline: tiny-image, tiny-video (the embedded world's)."
    ),
    reward_checkpoint: list[str] = typer.Option(
        None, "--reward-checkpoint", help="Weights for a reward as NAME=PATH (repeatable); default: the HF cache."
    ),
    prompts: Path | None = typer.Option(
        None, "--prompts", help="Prompts file: CSV/JSONL (prompt + video columns) or TXT (one per line, or NAME<TAB>PROMPT)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the full report as JSON."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Write per-video scores as CSV."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Videos per forward pass."),
    device: str | None = typer.Option(None, "--device", help="cuda, cuda:1, cpu, ... (default: cuda if available)."),
    dtype: str = typer.Option("float32", "--dtype", help="Reward model precision: float32, float16 or bfloat16."),
    max_frames: int | None = typer.Option(
        None, "--max-frames", min=1, help="Image rewards: score at most N evenly spaced frames per video (default: all)."
    ),
    workers: int = typer.Option(0, "--workers", min=0, help="Threads decoding videos ahead of the rewards (0: up to 4)."),
) -> None:
    """Score videos with one or more reward models (exit code 0: all scored, 1: some files failed, 2: usage error)."""
    from t2vturbo.errors import ConfigError

    if not reward:
        from t2vturbo.rewards import available_rewards

        raise ConfigError(f"name at least one reward with --reward NAME; available: {', '.join(available_rewards())}")
    from t2vturbo.names import torch_dtype

    run_dtype = torch_dtype(dtype, "--dtype")
    checkpoints = {}
    for item in reward_checkpoint or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--reward-checkpoint takes NAME=PATH (e.g. hpsv2.1=/weights/HPS_v2.1_compressed.pt), got {item!r}")
        if name not in reward:
            raise ConfigError(f"--reward-checkpoint names {name}, which is not among the --reward options ({', '.join(reward)})")
        checkpoints[name] = path

    quiet_libraries()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from t2vturbo.score import score_across_processes

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as progress:
        task = progress.add_task("scoring", total=None)

        def on_progress(done: int, total: int, name: str) -> None:
            progress.update(task, completed=done, total=total, description=f"scoring ({name})")

        report = score_across_processes(
            paths,
            reward,
            prompts_file=prompts,
            batch_size=batch_size,
            device=parse_device(device),
            dtype=run_dtype,
            checkpoints=checkpoints,
            max_frames=max_frames,
            workers=workers,
            on_progress=on_progress,
        )
    if report is None:  # another process of a torchrun launch: rank 0 reports
        raise typer.Exit(0)

    _print_table(report)
    for failure in report.failures:
        where = f" ({failure.reward})" if failure.reward else ""
        said = failure.error if Path(failure.path).name in failure.error else f"{failure.path}{where}: {failure.error}"
        console.print(f"[bold red]failed:[/] {said}", highlight=False, soft_wrap=True)
    if json_out:
        report.write_json(json_out)
        console.print(f"wrote {json_out}", highlight=False)
    if csv_out:
        report.write_csv(csv_out)
        console.print(f"wrote {csv_out}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


def _print_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(report.videos)} videos scored, {len({f.path for f in report.failures})} failed")
    table.add_column("video", overflow="fold")
    table.add_column("prompt", overflow="ellipsis", max_width=48)
    for name in report.rewards:
        table.add_column(name, justify="right")
    for v in report.videos:
        table.add_row(Path(v.path).name, v.prompt, *(_cell(v.scores.get(r)) for r in report.rewards))
    table.add_section()
    table.add_row("[bold]mean[/]", "", *(_cell(m) for m in report.means().values()))
    Console().print(table)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
