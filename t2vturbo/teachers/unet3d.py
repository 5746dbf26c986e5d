"""The UNet3D family (ModelScope, VideoCrafter2 converted by t2vturbo, the tiny teacher, T2V-Turbo-v2's motion
UNets): :class:`UNet3DTeacher`, its text / video / latent maps, and loading a diffusers-layout folder
(docs/formats.md §1). Its own student formats and export writers are in :mod:`.unet3d_files`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..schedules import VPSchedule
from .base import Teacher
from .common import load_folder
from .fps import fps_input, load_fps_embedding
from .motion import (
    add_motion_condition,
    attach_motion_condition,
    motion_input,
    record_temporal_attention,
    temporal_attention_layers,
)

VAE_SCALE = 0.18215
#: frames and fps when neither the student nor the model says (ModelScope's and VideoCrafter2's 16 frames)
FALLBACK_FRAMES, FALLBACK_FPS = 16, 8
#: module classes a LoRA adapter wraps (the official T2V-Turbo choice: every exact Linear / Conv2d / Conv3d)
LORA_TYPES = (nn.Linear, nn.Conv2d, nn.Conv3d)


@dataclass
class UNet3DTeacher(Teacher):
    """A diffusers ``UNet3DConditionModel`` teacher with its VAE (2D, frame by frame) and CLIP text encoder."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module | None
    tokenizer: Any
    #: the noise schedule and what the UNet predicts (epsilon or v), read from the folder's scheduler config
    schedule: VPSchedule
    name: str = "custom"
    vae_scale: float = VAE_SCALE
    #: fps fed to an fps-conditioned UNet (VideoCrafter2); None for ModelScope-style models
    default_fps: int | None = None
    #: sampling defaults stored with the model (``t2vturbo_defaults.json`` in its folder): frames, fps, guidance
    stored_defaults: dict = field(default_factory=dict)
    can_learn_motion = True
    plan = {"lora_targets": "every Linear/Conv", "solver": "DDIM, N={n}"}

    @property
    def network(self) -> nn.Module:
        return self.unet

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.schedule.alphas_cumprod

    @property
    def supports_motion(self) -> bool:
        return getattr(self.unet, "motion_condition", None) is not None

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def native_video(self) -> dict[str, int]:
        """frames (stored, else 16), height and width (stored, else the UNet's sample_size times the VAE's
        downsampling factor), fps (stored, else the fps condition's default, else 8)."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return {"frames": int(self.stored_defaults.get("frames", FALLBACK_FRAMES)),
                "height": int(self.stored_defaults.get("height", h * self.spatial_factor)),
                "width": int(self.stored_defaults.get("width", w * self.spatial_factor)),
                "fps": int(self.stored_defaults.get("fps", self.default_fps or FALLBACK_FPS))}

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        f = self.spatial_factor
        if height % f or width % f:
            raise ConfigError(f"height and width must be multiples of {f} for this model's VAE (got "
                              f"{height}x{width}); pick e.g. {height // f * f or f}x{width // f * f or f}")
        return (self.unet.config.in_channels, frames, height // f, width // f)

    def lora_targets(self, wanted: str | list[str] = "all") -> list[str]:
        """Every exact Linear / Conv2d / Conv3d of the UNet but the guidance, fps and motion projections."""
        from ..student import match_module_names

        names = [n for n, m in self.unet.named_modules() if type(m) in LORA_TYPES and not n.endswith("cond_proj")
                 and not n.startswith(("fps_embedding", "motion_condition"))]
        return names if wanted == "all" else match_module_names(names, wanted)

    def text_states_shape(self) -> tuple[int, int]:
        length = getattr(self.tokenizer, "model_max_length", None) or 77
        return (min(int(length), 77), int(self.unet.config.cross_attention_dim))

    def network_blocks(self) -> list[nn.Module]:
        return [b for b in (*self.unet.down_blocks, self.unet.mid_block, *self.unet.up_blocks) if b is not None]

    def enable_block_checkpointing(self) -> int:
        """Every down / mid / up block recomputed in the backward (diffusers' UNet3DConditionModel has no
        ``enable_gradient_checkpointing``); active only while grad is enabled in training mode."""
        from torch.utils.checkpoint import checkpoint

        blocks = self.network_blocks()
        for block in blocks:
            if getattr(block, "_t2vturbo_checkpointed", False):
                continue
            inner = block.forward

            def forward(*args, _inner=inner, _block=block, **kwargs):
                if _block.training and torch.is_grad_enabled():
                    return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
                return _inner(*args, **kwargs)

            block.forward = forward
            block._t2vturbo_checkpointed = True
        return len(blocks)

    # ------------------------------------------------------------------ the model's maps
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return encode_prompts(self, prompts)

    def encode_video(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return encode_pixels(self, pixels, generator)

    def decode_video(self, latents: torch.Tensor, frames: list[int] | None = None, chunk: int = 0) -> torch.Tensor:
        return decode_latents(self, latents, frames, chunk)

    def encode_moments(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, f = pixels.shape[:2]
        flat = (pixels.reshape(b * f, *pixels.shape[2:]) * 2.0 - 1.0).to(next(self.vae.parameters()).dtype)
        dist = self.vae.encode(flat).latent_dist

        def layout(x):  # (B F, C, h, w) -> (B, C, F, h, w), scaled
            x = x * self.vae_scale
            return x.reshape(b, f, *x.shape[1:]).permute(0, 2, 1, 3, 4).to(self.dtype)

        return layout(dist.mean), layout(dist.std)

    def sample_latents(self, mean: torch.Tensor, std: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        # encode_video draws the posterior noise per frame image, (B F, C, h, w): the same numbers in that order
        b, c, f, h, w = mean.shape
        where = generator.device if generator is not None else mean.device
        eps = torch.randn((b * f, c, h, w), generator=generator, dtype=mean.dtype, device=where)
        eps = eps.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4).to(mean.device)
        return (mean + std * eps).to(self.dtype)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, guidance_cond: torch.Tensor | None = None,
                fps: torch.Tensor | int | None = None, network: nn.Module | None = None,
                motion_cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) of the UNet at ``x`` (B, C, F, h, w); its own output (epsilon or v, as the schedule says) is
        converted by :meth:`VPSchedule.to_x0_eps`."""
        out = call_unet(network if network is not None else self.unet, x, t, text, timestep_cond=guidance_cond,
                        fps=fps, motion_cond=motion_cond)
        return self.schedule.to_x0_eps(out, x, t)

    # ------------------------------------------------------------------ T2V-Turbo-v2 motion guidance
    def add_motion_condition(self) -> nn.Module:
        temporal_attention_layers(self.unet)
        if not self.supports_motion:
            add_motion_condition(self.unet)
        return self.unet.motion_condition.requires_grad_(True)

    def attach_motion_condition(self, state: dict[str, torch.Tensor]) -> nn.Module:
        return attach_motion_condition(self.unet, state)

    def motion_condition_state(self) -> dict[str, torch.Tensor]:
        return dict(self.unet.motion_condition.state_dict()) if self.supports_motion else {}

    def drop_motion_condition(self) -> None:
        if self.supports_motion:
            del self.unet.motion_condition

    def record_motion_attention(self, network: nn.Module | None = None):
        return record_temporal_attention(self.unet if network is None else network)

    # ------------------------------------------------------------------ student files and export
    def load_student_file(self, path: Path, kind: str) -> dict:
        from .unet3d_files import load_official_student, load_v2_student

        if kind == "v2":
            return load_v2_student(path, self)
        return load_official_student(path, self)

    def write_pipeline(self, folder: Path, *, guidance: float, origin_steps: int, dtype: torch.dtype,
                       fps: int | None, base_spec: str) -> dict:
        from .unet3d_files import write_diffusers_pipeline

        return write_diffusers_pipeline(self, folder, guidance, origin_steps, base_spec, dtype, fps)

    def write_adapter(self, folder: Path, *, guidance: float, base_spec: str, meta: dict) -> dict:
        from .unet3d_files import write_lora_adapter

        return write_lora_adapter(self, folder, base_spec, meta)


def call_unet(
    unet: nn.Module,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    timestep_cond: torch.Tensor | None = None,
    fps: torch.Tensor | int | None = None,
    motion_cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """The one place that calls a UNet: returns its output for (B, C, F, H, W) latents.

    ``fps`` reaches an fps-conditioned UNet (VideoCrafter2) through its ``fps_embedding`` module and
    ``motion_cond`` a v2 UNet through its motion projections; other UNets ignore ``fps``.
    """
    with fps_input(unet, fps), motion_input(unet, motion_cond):
        return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, timestep_cond=timestep_cond,
                    return_dict=False)[0]


@torch.no_grad()
def encode_prompts(parts: UNet3DTeacher, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states (B, L, D) for ``prompts`` (last_hidden_state, padded to max length)."""
    tok = parts.tokenizer(
        list(prompts), padding="max_length", max_length=parts.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    )
    out = parts.text_encoder(tok.input_ids.to(parts.device))
    hidden = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
    return hidden.to(parts.dtype)


def decode_latents(parts: UNet3DTeacher, latents: torch.Tensor, frames: list[int] | None = None,
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


def encode_pixels(parts: UNet3DTeacher, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Encode pixels (B, F, 3, H, W) in [0, 1] to scaled latents (B, C, F, h, w) (a sample of the posterior)."""
    b, f = pixels.shape[:2]
    flat = (pixels.reshape(b * f, *pixels.shape[2:]) * 2.0 - 1.0).to(next(parts.vae.parameters()).dtype)
    dist = parts.vae.encode(flat).latent_dist
    lat = dist.sample(generator=generator) * parts.vae_scale
    return lat.reshape(b, f, *lat.shape[1:]).permute(0, 2, 1, 3, 4).to(parts.dtype)


def load_diffusers_teacher(spec: str, text_encoder: bool = True) -> UNet3DTeacher:
    """Load a ModelScope/diffusers text-to-video folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    how = ("model.teacher in the recipe (distill) or --model (sample, export): a diffusers-layout folder or hub id, "
           "e.g. ali-vilab/text-to-video-ms-1.7b")
    folder = load_folder(spec, {"unet": UNet3DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
                                "tokenizer": CLIPTokenizer},
                         "a diffusers text-to-video folder", how, f"pass it with {how}", "cannot load the model",
                         f"check the folder or pass another with {how}",
                         skip=() if text_encoder else ("text_encoder",))
    root, m = folder.root, folder.modules
    unet = m["unet"]
    default_fps = None
    # fps-conditioned UNets (VideoCrafter2 converted by t2vturbo) keep the fps embedding beside the UNet
    if load_fps_embedding(unet, root / "unet"):
        default_fps = int(unet.fps_embedding.default_fps)
    vae_scale = float(getattr(m["vae"].config, "scaling_factor", VAE_SCALE))
    return UNet3DTeacher(unet=unet, vae=m["vae"], text_encoder=m["text_encoder"], tokenizer=m["tokenizer"],
                         schedule=VPSchedule.from_scheduler_config(folder.scheduler_config), name=str(spec),
                         vae_scale=vae_scale, default_fps=default_fps, stored_defaults=folder.stored_defaults)


def save_unet3d_teacher(teacher: UNet3DTeacher, folder: str | Path, dtype: torch.dtype | None = None,
                        index: dict | None = None) -> Path:
    """Atomically write ``teacher`` as a diffusers-layout folder that :func:`load_diffusers_teacher` loads: unet/
    (an fps embedding saved beside the stock UNet), vae/, text_encoder/, tokenizer/, scheduler/ (its schedule's
    DDIM config), model_index.json (``index`` adds entries), and its stored sampling defaults.

    Args:
        dtype: save the weights in this dtype (default: as they are).
    """
    import json

    from ..safeio import atomic_path
    from .common import DEFAULTS_FILE
    from .fps import save_fps_embedding

    folder = Path(folder)
    unet = teacher.unet
    fps = getattr(unet, "fps_embedding", None)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        if dtype is not None:
            teacher.to(dtype=dtype)
        if fps is not None:
            del unet._modules["fps_embedding"]  # saved on its own, beside the stock diffusers UNet
        try:
            unet.save_pretrained(tmp / "unet", safe_serialization=True)
        finally:
            if fps is not None:
                unet._modules["fps_embedding"] = fps
        if fps is not None:
            save_fps_embedding(fps, tmp / "unet")
        teacher.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        teacher.text_encoder.save_pretrained(tmp / "text_encoder")
        teacher.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(
            json.dumps(teacher.schedule.scheduler_config(), indent=2) + "\n")
        (tmp / "model_index.json").write_text(json.dumps({
            "_class_name": "TextToVideoSDPipeline",
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet3DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            **(index or {}),
        }, indent=2) + "\n")
        if teacher.stored_defaults:
            (tmp / DEFAULTS_FILE).write_text(json.dumps(teacher.stored_defaults, indent=1) + "\n")
    return folder
