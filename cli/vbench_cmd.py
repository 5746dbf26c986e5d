"""``t2vturbo vbench-score``: VBench's Quality, Semantic and Total from its ``*_eval_results.json`` files.

Exit codes: 0 all 16 dimensions were found and every total computed; 1 some dimensions are missing (the rest is
printed and written with --json, the totals that need them are not computed); 2 bad input (a missing or malformed
file, an unknown dimension, a score outside 0-1).
"""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, user_errors
from .main import app


@app.command("vbench-score")
@user_errors
def vbench_score(
    paths: list[Path] = typer.Argument(..., metavar="PATH...", help="VBench's *_eval_results.json files, or folders searched for them (VBench.evaluate's --output_path)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the scores and totals as JSON (percent; missing dimensions null)."),
) -> None:
    """The 16 VBench dimensions, Quality, Semantic and Total, normalised and weighted as VBench's leaderboard does
    (exit code 0: complete, 1: dimensions missing, 2: bad input)."""
    from t2vturbo.safeio import save_json
    from t2vturbo.vbench import read_eval_results, vbench_totals

    scores, sources = read_eval_results(paths)
    totals = vbench_totals(scores, sources)
    _print_table(totals)
    if totals.missing:
        needs = [k for k, v in (("Quality", totals.quality), ("Semantic", totals.semantic), ("Total", totals.total))
                 if v is None]
        console.print(f"[yellow]missing:[/] {len(totals.missing)} of 16 dimensions ({', '.join(totals.missing)}); "
                      f"{', '.join(needs)} not computed", highlight=False, soft_wrap=True)
    if json_out is not None:
        save_json(totals.to_json(), json_out)
        console.print(f"wrote {json_out}", highlight=False)
    if totals.missing:
        raise typer.Exit(1)


def _print_table(totals) -> None:
    from rich.console import Console
    from rich.table import Table

    from t2vturbo.vbench import DIMENSIONS, QUALITY_DIMENSIONS

    table = Table(title="VBench")
    table.add_column("dimension")
    table.add_column("group")
    table.add_column("score %", justify="right")
    table.add_column("normalised x weight %", justify="right")
    for dim in DIMENSIONS:
        score = totals.scores.get(dim)
        group = "quality" if dim in QUALITY_DIMENSIONS else "semantic"
        if score is None:
            table.add_row(dim, group, "[yellow]missing[/]", "-")
        else:
            table.add_row(dim, group, f"{100 * score:.2f}", f"{100 * totals.normalized[dim]:.2f}")
    table.add_section()
    for name, value in (("Quality", totals.quality), ("Semantic", totals.semantic), ("Total", totals.total)):
        table.add_row(f"[bold]{name}[/]", "", "[yellow]not computed[/]" if value is None else f"{100 * value:.2f}", "")
    Console().print(table)
