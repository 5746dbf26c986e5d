"""``t2vturbo sample PROMPT... --steps 4``."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, parse_device, quiet_libraries, user_errors
from .main import app


@app.command()
@user_errors
def sample(
    prompts: list[str] = typer.Argument(None, help="One or more prompts (or --prompts-file)."),
    prompts_file: Path | None = typer.Option(None, "--prompts-file", help="Prompts, one per line (TXT) or a 'prompt' column (CSV / JSON / JSONL): e.g. a VBench dimension's prompt list."),
    videos_per_prompt: int = typer.Option(1, "--videos-per-prompt", "-n", help="Videos per prompt, named {prompt}-{i} (VBench uses 5)."),
    fmt: str = typer.Option("mp4", "--format", help="Video files written into an --out folder: mp4, gif, webm, or png (a folder of frames per video)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Teacher/base: 'tiny', a diffusers folder or a hub id (default: the student's recorded base model, else tiny)."),
    student: Path | None = typer.Option(None, "--student", "-s", help="Student: our folder, a peft LoRA, or an official unet_lora.pt. Omit to sample the base model as is."),
    teacher: bool = typer.Option(False, "--teacher", help="Sample the base model with DDIM + classifier-free guidance."),
    steps: int | None = typer.Option(None, "--steps", help="UNet evaluations (default: the student's recorded steps, else 4; the teacher: 50)."),
    guidance: float | None = typer.Option(None, "--guidance", "-g", help="Guidance scale (student: via the guidance embedding). Default: the student's recorded one, else the model's, else 7.5."),
    frames: int | None = typer.Option(None, "--frames", help="Default: the student's recorded clip shape, else the model's native one, else 16."),
    height: int | None = typer.Option(None, "--height", help="Default: as --frames (the model's native size is UNet sample_size x the VAE factor)."),
    width: int | None = typer.Option(None, "--width", help="Default: as --height."),
    fps: int | None = typer.Option(None, "--fps", help="Frame rate of the output and fps condition of VideoCrafter2 (default: the model's, else 8)."),
    seed: int = typer.Option(0, "--seed", help="The k-th video of the run (prompt-major) uses seed + k."),
    out: Path | None = typer.Option(None, "--out", "-o", help="A folder for {prompt}-{i}.mp4 files (default outputs/), or one .mp4 / .gif / .webm file. Every video gets a {name}.txt prompt sidecar."),
    batch_size: int = typer.Option(4, "--batch-size", help="Prompts per batch."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if available)."),
    dtype: str = typer.Option("auto", "--dtype", help="float32, float16, bfloat16 (auto: fp16 on CUDA, fp32 on CPU)."),
    decode_chunk: int = typer.Option(0, "--decode-chunk", help="VAE-decode at most this many frames at once (0 = all)."),
    origin_steps: int | None = typer.Option(None, "--origin-steps", help="Student: the solver grid its steps are picked from (default: the student's, 200 for a T2V-Turbo-v2 file, else 50)."),
    motion_guidance: float | None = typer.Option(None, "--motion-guidance", help="T2V-Turbo-v2 motion-guided students (unet_mg.pt, or ours distilled with distill.motion): the motion guidance scale (default 0.05, or the student's)."),
    motion_percentage: float | None = typer.Option(None, "--motion-percentage", help="Motion guidance on the steps with t >= 1000 (1 - this); default 0.3, or what the student was distilled with."),
    skip_existing: bool | None = typer.Option(None, "--skip-existing/--overwrite", help="Skip videos already on disk (default with --prompts-file, so an interrupted batch resumes) or write over them (default for prompts given here)."),
) -> None:
    """Generate videos with a distilled student (4 steps) or the teacher (DDIM + CFG)."""
    quiet_libraries()
    from t2vturbo.generate import generate_videos, plan_outputs
    from t2vturbo.inputs import read_prompts_file

    listed = list(prompts or [])
    if prompts_file is not None:
        read = read_prompts_file(prompts_file)
        listed += list(read.values()) if isinstance(read, dict) else list(read)
    plan = plan_outputs(listed, out, videos_per_prompt, fmt, seed)
    skip = skip_existing if skip_existing is not None else prompts_file is not None
    todo = [p for p in plan if not (skip and p.path.exists())]
    if len(todo) < len(plan):
        console.print(f"{len(plan) - len(todo)} of {len(plan)} videos already exist; skipped", highlight=False)
    if not todo:
        return
    generate_videos(
        [p.prompt for p in todo], [p.path for p in todo], model=model, student=student, teacher=teacher, steps=steps,
        guidance=guidance, frames=frames, height=height, width=width, fps=fps, seed=[p.seed for p in todo],
        batch_size=batch_size,
        device=parse_device(device), dtype=dtype, decode_chunk=decode_chunk, origin_steps=origin_steps,
        motion_guidance=motion_guidance, motion_percentage=motion_percentage,
        notice=lambda msg: console.print(msg, highlight=False),
        on_video=lambda w: console.print(f"wrote {w.path}  ({w.mode}, {w.steps} steps, {w.seconds:.2f} s/video)",
                                         highlight=False),
    )
