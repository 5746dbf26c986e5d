"""``load_teacher(spec)``: the embedded ``tiny`` teacher, a diffusers-layout folder, or a hub id in the cache."""

from __future__ import annotations

import torch

from .parts import TeacherParts
from .unet3d import load_diffusers_teacher


def load_teacher(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TeacherParts:
    """Load teacher parts from ``tiny`` (embedded), a diffusers-layout folder, or a hub id in the local cache.

    Raises:
        MissingWeightError: one line naming what to download and where to put it.
    """
    if spec == "tiny":
        from ..tiny import load_tiny_teacher

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
