"""``t2vturbo export STUDENT --format diffusers|lora --out DIR``."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from .common import console, quiet_libraries, user_errors
from .main import app


@app.command()
@user_errors
def export(
    student: Path = typer.Argument(..., help="Student: a `t2vturbo distill` folder, a peft LoRA, or an official "
                                             "T2V-Turbo unet_lora.pt."),
    format: str = typer.Option("diffusers", "--format", "-f",  # noqa: A002 - the option's name
                               help="diffusers: a complete stock pipeline folder (TextToVideoSDPipeline or "
                                    "WanPipeline; LoRA merged, guidance folded in); lora: the adapter alone, in the "
                                    "layout the family's pipeline loads."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (written atomically)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Base model (tiny, diffusers folder or cached "
                                                                 "hub id); default: the student's base_model."),
    guidance: float | None = typer.Option(None, "--guidance", "-g", help="The guidance scale folded in (run the "
                                          "pipeline with guidance_scale=1); default: the one `t2vturbo sample "
                                          "--student` uses (the student's recorded default)."),
    dtype: str = typer.Option("float32", "--dtype", help="diffusers: weight dtype: float32, float16 or bfloat16."),
    fps: int | None = typer.Option(None, "--fps", help="diffusers, fps-conditioned models (VideoCrafter2): the "
                                                       "frame rate folded in (default: the one `t2vturbo sample --student` uses)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing non-empty --out folder."),
) -> None:
    """Export a student to run without t2vturbo: a stock diffusers pipeline or a peft LoRA adapter."""
    quiet_libraries()
    from t2vturbo.export import export_student

    start = time.perf_counter()
    path = export_student(student, model, format=format, out_dir=out, guidance=guidance, dtype=dtype, fps=fps,
                          overwrite=overwrite)
    console.print(f"[green]wrote[/] {path} ({format}) in {time.perf_counter() - start:.1f} s", highlight=False)
    import json

    info = json.loads((path / "t2vturbo.json").read_text())
    console.print("  " + info["how_to_run"].replace("DIR", repr(str(path))), highlight=False)
