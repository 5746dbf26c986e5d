"""``t2vturbo sample PROMPT... --steps 4``."""

from __future__ import annotations

from pathlib import Path

import typer

from t2vturbo.names import slugify

from .common import console, parse_device, quiet_libraries, user_errors
from .main import app


def output_paths(prompts: list[str], out: Path | None) -> list[Path]:
    """One path per prompt: --out as given for one prompt, else suffixed -0, -1, ...; default outputs/<slug>.mp4."""
    if out is None:
        return [Path("outputs") / f"{slugify(p)}.mp4" for p in prompts]
    if len(prompts) == 1:
        return [out]
    suffix = "".join(out.suffixes) if out.suffix in (".mp4", ".gif", ".webm") else ""
    stem = out.name[: len(out.name) - len(suffix)] if suffix else out.name
    return [out.with_name(f"{stem}-{i}{suffix}") for i in range(len(prompts))]


@app.command()
@user_errors
def sample(
    prompts: list[str] = typer.Argument(..., help="One or more prompts."),
    model: str | None = typer.Option(None, "--model", "-m", help="Teacher/base: 'tiny', a diffusers folder or a hub id (default: the student's recorded base model, else tiny)."),
    student: Path | None = typer.Option(None, "--student", "-s", help="Student: our folder, a peft LoRA, or an official unet_lora.pt. Omit to sample the base model as is."),
    teacher: bool = typer.Option(False, "--teacher", help="Sample the base model with DDIM + classifier-free guidance."),
    steps: int | None = typer.Option(None, "--steps", help="UNet evaluations (default: the student's recorded steps, else 4; the teacher: 50)."),
    guidance: float | None = typer.Option(None, "--guidance", "-g", help="Guidance scale (student: via the guidance embedding). Default: the student's recorded one, else the model's, else 7.5."),
    frames: int | None = typer.Option(None, "--frames", help="Default: the student's recorded clip shape, else the model's native one, else 16."),
    height: int | None = typer.Option(None, "--height", help="Default: as --frames (the model's native size is UNet sample_size x the VAE factor)."),
    width: int | None = typer.Option(None, "--width", help="Default: as --height."),
    fps: int | None = typer.Option(None, "--fps", help="Frame rate of the output and fps condition of VideoCrafter2 (default: the model's, else 8)."),
    seed: int = typer.Option(0, "--seed", help="Video i uses seed + i."),
    out: Path | None = typer.Option(None, "--out", "-o", help=".mp4, .gif, or a folder for PNG frames (default outputs/<slug>.mp4)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Prompts per batch."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if available)."),
    dtype: str = typer.Option("auto", "--dtype", help="float32, float16, bfloat16 (auto: fp16 on CUDA, fp32 on CPU)."),
    decode_chunk: int = typer.Option(0, "--decode-chunk", help="VAE-decode at most this many frames at once (0 = all)."),
) -> None:
    """Generate videos with a distilled student (4 steps) or the teacher (DDIM + CFG)."""
    quiet_libraries()
    from t2vturbo.generate import generate_videos

    generate_videos(
        list(prompts), output_paths(list(prompts), out), model=model, student=student, teacher=teacher, steps=steps,
        guidance=guidance, frames=frames, height=height, width=width, fps=fps, seed=seed, batch_size=batch_size,
        device=parse_device(device), dtype=dtype, decode_chunk=decode_chunk,
        notice=lambda msg: console.print(msg, highlight=False),
        on_video=lambda w: console.print(f"wrote {w.path}  ({w.mode}, {w.steps} steps, {w.seconds:.2f} s/video)",
                                         highlight=False),
    )
