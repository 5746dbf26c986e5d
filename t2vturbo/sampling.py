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

import torch

from .consistency import (
    add_noise,
    consistency_output,
    ddim_step,
    guidance_embedding,
    lcm_guidance,
)
from .errors import ConfigError
from .schedules import consistency_timesteps, ddim_timesteps
from .teachers import TeacherParts, decode_latents, encode_prompts


@dataclass
class SampleOutput:
    """Videos (B, F, 3, H, W) in [0, 1] on the CPU, the timesteps used, and where the time went."""

    videos: torch.Tensor
    timesteps: list[int]
    unet_calls: int
    seconds: dict[str, float] = field(default_factory=dict)


def latent_shape(parts: TeacherParts, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    if height % factor or width % factor:
        raise ConfigError(f"--height and --width must be multiples of {factor} for this model's VAE "
                          f"(got {height}x{width}); pick e.g. {height // factor * factor or factor}x{width // factor * factor or factor}")
    return (parts.unet.config.in_channels, frames, height // factor, width // factor)


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


def draw_noise(generators: list[torch.Generator], shape: tuple[int, ...], count: int) -> list[torch.Tensor]:
    """``count`` noise tensors of (B, C, F, h, w), each video drawing from its own generator in step order.

    The initial latents are drawn as (C, F, h, w); every later (re-noising) draw as (F, C, h, w) and permuted,
    because diffusers' video pipelines step the scheduler on frame-major latents: same numbers, same order.
    """
    c, f, h, w = shape
    per_video = []
    for g in generators:
        draws = [torch.randn((1, c, f, h, w), generator=g)]
        draws += [torch.randn((1, f, c, h, w), generator=g).permute(0, 2, 1, 3, 4) for _ in range(count - 1)]
        per_video.append(draws)
    return [torch.cat([pv[k] for pv in per_video]).contiguous() for k in range(count)]


def has_guidance_projection(unet) -> bool:
    """Whether ``unet`` carries a student's guidance projection (``time_embedding.cond_proj``)."""
    te = getattr(unet, "time_embedding", None)
    return te is not None and getattr(te, "cond_proj", None) is not None


def consistency_sample(
    model: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]],
    latents: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    noises: Sequence[torch.Tensor],
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Multistep consistency sampling (CM Algorithm 1): denoise with f(x, t), re-noise to the next t, repeat.

    Args:
        model: the denoiser, ``model(x, t) -> (x0, eps)`` (a :class:`~t2vturbo.teachers.Teacher`'s ``denoise``).
        latents: x_T (B, C, F, h, w).
        timesteps: decreasing, e.g. [999, 759, 519, 279].
        noises: len(timesteps) - 1 fresh noise tensors for the re-noising steps.
    """
    x = latents
    denoised = latents
    for i, t in enumerate(timesteps):
        x0, _ = model(x, t)
        denoised = consistency_output(x, x0, torch.tensor([t], device=x.device))
        if i + 1 < len(timesteps):
            x = add_noise(denoised, noises[i], alphas_cumprod[timesteps[i + 1]])
        if callback is not None:
            callback(i, t, denoised)
    return denoised


def ddim_cfg_sample(
    model: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]],
    latents: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta 0) over ``timesteps`` (decreasing); ``model(x, t) -> (x0, eps)`` already applies
    CFG."""
    x = latents
    final_alpha = alphas_cumprod[0]
    for i, t in enumerate(timesteps):
        x0, eps = model(x, t)
        a_prev = alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else final_alpha
        x = ddim_step(x0, eps, a_prev)
        if callback is not None:
            callback(i, t, x0)
    return x


@torch.no_grad()
def sample_video(
    parts: TeacherParts,
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
) -> SampleOutput:
    """Generate videos for ``prompts``.

    Args:
        parts: teacher parts; for ``mode="student"`` the UNet carries a student adapter (or a merged student).
        steps: UNet evaluations (student: consistency steps; teacher: DDIM steps with one batched CFG call each).
        guidance: student: w fed through the guidance embedding (no CFG batch); teacher: CFG scale.
        mode: ``"student"`` (multistep consistency) or ``"teacher"`` (DDIM + classifier-free guidance).
        seed: ``seed + i`` for video i, or a list of seeds.
        fps: frame rate for fps-conditioned models (VideoCrafter2); default the model's.
        timesteps: explicit timesteps (decreasing), overriding the ones derived from ``steps``.
        decode_chunk: VAE-decode at most this many frames at once (0 = all) to cap memory.
    """
    if mode not in ("student", "teacher"):
        raise ConfigError(f"mode must be 'student' or 'teacher', got {mode!r}")
    device = parts.device
    dtype = parts.dtype
    n = len(prompts)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    shape = latent_shape(parts, frames, height, width)
    if timesteps is None:
        timesteps = (consistency_timesteps(steps, origin_steps=origin_steps) if mode == "student"
                     else ddim_timesteps(steps))
    timesteps = [int(t) for t in timesteps]
    generators = make_generators(n, seed)
    noises = draw_noise(generators, shape, len(timesteps) if mode == "student" else 1)
    noises = [z.to(device=device, dtype=dtype) for z in noises]
    alphas = parts.alphas_cumprod.to(device=device, dtype=torch.float32)
    fps_value = fps if fps is not None else parts.default_fps
    fps_t = torch.full((n,), fps_value, device=device, dtype=torch.long) if fps_value is not None else None

    cond = encode_prompts(parts, list(prompts))
    seconds["text"] = time.perf_counter() - t0
    calls = 0
    t1 = time.perf_counter()
    if mode == "student":
        w_emb = None
        if has_guidance_projection(parts.unet):
            w = torch.full((n,), float(guidance))
            w_emb = guidance_embedding(w, parts.unet.time_embedding.cond_proj.in_features).to(device=device, dtype=dtype)

        def model(x, t):
            nonlocal calls
            calls += 1
            tt = torch.full((n,), t, device=device, dtype=torch.long)
            return parts.denoise(x, tt, cond, guidance_cond=w_emb, fps=fps_t)

        latents = consistency_sample(model, noises[0], timesteps, alphas, noises[1:], callback)
    else:
        uncond = encode_prompts(parts, [negative_prompt] * n)
        both = torch.cat([cond, uncond])
        fps2 = torch.cat([fps_t, fps_t]) if fps_t is not None else None

        def model(x, t):
            nonlocal calls
            calls += 1
            tt = torch.full((2 * n,), t, device=device, dtype=torch.long)
            x0_cu, eps_cu = parts.denoise(torch.cat([x, x]), tt, both, fps=fps2)
            w = torch.tensor(guidance - 1.0)
            return lcm_guidance(*x0_cu.chunk(2), w), lcm_guidance(*eps_cu.chunk(2), w)

        latents = ddim_cfg_sample(model, noises[0], timesteps, alphas, callback)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds["unet"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    if decode:
        videos = decode_latents(parts, latents, chunk=decode_chunk).clamp(0, 1).float().cpu()
    else:
        videos = latents.float().cpu()
    seconds["decode"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    return SampleOutput(videos=videos, timesteps=timesteps, unet_calls=calls, seconds=seconds)


#: what ``sample`` falls back to when neither the student nor the model records a value
FALLBACK_GUIDANCE = 7.5
FALLBACK_STUDENT_STEPS, FALLBACK_TEACHER_STEPS = 4, 50


def sampling_defaults(parts: TeacherParts, student_meta: dict | None, mode: str) -> dict:
    """Frames / height / width / fps / guidance / steps to sample with when the user gives none.

    Order: the student's recorded recipe (``student.json``: ``video``, ``default_guidance``, ``default_steps``),
    else the model's own (:meth:`TeacherParts.native_video`, its stored guidance), else the fallbacks above.
    """
    meta = student_meta or {}
    out: dict = dict(parts.native_video())
    recorded = meta.get("video") or {}
    for key in ("frames", "height", "width", "fps"):
        if recorded.get(key):
            out[key] = int(recorded[key])
    teacher = mode == "teacher"
    out["guidance"] = float((None if teacher else meta.get("default_guidance"))
                            or parts.stored_defaults.get("guidance") or FALLBACK_GUIDANCE)
    out["steps"] = int((None if teacher else meta.get("default_steps"))
                       or (FALLBACK_TEACHER_STEPS if teacher else FALLBACK_STUDENT_STEPS))
    return out
