"""Sampling loops: multistep consistency sampling (the student) and DDIM + CFG (the teacher), one module.

Random numbers: one ``torch.Generator`` (CPU) per video, seeded ``seed + i``. All noise a video needs (initial
latents, then one re-noising draw per step but the last) is drawn up front in that order and moved to the device
once, so the loop has no host-device syncs and the same seed gives the same video on any device. This is the
order (and layout) in which diffusers' LCMScheduler + TextToVideoSDPipeline consume a per-video generator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .consistency import (
    guidance_embedding,
    lcm_guidance,
)
from .errors import ConfigError
from .motion import MotionGuidance, motion_schedule, sampling_motion_embeddings
from .student import guidance_projection
from .teachers import Teacher


@dataclass
class SampleOutput:
    """Videos (B, F, 3, H, W) in [0, 1] on the CPU, the timesteps used, and where the time went."""

    videos: torch.Tensor
    timesteps: list[int]
    unet_calls: int
    seconds: dict[str, float] = field(default_factory=dict)


def make_generators(n: int, seed: int | Sequence[int] | None) -> list[torch.Generator]:
    """One CPU generator per video: ``seed + i`` (or the given list of seeds, or random seeds)."""
    if seed is None:
        seeds = [int(torch.randint(0, 2**31 - 1, ()).item()) for _ in range(n)]
    elif isinstance(seed, int):
        seeds = [seed + i for i in range(n)]
    else:
        seeds = list(seed)
        if len(seeds) != n:
            raise ConfigError(f"got {len(seeds)} seeds for {n} videos; pass one seed per prompt or a single seed")
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def draw_noise(generators: list[torch.Generator], shape: tuple[int, ...], count: int,
               frame_major: bool = True) -> list[torch.Tensor]:
    """``count`` noise tensors of (B, C, F, h, w), each video drawing from its own generator in step order.

    The initial latents are drawn as (C, F, h, w). With ``frame_major`` every later (re-noising) draw is
    (F, C, h, w), permuted, from the same generator, because diffusers' UNet3D video pipeline steps the scheduler
    on frame-major latents with the user's generator. Without it (Wan), the re-noising draws are (C, F, h, w)
    from a second generator in the video's starting state: stock WanPipeline's FlowMatchLCMScheduler re-noises
    from torch's global generator, so ``torch.manual_seed(seed)`` before a one-prompt call gives the same numbers.
    """
    c, f, h, w = shape
    per_video = []
    for g in generators:
        if not frame_major:
            second = torch.Generator().set_state(g.get_state())
        draws = [torch.randn((1, c, f, h, w), generator=g)]
        if frame_major:
            draws += [torch.randn((1, f, c, h, w), generator=g).permute(0, 2, 1, 3, 4) for _ in range(count - 1)]
        else:
            draws += [torch.randn((1, c, f, h, w), generator=second) for _ in range(count - 1)]
        per_video.append(draws)
    return [torch.cat([pv[k] for pv in per_video]).contiguous() for k in range(count)]


Denoiser = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


class CountingDenoiser:
    """``model(x, t) -> (x0, eps)`` for a batch of ``n`` videos, counting its calls (one UNet forward each)."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]], n: int):
        self.fn, self.n, self.calls = fn, n, 0

    def __call__(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        dtype = torch.long if isinstance(t, int) else torch.float32  # flow timesteps are floats
        return self.fn(x, torch.full((self.n,), t, device=x.device, dtype=dtype))


def student_denoiser(teacher: Teacher, cond: torch.Tensor, guidance: float, fps: torch.Tensor | None,
                     motion: MotionGuidance | None = None) -> CountingDenoiser:
    """The student's f(x, t): guidance enters through its guidance embedding (one forward, no CFG batch).

    ``motion``: a T2V-Turbo-v2 motion-guided student's motion condition (:mod:`t2vturbo.motion`)."""
    n = cond.shape[0]
    w_emb = None
    proj = guidance_projection(teacher)
    if proj is not None:
        w_emb = guidance_embedding(torch.full((n,), float(guidance)), proj.in_features).to(teacher.device,
                                                                                           teacher.dtype)
    if motion is None:
        return CountingDenoiser(lambda x, t: teacher.denoise(x, t, cond, guidance_cond=w_emb, fps=fps), n)
    on, off = sampling_motion_embeddings(motion, n, proj.in_features, teacher.device, teacher.dtype)
    total = teacher.schedule.num_train_timesteps

    def fn(x, t):
        m_emb = on if motion_schedule([int(t[0])], motion.percentage, total)[0] else off
        return teacher.denoise(x, t, cond, guidance_cond=w_emb, fps=fps, motion_cond=m_emb)

    return CountingDenoiser(fn, n)


def guided_denoiser(teacher: Teacher, cond: torch.Tensor, uncond: torch.Tensor, guidance: float,
                    fps: torch.Tensor | None) -> CountingDenoiser:
    """The teacher with classifier-free guidance: cond and uncond in one batched forward, CFG on (x0, eps)."""
    both = torch.cat([cond, uncond])
    fps2 = torch.cat([fps, fps]) if fps is not None else None
    w = torch.tensor(guidance - 1.0)

    def fn(x, t):
        x0_cu, eps_cu = teacher.denoise(torch.cat([x, x]), torch.cat([t, t]), both, fps=fps2)
        w_t = teacher.teacher_guidance(w, t)  # a family may guide some timesteps with another scale
        return lcm_guidance(*x0_cu.chunk(2), w_t), lcm_guidance(*eps_cu.chunk(2), w_t)

    return CountingDenoiser(fn, cond.shape[0])


def consistency_sample(
    model: Denoiser,
    latents: torch.Tensor,
    timesteps: Sequence[int],
    schedule: Any,
    noises: Sequence[torch.Tensor],
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Multistep consistency sampling (CM Algorithm 1): denoise with f(x, t), re-noise to the next t, repeat.

    Args:
        model: the denoiser, ``model(x, t) -> (x0, eps)`` (a :class:`~t2vturbo.teachers.Teacher`'s ``denoise``).
        latents: x_T (B, C, F, h, w).
        timesteps: decreasing, e.g. [999, 759, 519, 279].
        schedule: the teacher's schedule (its ``consistency_output`` and ``add_noise``).
        noises: len(timesteps) - 1 fresh noise tensors for the re-noising steps.
    """
    x = latents
    denoised = latents
    for i, t in enumerate(timesteps):
        x0, _ = model(x, t)
        denoised = schedule.consistency_output(x, x0, t)
        if i + 1 < len(timesteps):
            x = schedule.add_noise(denoised, noises[i], timesteps[i + 1])
        if callback is not None:
            callback(i, t, denoised)
    return denoised


def ddim_cfg_sample(
    model: Denoiser,
    latents: torch.Tensor,
    timesteps: Sequence[int],
    schedule: Any,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta 0; an Euler step for a flow schedule) over ``timesteps`` (decreasing);
    ``model(x, t) -> (x0, eps)`` already applies CFG. Each step lands where the schedule's ``ddim_targets`` says
    (diffusers' rule), else on the next timestep."""
    x = latents
    targets = schedule.ddim_targets(list(timesteps))
    for i, t in enumerate(timesteps):
        x0, eps = model(x, t)
        x = schedule.step(x0, eps, targets[i])
        if callback is not None:
            callback(i, t, x0)
    return x


@torch.no_grad()
def sample_video(
    teacher: Teacher,
    prompts: Sequence[str],
    *,
    steps: int = 4,
    guidance: float = 7.5,
    mode: str = "student",
    frames: int = 16,
    height: int = 256,
    width: int = 256,
    seed: int | Sequence[int] | None = 0,
    fps: int | None = None,
    timesteps: Sequence[int] | None = None,
    origin_steps: int = 50,
    negative_prompt: str = "",
    decode: bool = True,
    decode_chunk: int = 0,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    motion: MotionGuidance | None = None,
) -> SampleOutput:
    """Generate videos for ``prompts``.

    Args:
        teacher: the model; for ``mode="student"`` its network carries a student adapter (or a merged student).
        steps: UNet evaluations (student: consistency steps; teacher: DDIM steps with one batched CFG call each).
        guidance: student: w fed through the guidance embedding (no CFG batch); teacher: CFG scale.
        mode: ``"student"`` (multistep consistency) or ``"teacher"`` (DDIM + classifier-free guidance).
        seed: ``seed + i`` for video i, or a list of seeds.
        fps: frame rate for fps-conditioned models (VideoCrafter2); default the model's.
        timesteps: explicit timesteps (decreasing), overriding the ones derived from ``steps``.
        decode_chunk: VAE-decode at most this many frames at once (0 = all) to cap memory.
        motion: T2V-Turbo-v2 motion-guided students: the motion condition (None: no motion input).
    """
    if mode not in ("student", "teacher"):
        raise ConfigError(f"mode must be 'student' or 'teacher', got {mode!r}")
    device = teacher.device
    dtype = teacher.dtype
    n = len(prompts)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    shape = teacher.latent_shape(frames, height, width)
    if timesteps is None:
        timesteps = (teacher.schedule.consistency_timesteps(steps, origin_steps=origin_steps) if mode == "student"
                     else teacher.schedule.ddim_timesteps(steps))
    timesteps = [t if isinstance(t, float) else int(t) for t in timesteps]
    generators = make_generators(n, seed)
    noises = draw_noise(generators, shape, len(timesteps) if mode == "student" else 1,
                        frame_major=teacher.noise_frame_major)
    noises = [z.to(device=device, dtype=dtype) for z in noises]
    fps_value = fps if fps is not None else teacher.default_fps
    fps_t = torch.full((n,), fps_value, device=device, dtype=torch.long) if fps_value is not None else None

    cond = teacher.encode_text(list(prompts))
    seconds["text"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    if mode == "student":
        model = student_denoiser(teacher, cond, guidance, fps_t, motion)
        latents = consistency_sample(model, noises[0], timesteps, teacher.schedule, noises[1:], callback)
    else:
        model = guided_denoiser(teacher, cond, teacher.encode_text([negative_prompt] * n), guidance, fps_t)
        latents = ddim_cfg_sample(model, noises[0], timesteps, teacher.schedule, callback)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds["unet"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    if decode:
        videos = teacher.decode_video(latents, chunk=decode_chunk).clamp(0, 1).float().cpu()
    else:
        videos = latents.float().cpu()
    seconds["decode"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    return SampleOutput(videos=videos, timesteps=timesteps, unet_calls=model.calls, seconds=seconds)
