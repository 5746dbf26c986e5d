"""The one generation core that ``t2vturbo sample`` and ``t2vturbo serve`` share.

:func:`load_model` loads the base model (and a student in any format) once into a :class:`LoadedModel`;
:meth:`LoadedModel.settle` settles a request's sampling settings (options, else the student's record, else the
model's own, else the fallbacks); :meth:`LoadedModel.sample` makes one batch of videos with them, and
:func:`save_video` writes one with its prompt sidecar. :func:`generate_videos` (``sample``) is those four calls;
the server keeps the model warm and calls the last three per batch of requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .defaults import FALLBACK_STUDENT_STEPS, SamplingDefaults, sampling_defaults
from .errors import ConfigError
from .motion import MotionGuidance
from .names import resolve_dtype, vbench_name
from .sampling import SampleOutput, sample_video
from .student import guidance_projection
from .teachers import Teacher, load_teacher

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


def most_steps(parts, mode: str, grid: int = 50) -> int:
    """The most steps the schedule allows: a student its solver grid (``grid``), the teacher its training
    timesteps less one."""
    return grid if mode == "student" else int(parts.schedule.num_train_timesteps) - 1


def check_steps(parts, mode: str, steps: int, grid: int = 50) -> None:
    """Steps in range for the schedule: a student at most its solver grid (``grid``), the teacher at most the
    training timesteps; one line each."""
    most = most_steps(parts, mode, grid)
    if steps <= most:
        return
    if mode == "student":
        raise ConfigError(f"--steps {steps} is more than this student's solver grid of {grid} steps; use 1-{grid}"
                          " (4 is what it was distilled for)")
    raise ConfigError(f"--steps {steps} is more than the teacher's {parts.schedule.num_train_timesteps} training "
                      f"timesteps allow; use 1-{most} (50 is the usual)")


@dataclass(frozen=True)
class Settings:
    """Everything but the prompts and seeds that one batch is sampled with, settled by :meth:`LoadedModel.settle`.
    Requests whose settings are equal can share one batch (one denoiser call per step)."""

    mode: str
    steps: int
    guidance: float
    frames: int
    height: int
    width: int
    fps: int
    #: the solver grid a student's timesteps are picked from
    origin_steps: int
    #: a motion-guided student's motion condition: (scale, percentage); None: no motion input
    motion: tuple[float, float] | None = None

    def motion_guidance(self) -> MotionGuidance | None:
        return None if self.motion is None else MotionGuidance(scale=self.motion[0], percentage=self.motion[1])


class LoadedModel:
    """A base model, with its student merged in if any, loaded once (:func:`load_model`), and the settings it is
    sampled with when a request gives none (``defaults``). ``mode`` is how it samples: ``"student"``
    (multistep consistency) or ``"teacher"`` (DDIM + classifier-free guidance)."""

    def __init__(self, parts: Teacher, mode: str, defaults: SamplingDefaults, spec: str, exported: bool = False):
        self.parts, self.mode, self.defaults, self.spec, self.exported = parts, mode, defaults, spec, exported
        self._timesteps: dict[int, list | None] = {}

    @property
    def supports_motion(self) -> bool:
        """Whether it takes the motion options (a T2V-Turbo-v2 motion-guided student)."""
        return self.defaults.motion is not None

    def most_steps(self, origin_steps: int | None = None) -> int:
        return most_steps(self.parts, self.mode, int(origin_steps or self.defaults.origin_steps))

    def settle(self, *, steps: int | None = None, guidance: float | None = None, frames: int | None = None,
               height: int | None = None, width: int | None = None, fps: int | None = None,
               origin_steps: int | None = None, motion_guidance: float | None = None,
               motion_percentage: float | None = None) -> Settings:
        """The settings a request samples with: each option given, else the default; checked (one-line
        :class:`ConfigError` naming the option)."""
        d = self.defaults
        if steps is not None and steps < 1:
            raise ConfigError(f"--steps must be at least 1 (got {steps})")
        steps = d.steps if steps is None else int(steps)
        origin = int(origin_steps or d.origin_steps)
        check_steps(self.parts, self.mode, steps, origin)
        motion = d.motion
        if motion_guidance is not None:
            if motion is None:
                raise ConfigError("--motion-guidance needs a T2V-Turbo-v2 motion-guided student (unet_mg.pt, or "
                                  "ours distilled with distill.motion.scale > 0)")
            motion = replace(motion, scale=float(motion_guidance))
        if motion_percentage is not None:
            if not 0.0 <= motion_percentage <= 1.0:
                raise ConfigError(f"--motion-percentage must be in [0, 1] (got {motion_percentage})")
            motion = replace(motion, percentage=float(motion_percentage)) if motion is not None else None
        return Settings(
            mode=self.mode, steps=steps, guidance=float(d.guidance if guidance is None else guidance),
            frames=int(d.frames if frames is None else frames), height=int(d.height if height is None else height),
            width=int(d.width if width is None else width), fps=int(d.fps if fps is None else fps),
            origin_steps=origin, motion=None if motion is None else (float(motion.scale), float(motion.percentage)))

    def timesteps(self, steps: int) -> list | None:
        """An exported student's own timesteps (as its pipeline runs them); None: the schedule's."""
        if not self.exported:
            return None
        if steps not in self._timesteps:
            from .export import exported_timesteps

            self._timesteps[steps] = exported_timesteps(self.spec, self.parts, steps)
        return self._timesteps[steps]

    def sample(self, prompts: Sequence[str], seeds: Sequence[int], settings: Settings, *, decode_chunk: int = 0,
               callback: Callable[[int, int, object], None] | None = None) -> SampleOutput:
        """One batch: video ``i`` of ``prompts`` from seed ``seeds[i]`` (its own generator, so a video does not
        depend on the batch it is in, up to float rounding). ``callback(step, t, x0)`` after each step."""
        if len(seeds) != len(prompts):
            raise ConfigError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        s = settings
        return sample_video(self.parts, list(prompts), steps=s.steps, guidance=s.guidance, mode=s.mode,
                            frames=s.frames, height=s.height, width=s.width, seed=[int(x) for x in seeds],
                            fps=s.fps if self.parts.supports_fps else None, decode_chunk=decode_chunk,
                            timesteps=self.timesteps(s.steps), origin_steps=s.origin_steps,
                            motion=s.motion_guidance(), callback=callback)


def load_model(model: str | None = None, *, student: str | Path | None = None, teacher: bool = False,
               device: str = "cpu", dtype: str = "auto",
               notice: Callable[[str], None] = lambda msg: None) -> LoadedModel:
    """Load the base model ``model`` (default: the student's recorded base model, else ``tiny``) and merge
    ``student`` (any format) into it; ``teacher``: sample the base model with DDIM + CFG.

    Without ``student`` and ``teacher`` the model is sampled as it is: an exported student (an LCMScheduler
    folder) with its own timesteps, a model with a guidance embedding as a student, else as a teacher.
    """
    if teacher and student is not None:
        raise ConfigError("--teacher samples the base model; leave out --student (or --teacher)")
    dt = resolve_dtype(dtype, device)
    student_meta: dict = {}
    if student is not None:
        from .formats import recorded_student_meta

        student_meta = recorded_student_meta(student)  # read once: base model, recipe shape, guidance, steps
    if model is None:
        from .formats import base_model_of

        model = base_model_of(student_meta) or "tiny"
    parts = load_teacher(model, device=device, dtype=dt)
    implied: dict = {}
    if student is not None:
        from .formats import load_merged_student

        implied = load_merged_student(student, parts)
        parts.to(device=device, dtype=dt)  # moves (and casts) only what differs: no diffusers float32 notice
    mode = "teacher" if teacher or student is None and guidance_projection(parts) is None else "student"
    exported = False
    if not teacher and student is None:
        from .export import exported_timesteps

        # An exported student (guidance folded in, a consistency scheduler): sample it as its pipeline would.
        probe = int(parts.stored_defaults.get("steps") or FALLBACK_STUDENT_STEPS)
        if exported_timesteps(model, parts, probe) is not None:
            mode, exported = "student", True
            notice(f"{model} is an exported student: guidance is folded in at export; --guidance is ignored")
    defaults = sampling_defaults(parts, student_meta, mode, implied)
    return LoadedModel(parts, mode, defaults, str(model), exported)


def save_video(frames, path: str | Path, prompt: str, fps: int) -> Path:
    """Write one video (T, 3, H, W) atomically, then its prompt sidecar ``{name}.txt`` (what ``score`` reads)."""
    from .video import write_prompt_sidecar, write_video

    path = write_video(frames, path, fps=fps)
    write_prompt_sidecar(path, prompt)
    return path


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
    ``seed``: ``seed + i`` for video i, or one seed per video. The model is loaded as :func:`load_model` says.
    """
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be at least 1 (got {steps})")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {batch_size})")
    if len(paths) != len(prompts):
        raise ConfigError(f"got {len(paths)} output paths for {len(prompts)} prompts")
    seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != len(prompts):
        raise ConfigError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    loaded = load_model(model, student=student, teacher=teacher, device=device, dtype=dtype, notice=notice)
    settings = loaded.settle(steps=steps, guidance=guidance, frames=frames, height=height, width=width, fps=fps,
                             origin_steps=origin_steps, motion_guidance=motion_guidance,
                             motion_percentage=motion_percentage)
    written: list[Written] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts)[start : start + batch_size]
        result = loaded.sample(chunk, seeds[start : start + len(chunk)], settings, decode_chunk=decode_chunk)
        per_video = result.seconds["total"] / len(chunk)
        for i, video in enumerate(result.videos):
            item = Written(save_video(video, paths[start + i], chunk[i], settings.fps), settings.mode,
                           settings.steps, per_video)
            written.append(item)
            on_video(item)
    return written
