"""Convert VideoCrafter2's original ``model.ckpt`` to a diffusers-layout teacher folder.

``convert_vc2_checkpoint(model.ckpt)`` reads the checkpoint safely (weights only), maps every key by name
(lvdm -> diffusers / transformers), checks every key is used and every shape is right, and returns
:class:`~t2vturbo.teachers.UNet3DTeacher`; :func:`save_converted` writes the folder that
:func:`t2vturbo.teachers.load_teacher` loads (docs/formats.md §1-2).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from ..safeio import load_torch_file
from ..schedules import DDIM_SCHEDULER_CONFIG, VPSchedule, scaled_linear_alphas_cumprod
from ..teachers.fps import DEFAULT_FPS
from ..teachers.unet3d import UNet3DTeacher
from .ldm_vae import build_vae
from .lvdm_unet import build_vc2_unet
from .open_clip_text import build_clip_tokenizer, build_text_encoder

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."

#: the VC2 training schedule (configs/inference_t2v_512_v2.0.yaml: linear_start / linear_end, "linear" = scaled)
SCHEDULER_CONFIG = DDIM_SCHEDULER_CONFIG


def _split_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def convert_vc2_state(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                      default_fps: int = DEFAULT_FPS, text_heads: int | None = None) -> UNet3DTeacher:
    """Convert a VideoCrafter2 ``state_dict`` (UNet, VAE, text tower, schedule buffers) to UNet3DTeacher."""
    known = (UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)
    extra = [k for k in state if not k.startswith(known) and "." in k]
    if extra:
        raise CheckpointError(f"VideoCrafter2 checkpoint: unexpected key {extra[0]}; pass the original model.ckpt")
    unet = build_vc2_unet(_split_prefix(state, UNET_PREFIX), dtype=dtype, default_fps=default_fps)
    vae = build_vae(_split_prefix(state, VAE_PREFIX), dtype=dtype)
    text_encoder = build_text_encoder(_split_prefix(state, TEXT_PREFIX), dtype=dtype, num_heads=text_heads)
    tokenizer = build_clip_tokenizer(int(text_encoder.config.max_position_embeddings))
    if "alphas_cumprod" in state:  # the schedule buffers saved with the model (float64 maths, float32 storage)
        alphas_cumprod = state["alphas_cumprod"].float().clone()
    else:
        alphas_cumprod = scaled_linear_alphas_cumprod()
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    return UNet3DTeacher(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                         schedule=VPSchedule(alphas_cumprod), name="videocrafter2", vae_scale=0.18215,
                         default_fps=default_fps if hasattr(unet, "fps_embedding") else None)


def read_vc2_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an original VC2 ``model.ckpt`` (weights only: a pickle that runs code is refused)."""
    ckpt = load_torch_file(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not any(str(k).startswith(UNET_PREFIX) for k in state):
        raise CheckpointError(f"{path} is not a VideoCrafter2 model.ckpt (no state_dict with {UNET_PREFIX}* keys)")
    return state


def convert_vc2_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32, default_fps: int = DEFAULT_FPS,
                           text_heads: int | None = None) -> UNet3DTeacher:
    """Read the original VideoCrafter2 ``model.ckpt`` and convert it to UNet3DTeacher (checked key by key).

    Args:
        path: the original ``model.ckpt`` (``{"state_dict": ...}``, docs/formats.md §2).
        dtype: dtype of the converted weights.
        default_fps: fps used when the caller gives none (VC2: 16).
        text_heads: text-encoder heads (default width // 64; only small test models need it).
    """
    return convert_vc2_state(read_vc2_state(path), dtype, default_fps, text_heads)


def save_converted(parts: UNet3DTeacher, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Atomically write a diffusers-layout folder (unet/ + fps embedding, vae/, text_encoder/, tokenizer/,
    scheduler/) that :func:`t2vturbo.teachers.load_teacher` loads.

    Args:
        dtype: save the weights in this dtype (default: as they are).
    """
    from ..teachers.unet3d import save_unet3d_teacher

    return save_unet3d_teacher(parts, out_dir, dtype,
                               {"t2vturbo": {"source": "videocrafter2", "default_fps": parts.default_fps}})


