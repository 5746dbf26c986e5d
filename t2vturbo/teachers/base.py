"""The Teacher protocol: what distillation, sampling and export need from a teacher, whatever its family.

Today's one family (UNet3D: ModelScope, VideoCrafter2, tiny) implements it as
:class:`t2vturbo.teachers.parts.TeacherParts`; a flow-matching video transformer (Wan2.1) is the next.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Teacher(Protocol):
    """A latent text-to-video teacher, and (with an adapter) its student."""

    name: str
    default_fps: int | None

    @property
    def schedule(self) -> Any: ...  # t2vturbo.schedules.VPSchedule (or a flow-matching schedule)

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def native_video(self) -> dict[str, int]:
        """frames, height, width, fps the model was made for."""
        ...

    def encode_text(self, prompts: list[str]) -> torch.Tensor: ...

    def encode_video(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels (B, F, 3, H, W) in [0, 1] -> scaled latents."""
        ...

    def decode_video(self, latents: torch.Tensor, frames: list[int] | None = None, chunk: int = 0) -> torch.Tensor:
        """Latents -> pixels (B, F, 3, H, W) in [0, 1] (clamped, as every reward needs)."""
        ...

    def denoise(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, guidance_cond: torch.Tensor | None = None,
                fps: torch.Tensor | int | None = None, network: nn.Module | None = None,
                motion_cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The prediction at timestep ``t`` in the common form (x0, eps); ``network`` runs instead of the model's
        own (its DDP wrapper while distilling), ``motion_cond`` is T2V-Turbo-v2's motion condition (None: none)."""
        ...
