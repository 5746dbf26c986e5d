"""``t2vturbo sample PROMPT... --steps 4``."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, parse_device, quiet_libraries, user_errors
from .main import app


def slugify(text: str, limit: int = 60) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in text.lower())
    while "--" in slug:
        slug = slug.replace("--", "-")
    return slug.strip("-")[:limit] or "video"


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
    import torch

    from t2vturbo.errors import ConfigError
    from t2vturbo.models import load_teacher
    from t2vturbo.sampling import FALLBACK_STUDENT_STEPS, sample_video, sampling_defaults
    from t2vturbo.video import write_video

    if steps is not None and steps < 1:
        raise ConfigError("--steps must be at least 1")
    if teacher and student is not None:
        raise ConfigError("--teacher samples the base model; leave out --student (or --teacher)")
    dev = parse_device(device)
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        dt = torch.float16 if dev.startswith("cuda") else torch.float32
    elif dtype in dtypes:
        dt = dtypes[dtype]
    else:
        raise ConfigError(f"--dtype {dtype!r}: use float32, float16, bfloat16 or auto")
    student_meta = {}
    if student is not None:
        from t2vturbo.export import recorded_student_meta

        student_meta = recorded_student_meta(student)  # read once: base model, recipe shape, guidance, steps
    if model is None:
        from t2vturbo.export import base_model_of

        model = base_model_of(student_meta) or "tiny"
    parts = load_teacher(model, device=dev, dtype=dt)
    if student is not None:
        from t2vturbo.export import merge_lora
        from t2vturbo.official_lora import load_any_student

        load_any_student(student, parts)
        merge_lora(parts.unet)  # an unmerged adapter costs ~50% more per UNet call
        parts.unet.to(device=dev, dtype=dt)
    mode = "teacher" if teacher or student is None and not _has_student(parts.unet) else "student"
    timesteps = None
    if not teacher and student is None:
        from t2vturbo.export import pipeline_timesteps

        # An exported student (guidance folded in, LCMScheduler config): sample it as diffusers would.
        timesteps = pipeline_timesteps(model, steps or FALLBACK_STUDENT_STEPS)
        if timesteps is not None:
            mode = "student"
            console.print(f"{model} is an exported student: guidance is folded in at export; --guidance is ignored",
                          highlight=False)
    defaults = sampling_defaults(parts, student_meta, mode)
    steps = defaults["steps"] if steps is None else steps
    guidance = defaults["guidance"] if guidance is None else guidance
    frames = defaults["frames"] if frames is None else frames
    height = defaults["height"] if height is None else height
    width = defaults["width"] if width is None else width
    fps = defaults["fps"] if fps is None else fps
    paths = output_paths(list(prompts), out)
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts)[start : start + batch_size]
        result = sample_video(parts, chunk, steps=steps, guidance=guidance, mode=mode, frames=frames, height=height,
                              width=width, seed=seed + start, fps=fps if parts.default_fps is not None else None,
                              decode_chunk=decode_chunk, timesteps=timesteps)
        per_video = result.seconds["total"] / len(chunk)
        for i, video in enumerate(result.videos):
            path = write_video(video, paths[start + i], fps=fps)
            console.print(f"wrote {path}  ({mode}, {steps} steps, {per_video:.2f} s/video)", highlight=False)


def _has_student(unet) -> bool:
    te = getattr(unet, "time_embedding", None)
    return te is not None and getattr(te, "cond_proj", None) is not None
