"""``t2vturbo serve --model M [--student S | --teacher]``."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, parse_device, quiet_libraries, user_errors
from .main import app


@app.command()
@user_errors
def serve(
    model: str | None = typer.Option(None, "--model", "-m", help="Teacher/base: 'tiny', a diffusers folder or a hub id (default: the student's recorded base model, else tiny)."),
    student: Path | None = typer.Option(None, "--student", "-s", help="Student: our folder, a peft LoRA, or an official unet_lora.pt / unet_mg.pt. Omit to serve the base model as is."),
    teacher: bool = typer.Option(False, "--teacher", help="Serve the base model with DDIM + classifier-free guidance; with --student, serve both (side by side on the page; twice the model's memory)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Any but a loopback address needs --api-key (or --insecure)."),
    port: int = typer.Option(8000, "--port", help="Port (0: a free one, printed)."),
    output_dir: Path = typer.Option(Path("outputs/serve"), "--output-dir", "-o", help="Where videos and their prompt sidecars are written ({id}.mp4, {id}.txt)."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="T2VTURBO_API_KEY", help="Clients must send 'Authorization: Bearer KEY' (the page asks for it). Prefer the environment variable: a command line is visible to other users."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback --host without --api-key."),
    max_queue: int = typer.Option(32, "--max-queue", help="Videos that may wait; beyond it requests get 429 with Retry-After."),
    max_batch: int = typer.Option(4, "--max-batch", help="Queued videos with the same model and settings sampled together at most."),
    job_timeout: float = typer.Option(600.0, "--job-timeout", help="Seconds from queued to finished before a video fails with 'timeout'."),
    keep: int = typer.Option(0, "--keep", help="Keep at most this many finished videos (the oldest files are removed); 0: all."),
    fmt: str = typer.Option("mp4", "--format", help="mp4 (H.264) or webm (VP9)."),
    max_steps: int = typer.Option(100, "--max-steps", help="Most inference steps a request may ask (a student: also at most its solver grid)."),
    max_scale: float = typer.Option(2.0, "--max-scale", help="Frames, height and width at most this times the model's default shape."),
    max_prompt_chars: int = typer.Option(1000, "--max-prompt-chars", help="Longest prompt accepted."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if available)."),
    dtype: str = typer.Option("auto", "--dtype", help="float32, float16, bfloat16 (auto: fp16 on CUDA, fp32 on CPU)."),
    decode_chunk: int = typer.Option(0, "--decode-chunk", help="VAE-decode at most this many frames at once (0 = all)."),
) -> None:
    """Load a student (or the teacher, or both) once and serve it: an HTTP API in OpenAI's video shape and a web
    page at /. Ctrl-C or SIGTERM stops accepting, fails what is queued, finishes what runs and exits 0."""
    quiet_libraries()
    from t2vturbo.errors import ConfigError
    from t2vturbo.serve import require_serve_extra

    require_serve_extra()
    from t2vturbo.generate import load_model
    from t2vturbo.serve.app import check_exposure, run_server
    from t2vturbo.serve.limits import Limits
    from t2vturbo.serve.scheduler import VIDEO_FORMATS, Scheduler

    check_exposure(host, api_key, insecure)  # before minutes of loading
    if fmt not in VIDEO_FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; use mp4 or webm")
    for name, value, least in (("--max-queue", max_queue, 1), ("--max-batch", max_batch, 1),
                               ("--max-steps", max_steps, 1), ("--max-prompt-chars", max_prompt_chars, 1),
                               ("--keep", keep, 0)):
        if value < least:
            raise ConfigError(f"{name} must be at least {least} (got {value})")
    if job_timeout <= 0 or max_scale <= 0:
        raise ConfigError("--job-timeout and --max-scale must be above 0")
    dev = parse_device(device)
    say = lambda msg: console.print(msg, highlight=False)  # noqa: E731
    first = load_model(model, student=student, teacher=teacher and student is None, device=dev, dtype=dtype,
                       notice=say)
    models = {first.mode: first}
    if teacher and student is not None:
        models["teacher"] = load_model(first.spec, teacher=True, device=dev, dtype=dtype, notice=say)
    scheduler = Scheduler(models, output_dir, max_queue=max_queue, max_batch=max_batch, job_timeout=job_timeout,
                          keep=keep, fmt=fmt, decode_chunk=decode_chunk, log=say)
    limits = Limits(prompt_chars=max_prompt_chars, steps=max_steps, scale=max_scale)
    names = " and ".join(f"{name} ({m.spec}, {m.defaults.steps} steps)" for name, m in models.items())

    def ready(url: str) -> None:
        say(f"serving {names} at {url}  (page {url}/, API {url}/v1/videos, docs {url}/docs; videos in "
            f"{output_dir}; Ctrl-C stops)")

    run_server(scheduler, host=host, port=port, api_key=api_key, insecure=insecure, limits=limits, on_ready=ready)
    stats = scheduler.stats()
    say(f"stopped: {stats['served']} videos served, {stats['failed']} failed")
