"""``t2vturbo sample`` as one core call: load the base model (and a student in any format), settle the sampling
settings (options, else the student's record, else the model's own, else the fallbacks), sample in batches and
write the videos."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .defaults import FALLBACK_STUDENT_STEPS, sampling_defaults
from .errors import ConfigError
from .names import resolve_dtype, vbench_name
from .sampling import sample_video
from .student import guidance_projection
from .teachers import load_teacher

OUTPUT_FORMATS = ("mp4", "gif", "webm", "png")
@dataclass
class Planned:
    """One video to write: its prompt, path and seed."""

    prompt: str
    path: Path
    seed: int


def plan_outputs(prompts: Sequence[str], out: Path | None = None, videos_per_prompt: int = 1, fmt: str = "mp4",
                 seed: int = 0) -> list[Planned]:
    """Where each video goes, and its seed (``seed + k`` for the k-th video of the whole plan, prompt-major, so a
    rerun gives every video the same seed whatever is skipped).

    ``out`` a folder (no suffix; default ``outputs``): ``{prompt}-{i}.{fmt}`` as VBench names them (``png``: a
    folder of frames per video). ``out`` an ``.mp4`` / ``.gif`` / ``.webm`` file: that file for one video, else
    ``{stem}-{k}{suffix}``. Any other suffix is an error. Every video also gets a prompt sidecar when written.
    """
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise ConfigError("no prompts: give one or more prompts, or --prompts-file FILE")
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise ConfigError(f"prompt {empty[0] + 1} is empty; give every video a prompt")
    if videos_per_prompt < 1:
        raise ConfigError(f"--videos-per-prompt must be at least 1 (got {videos_per_prompt})")
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    out = Path("outputs") if out is None else Path(out)
    for parent in [out, *out.parents]:
        if parent.exists():
            if parent.is_file() and (parent != out or not out.suffix):
                raise ConfigError(f"{parent} is a file, so {out} cannot be written under it; choose another --out")
            break
    items = [(p, i) for p in prompts for i in range(videos_per_prompt)]
    suffix = out.suffix.lower()
    if suffix and suffix not in (".mp4", ".gif", ".webm"):
        raise ConfigError(f"unknown video extension {out.suffix!r} in --out; use .mp4, .gif or .webm, or a folder")
    if suffix:
        if len(items) == 1:
            return [Planned(prompts[0], out, seed)]
        return [Planned(p, out.with_name(f"{out.stem}-{k}{out.suffix}"), seed + k) for k, (p, _) in enumerate(items)]
    ext = "" if fmt == "png" else f".{fmt}"
    return [Planned(p, out / vbench_name(p, i, ext), seed + k) for k, (p, i) in enumerate(items)]


@dataclass
class Written:
    """One video written: where, how it was sampled, and its share of the batch's time."""

    path: Path
    mode: str
    steps: int
    seconds: float


def check_steps(parts, mode: str, steps: int, grid: int = 50) -> None:
    """Steps in range for the schedule: a student at most its solver grid (``grid``), the teacher at most the
    training timesteps; one line each."""
    schedule = parts.schedule
    if mode == "student":
        if steps > grid:
            raise ConfigError(f"--steps {steps} is more than this student's solver grid of {grid} steps; use 1-{grid}"
                              " (4 is what it was distilled for)")
    else:
        most = int(schedule.num_train_timesteps) - 1
        if steps > most:
            raise ConfigError(f"--steps {steps} is more than the teacher's {schedule.num_train_timesteps} training "
                              f"timesteps allow; use 1-{most} (50 is the usual)")


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
    seed: int | Sequence[int] = 0,
    batch_size: int = 4,
    device: str = "cpu",
    dtype: str = "auto",
    decode_chunk: int = 0,
    origin_steps: int | None = None,
    motion_guidance: float | None = None,
    motion_percentage: float | None = None,
    notice: Callable[[str], None] = lambda msg: None,
    on_video: Callable[[Written], None] = lambda w: None,
) -> list[Written]:
    """Sample ``prompts`` and write video ``i`` to ``paths[i]`` (.mp4, .gif, .webm, or a folder of PNG frames),
    with a prompt sidecar ``paths[i].txt`` so ``t2vturbo score`` reads each back against its own prompt.
    ``seed``: ``seed + i`` for video i, or one seed per video.

    Without ``student`` and ``teacher`` the model is sampled as it is: an exported student (an LCMScheduler
    folder) with its own timesteps, a model with a guidance embedding as a student, else as a teacher.
    """
    from .video import write_prompt_sidecar, write_video

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
    model_ = load_teacher(model, device=device, dtype=dt)
    implied: dict = {}
    if student is not None:
        from .formats import load_merged_student

        implied = load_merged_student(student, model_)
        model_.to(device=device, dtype=dt)  # moves (and casts) only what differs: no diffusers float32 notice
    mode = "teacher" if teacher or student is None and guidance_projection(model_) is None else "student"
    timesteps = None
    if not teacher and student is None:
        from .export import exported_timesteps

        # An exported student (guidance folded in, a consistency scheduler): sample it as its pipeline would.
        timesteps = exported_timesteps(model, model_, steps or int(model_.stored_defaults.get("steps")
                                                                   or FALLBACK_STUDENT_STEPS))
        if timesteps is not None:
            mode = "student"
            notice(f"{model} is an exported student: guidance is folded in at export; --guidance is ignored")
    defaults = sampling_defaults(model_, student_meta, mode, implied)
    steps = defaults.steps if steps is None else steps
    guidance = defaults.guidance if guidance is None else guidance
    frames = defaults.frames if frames is None else frames
    height = defaults.height if height is None else height
    width = defaults.width if width is None else width
    fps = defaults.fps if fps is None else fps
    seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != len(prompts):
        raise ConfigError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    origin = int(origin_steps or defaults.origin_steps)
    check_steps(model_, mode, steps, origin)
    motion = defaults.motion
    if motion_guidance is not None:
        if motion is None:
            raise ConfigError("--motion-guidance needs a T2V-Turbo-v2 motion-guided student (unet_mg.pt, or ours "
                              "distilled with distill.motion.scale > 0)")
        motion = replace(motion, scale=float(motion_guidance))
    if motion_percentage is not None:
        if not 0.0 <= motion_percentage <= 1.0:
            raise ConfigError(f"--motion-percentage must be in [0, 1] (got {motion_percentage})")
        motion = replace(motion, percentage=float(motion_percentage)) if motion is not None else None
    written: list[Written] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts)[start : start + batch_size]
        result = sample_video(model_, chunk, steps=steps, guidance=guidance, mode=mode, frames=frames, height=height,
                              width=width, seed=seeds[start : start + len(chunk)],
                              fps=fps if model_.supports_fps else None,
                              decode_chunk=decode_chunk, timesteps=timesteps, origin_steps=origin, motion=motion)
        per_video = result.seconds["total"] / len(chunk)
        for i, video in enumerate(result.videos):
            path = write_video(video, paths[start + i], fps=fps)
            write_prompt_sidecar(path, chunk[i])
            item = Written(path, mode, steps, per_video)
            written.append(item)
            on_video(item)
    return written
