"""``load_teacher(spec)``: the embedded ``tiny`` / ``tiny-wan`` teachers, a diffusers-layout folder, or a hub id in
the cache. The family comes from the spec or the folder (model_index.json: a ``Wan*Pipeline`` is Wan, else
UNet3D)."""

from __future__ import annotations

import torch

from .parts import TeacherParts
from .unet3d import load_diffusers_teacher


def load_teacher(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TeacherParts:
    """Load a teacher from ``tiny`` / ``tiny-wan`` (built in), a diffusers-layout folder, or a hub id in the local
    cache (``Wan-AI/...`` ids are Wan).

    Raises:
        MissingWeightError: one line naming what to download and where to put it.
    """
    from .wan import build_tiny_wan, is_wan_spec, load_wan_teacher

    if spec == "tiny":
        from ..tiny import load_tiny_teacher

        parts = load_tiny_teacher()
    elif spec == "tiny-wan":
        parts = build_tiny_wan()
    elif is_wan_spec(spec):
        parts = load_wan_teacher(spec)
    else:
        parts = load_diffusers_teacher(spec)
    parts.unet.requires_grad_(False)
    parts.vae.requires_grad_(False)
    parts.text_encoder.requires_grad_(False)
    parts.unet.eval()
    parts.vae.eval()
    parts.text_encoder.eval()
    return parts.to(device=device, dtype=dtype)
