"""A tiny differentiable test reward that needs no weights: how close frames are to a colour named in the prompt.

Used by tests and the dry-run paths; it is NOT a quality measure.
"""

from __future__ import annotations

import torch

from . import RewardModel, register_reward

_COLOURS = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
}


class ColourReward(RewardModel):
    def __init__(self, kind: str = "image", num_frames: int | None = None):
        super().__init__()
        self.kind = kind
        self.num_frames = num_frames
        self.register_buffer("palette", torch.tensor(list(_COLOURS.values())))

    def target(self, prompt: str) -> torch.Tensor:
        words = prompt.lower().split()
        for i, name in enumerate(_COLOURS):
            if name in words:
                return self.palette[i]
        return self.palette.new_full((3,), 0.5)

    def forward(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        tgt = torch.stack([self.target(p) for p in prompts]).to(frames)  # (B, 3)
        mean = frames.mean(dim=(-1, -2))  # (B, T, 3)
        if self.kind == "video":
            # A motion-aware toy: reward also depends on frame-to-frame change.
            motion = (frames[:, 1:] - frames[:, :-1]).abs().mean(dim=(1, 2, 3, 4)) if frames.shape[1] > 1 else 0.0
            return -((mean - tgt[:, None]) ** 2).sum(-1).mean(-1) + motion
        return -((mean - tgt[:, None]) ** 2).sum(-1).mean(-1)


@register_reward("toy-image", kind="image", description="test reward: mean colour vs the colour named in the prompt")
def load_toy_image(checkpoint=None, device="cpu", dtype=torch.float32, **options) -> RewardModel:
    return ColourReward("image").to(device=device, dtype=dtype)


@register_reward("toy-video", kind="video", description="test reward: colour match plus frame-to-frame motion")
def load_toy_video(checkpoint=None, device="cpu", dtype=torch.float32, num_frames: int = 8, **options) -> RewardModel:
    return ColourReward("video", num_frames=num_frames).to(device=device, dtype=dtype)
