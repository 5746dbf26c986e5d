"""Teacher parts: load a latent text-to-video model (diffusers layout, hub id, or the embedded tiny model).

A teacher is a :class:`TeacherParts`: UNet3DConditionModel, AutoencoderKL, text encoder + tokenizer and the
DDPM noise schedule. The student is the SAME UNet with a LoRA adapter and a guidance projection
(see :mod:`t2vturbo.student`); nothing here copies the UNet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import MissingWeightError
from .hub import resolve_pretrained_dir

VAE_SCALE = 0.18215
#: frames and fps when neither the student nor the model says (ModelScope's and VideoCrafter2's 16 frames)
FALLBACK_FRAMES, FALLBACK_FPS = 16, 8
#: the file in a model folder that holds its sampling defaults (frames, fps, guidance)
DEFAULTS_FILE = "t2vturbo_defaults.json"

#: the DDIM scheduler config of ModelScope, VideoCrafter2 and the tiny teacher (epsilon, scaled_linear betas)
DDIM_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


@dataclass
class TeacherParts:
    """Everything a teacher (and so its student) needs besides the LoRA adapter."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    alphas_cumprod: torch.Tensor
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

    def to(self, device=None, dtype=None) -> TeacherParts:
        for m in (self.unet, self.vae, self.text_encoder):
            p = next(m.parameters())
            if (device is not None and p.device != torch.device(device)) or (dtype is not None and p.dtype != dtype):
                m.to(device=device, dtype=dtype)
        if device is not None:
            self.alphas_cumprod = self.alphas_cumprod.to(device)
        return self


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """The "scaled_linear" DDPM schedule (FORMATS §1), float64 then float32 like diffusers."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def alphas_cumprod_from_scheduler_config(cfg: dict) -> torch.Tensor:
    """Rebuild alphas_cumprod from a diffusers scheduler config (scaled_linear or linear)."""
    n = int(cfg.get("num_train_timesteps", 1000))
    b0, b1 = float(cfg.get("beta_start", 0.00085)), float(cfg.get("beta_end", 0.012))
    kind = cfg.get("beta_schedule", "scaled_linear")
    if kind == "scaled_linear":
        return scaled_linear_alphas_cumprod(n, b0, b1)
    if kind == "linear":
        betas = torch.linspace(b0, b1, n, dtype=torch.float32)
        return torch.cumprod(1.0 - betas, dim=0)
    raise MissingWeightError(f"unsupported beta_schedule {kind!r} in scheduler config; use scaled_linear or linear")


def call_unet(
    unet: nn.Module,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    timestep_cond: torch.Tensor | None = None,
    fps: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """The one place that calls a UNet: returns epsilon for (B, C, F, H, W) latents.

    ``fps`` reaches an fps-conditioned UNet (VideoCrafter2) through its ``fps_embedding`` module;
    ModelScope-style UNets ignore it.
    """
    fps_module = getattr(getattr(unet, "module", unet), "fps_embedding", None)  # unwrap DDP
    if fps_module is not None:
        fps_module.current_fps = fps
    try:
        return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, timestep_cond=timestep_cond,
                    return_dict=False)[0]
    finally:
        if fps_module is not None:
            fps_module.current_fps = None


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


def load_teacher(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TeacherParts:
    """Load teacher parts from ``tiny`` (embedded), a diffusers-layout folder, or a hub id in the local cache.

    Raises:
        MissingWeightError: one line naming what to download and where to put it.
    """
    if spec == "tiny":
        from .tiny import load_tiny_teacher

        parts = load_tiny_teacher()
    else:
        parts = load_diffusers_teacher(spec)
    parts.unet.requires_grad_(False)
    parts.vae.requires_grad_(False)
    parts.text_encoder.requires_grad_(False)
    parts.unet.eval()
    parts.vae.eval()
    parts.text_encoder.eval()
    return parts.to(device=device, dtype=dtype)


def load_diffusers_teacher(spec: str) -> TeacherParts:
    """Load a ModelScope/diffusers text-to-video folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    how = ("model.teacher in the recipe (distill) or --model (sample, export): a diffusers-layout folder or hub id, "
           "e.g. ali-vilab/text-to-video-ms-1.7b")
    root = Path(resolve_pretrained_dir(spec, "unet/ vae/ text_encoder/ tokenizer/ scheduler/", how))
    for sub in ("unet", "vae", "text_encoder", "tokenizer"):
        if not (root / sub).is_dir():
            raise MissingWeightError(f"{root} has no {sub}/ folder; a diffusers text-to-video folder needs "
                                     f"unet/ vae/ text_encoder/ tokenizer/ (pass it with {how})")
    try:
        unet = UNet3DConditionModel.from_pretrained(root / "unet")
        vae = AutoencoderKL.from_pretrained(root / "vae")
        text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    except OSError as err:
        first = str(err).splitlines()[0]
        raise MissingWeightError(f"cannot load the model at {root}: {first}; check the folder or pass another with {how}") from None
    sched_cfg_path = root / "scheduler" / "scheduler_config.json"
    sched_cfg = json.loads(sched_cfg_path.read_text()) if sched_cfg_path.is_file() else {}
    extra: dict = {}
    default_fps = None
    try:  # fps-conditioned UNets (VideoCrafter2 converted by t2vturbo) keep the fps embedding beside the UNet
        from .vc2 import load_fps_embedding

        if load_fps_embedding(unet, root / "unet"):
            default_fps = int(getattr(unet.fps_embedding, "default_fps", 16))
    except ModuleNotFoundError:
        pass
    vae_scale = float(getattr(vae.config, "scaling_factor", VAE_SCALE))
    defaults_path = root / DEFAULTS_FILE
    stored = json.loads(defaults_path.read_text()) if defaults_path.is_file() else {}
    return TeacherParts(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        alphas_cumprod=alphas_cumprod_from_scheduler_config(sched_cfg), name=str(spec),
                        vae_scale=vae_scale, default_fps=default_fps, extra=extra, stored_defaults=stored)
