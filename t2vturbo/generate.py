"""``t2vturbo sample`` as one core call: load the base model (and a student in any format), settle the sampling
settings (options, else the student's record, else the model's own, else the fallbacks), sample in batches and
write the videos."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .names import resolve_dtype
from .sampling import FALLBACK_STUDENT_STEPS, has_guidance_projection, sample_video, sampling_defaults
from .teachers import load_teacher


@dataclass
class Written:
    """One video written: where, how it was sampled, and its share of the batch's time."""

    path: Path
    mode: str
    steps: int
    seconds: float


def generate_videos(
    prompts: Sequence[str],
    paths: Sequence[Path],
    *,
    model: str | None = None,
    student: str | Path | None = None,
    teacher: bool = False,
    steps: int | None = None,
    guidance: float | None = None,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    fps: int | None = None,
    seed: int = 0,
    batch_size: int = 4,
    device: str = "cpu",
    dtype: str = "auto",
    decode_chunk: int = 0,
    notice: Callable[[str], None] = lambda msg: None,
    on_video: Callable[[Written], None] = lambda w: None,
) -> list[Written]:
    """Sample ``prompts`` and write video ``i`` to ``paths[i]`` (.mp4, .gif, or a folder of PNG frames).

    Without ``student`` and ``teacher`` the model is sampled as it is: an exported student (an LCMScheduler
    folder) with its own timesteps, a model with a guidance embedding as a student, else as a teacher.
    """
    from .video import write_video

    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be at least 1 (got {steps})")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {batch_size})")
    if teacher and student is not None:
        raise ConfigError("--teacher samples the base model; leave out --student (or --teacher)")
    if len(paths) != len(prompts):
        raise ConfigError(f"got {len(paths)} output paths for {len(prompts)} prompts")
    dt = resolve_dtype(dtype, device)
    student_meta: dict = {}
    if student is not None:
        from .formats import recorded_student_meta

        student_meta = recorded_student_meta(student)  # read once: base model, recipe shape, guidance, steps
    if model is None:
        from .formats import base_model_of

        model = base_model_of(student_meta) or "tiny"
    parts = load_teacher(model, device=device, dtype=dt)
    if student is not None:
        from .formats import load_merged_student

        load_merged_student(student, parts).to(device=device, dtype=dt)
    mode = "teacher" if teacher or student is None and not has_guidance_projection(parts.unet) else "student"
    timesteps = None
    if not teacher and student is None:
        from .export import pipeline_timesteps

        # An exported student (guidance folded in, LCMScheduler config): sample it as diffusers would.
        timesteps = pipeline_timesteps(model, steps or FALLBACK_STUDENT_STEPS)
        if timesteps is not None:
            mode = "student"
            notice(f"{model} is an exported student: guidance is folded in at export; --guidance is ignored")
    defaults = sampling_defaults(parts, student_meta, mode)
    steps = defaults["steps"] if steps is None else steps
    guidance = defaults["guidance"] if guidance is None else guidance
    frames = defaults["frames"] if frames is None else frames
    height = defaults["height"] if height is None else height
    width = defaults["width"] if width is None else width
    fps = defaults["fps"] if fps is None else fps
    written: list[Written] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts)[start : start + batch_size]
        result = sample_video(parts, chunk, steps=steps, guidance=guidance, mode=mode, frames=frames, height=height,
                              width=width, seed=seed + start, fps=fps if parts.default_fps is not None else None,
                              decode_chunk=decode_chunk, timesteps=timesteps)
        per_video = result.seconds["total"] / len(chunk)
        for i, video in enumerate(result.videos):
            item = Written(write_video(video, paths[start + i], fps=fps), mode, steps, per_video)
            written.append(item)
            on_video(item)
    return written
