"""What every teacher of the UNet3D family hands the rest of t2vturbo: :class:`TeacherParts`, and the text, video
and latent conversions on them (encode prompts, encode pixels to latents, decode latents to pixels).

The student is the SAME UNet with a LoRA adapter and a guidance projection (see :mod:`t2vturbo.student`);
nothing here copies the UNet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..schedules import VPSchedule
from .common import move_modules

VAE_SCALE = 0.18215
#: frames and fps when neither the student nor the model says (ModelScope's and VideoCrafter2's 16 frames)
FALLBACK_FRAMES, FALLBACK_FPS = 16, 8


@dataclass
class TeacherParts:
    """Everything a teacher (and so its student) needs besides the LoRA adapter."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    #: the noise schedule and what the UNet predicts (epsilon or v), read from the folder's scheduler config
    schedule: VPSchedule
    name: str = "custom"
    vae_scale: float = VAE_SCALE
    #: fps fed to an fps-conditioned UNet (VideoCrafter2); None for ModelScope-style models
    default_fps: int | None = None
    extra: dict = field(default_factory=dict)
    #: sampling defaults stored with the model (``t2vturbo_defaults.json`` in its folder): frames, fps, guidance
    stored_defaults: dict = field(default_factory=dict)

    def native_video(self) -> dict[str, int]:
        """The clip shape the model was made for: frames (stored, else 16), height and width (UNet sample_size
        times the VAE's downsampling factor), fps (stored, else the fps condition's default, else 8)."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return {"frames": int(self.stored_defaults.get("frames", FALLBACK_FRAMES)),
                "height": int(h * factor), "width": int(w * factor),
                "fps": int(self.stored_defaults.get("fps", self.default_fps or FALLBACK_FPS))}

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.schedule.alphas_cumprod

    # ------------------------------------------------------------------ the Teacher protocol (teachers/base.py)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return encode_prompts(self, prompts)

    def encode_video(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return encode_pixels(self, pixels, generator)

    def decode_video(self, latents: torch.Tensor, frames: list[int] | None = None, chunk: int = 0) -> torch.Tensor:
        return decode_latents(self, latents, frames, chunk)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, guidance_cond: torch.Tensor | None = None,
                fps: torch.Tensor | int | None = None, network: nn.Module | None = None,
                motion_cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) of the UNet at ``x`` (B, C, F, h, w), timesteps ``t`` (B,), text states ``text``;
        ``guidance_cond`` is a student's guidance embedding, ``fps`` VideoCrafter2's frame rate; ``network`` runs
        instead of ``self.unet`` (its DDP wrapper while distilling). The UNet's own output (epsilon or v, as the
        schedule says) is converted by :meth:`VPSchedule.to_x0_eps`."""
        out = call_unet(network if network is not None else self.unet, x, t, text, timestep_cond=guidance_cond, fps=fps,
                        motion_cond=motion_cond)
        return self.schedule.to_x0_eps(out, x, t)

    def to(self, device=None, dtype=None) -> TeacherParts:
        move_modules((self.unet, self.vae, self.text_encoder), device, dtype)
        if device is not None:
            self.schedule.to(device)
        return self


def call_unet(
    unet: nn.Module,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    timestep_cond: torch.Tensor | None = None,
    fps: torch.Tensor | int | None = None,
    motion_cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """The one place that calls a UNet: returns epsilon for (B, C, F, H, W) latents.

    ``fps`` reaches an fps-conditioned UNet (VideoCrafter2) through its ``fps_embedding`` module;
    ModelScope-style UNets ignore it.
    """
    from .fps import fps_input
    from .motion import motion_input

    with fps_input(unet, fps), motion_input(unet, motion_cond):
        return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, timestep_cond=timestep_cond,
                    return_dict=False)[0]


@torch.no_grad()
def encode_prompts(parts: TeacherParts, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states (B, L, D) for ``prompts`` (last_hidden_state, padded to max length)."""
    tok = parts.tokenizer(
        list(prompts), padding="max_length", max_length=parts.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    )
    out = parts.text_encoder(tok.input_ids.to(parts.device))
    hidden = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
    return hidden.to(parts.dtype)


def decode_latents(parts: TeacherParts, latents: torch.Tensor, frames: list[int] | None = None,
                   chunk: int = 0) -> torch.Tensor:
    """Decode (B, C, F, h, w) latents to pixels (B, F', 3, H, W) in [0, 1] (differentiable).

    The map is ``(x / 2 + 0.5).clamp(0, 1)``, as the reference code feeds every reward: a reward never sees a pixel
    value a video cannot show, and no gradient flows through values outside [0, 1] (no reward hacking there).

    Args:
        frames: which frame indices to decode (default: all).
        chunk: decode at most this many frames per VAE call (0 = all at once) to cap memory.
    """
    b, c, f, h, w = latents.shape
    if frames is not None:
        latents = latents[:, :, frames]
        f = len(frames)
    flat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w) / parts.vae_scale
    flat = flat.to(next(parts.vae.parameters()).dtype)
    if chunk and chunk < flat.shape[0]:
        pix = torch.cat([parts.vae.decode(x).sample for x in flat.split(chunk)])
    else:
        pix = parts.vae.decode(flat).sample
    pix = (pix.float() / 2.0 + 0.5).clamp(0.0, 1.0)
    return pix.reshape(b, f, *pix.shape[1:])


def encode_pixels(parts: TeacherParts, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Encode pixels (B, F, 3, H, W) in [0, 1] to scaled latents (B, C, F, h, w) (a sample of the posterior)."""
    b, f = pixels.shape[:2]
    flat = (pixels.reshape(b * f, *pixels.shape[2:]) * 2.0 - 1.0).to(next(parts.vae.parameters()).dtype)
    dist = parts.vae.encode(flat).latent_dist
    lat = dist.sample(generator=generator) * parts.vae_scale
    return lat.reshape(b, f, *lat.shape[1:]).permute(0, 2, 1, 3, 4).to(parts.dtype)
