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
                               help="diffusers: a complete TextToVideoSDPipeline folder (LoRA merged, guidance "
                                    "folded in); lora: the adapter alone (peft layout)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (written atomically)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Base model (tiny, diffusers folder or cached "
                                                                 "hub id); default: the student's base_model."),
    guidance: float = typer.Option(7.5, "--guidance", "-g", help="diffusers: the guidance scale folded into the "
                                                                 "UNet (run the pipeline with guidance_scale=1)."),
    dtype: str = typer.Option("float32", "--dtype", help="diffusers: weight dtype: float32, float16 or bfloat16."),
    fps: int | None = typer.Option(None, "--fps", help="diffusers, fps-conditioned models (VideoCrafter2): the "
                                                       "frame rate folded in (default: the model's)."),
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

    wan = (path / "model_index.json").is_file() and "Wan" in (path / "model_index.json").read_text() \
        or (path / "pytorch_lora_weights.safetensors").is_file()
    if wan and format == "diffusers":
        console.print(f"  run it with: torch.manual_seed(SEED); WanPipeline.from_pretrained({str(path)!r})(prompt, "
                      "num_inference_steps=4, guidance_scale=1.0)  (its FlowMatchLCMScheduler re-noises from torch's "
                      "global generator)", highlight=False)
    elif wan:
        shift = json.loads((path / "t2vturbo.json").read_text())["run_with"]["scheduler"].get("shift")
        console.print(f"  load it with: pipe.load_lora_weights({str(path)!r}); pipe.scheduler = "
                      f"FlowMatchLCMScheduler(shift={shift}); then num_inference_steps=4, guidance_scale=1.0",
                      highlight=False)
    elif format == "diffusers":
        console.print(f"  run it with: TextToVideoSDPipeline.from_pretrained({str(path)!r})"
                      "(prompt, num_inference_steps=4, guidance_scale=1.0)", highlight=False)
    else:
        console.print("  load it with `t2vturbo sample --student DIR`, or peft.PeftModel.from_pretrained(unet, DIR) "
                      "on UNet3DConditionModel.from_pretrained(BASE, subfolder='unet', time_cond_proj_dim=256, "
                      "low_cpu_mem_usage=False)", highlight=False)
