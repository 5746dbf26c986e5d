"""T2V-Turbo-v2's motion guidance on a VideoCrafter2 UNet: an explicit per-call input, like the fps.

The released v2 students (``unet_mg.pt``) add two bias-free projections to the lvdm UNet: ``motion_cond_proj``
(256 -> C0) of the motion-guidance embedding and ``combine_proj`` (2 C0 -> C0). With a motion condition the time
MLP's input is ``t_emb + combine_proj(cat[time_cond_proj(w_emb), motion_cond_proj(m_emb)])`` (the combination
replaces the guidance term, it is not added to it); without one it is ``t_emb + time_cond_proj(w_emb)``
(docs/formats.md §3). Our UNet stays a stock diffusers ``UNet3DConditionModel``: ``time_cond_proj`` is its
``time_embedding.cond_proj`` and the two new projections sit beside it as ``unet.motion_condition``;
:class:`motion_input` applies them for one call.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError
from .common import OneCallHook

MOTION_KEYS = ("motion_cond_proj.weight", "combine_proj.weight")


class MotionCondition(nn.Module):
    """The two projections of T2V-Turbo-v2's motion guidance (lvdm names kept: ``motion_cond_proj``,
    ``combine_proj``)."""

    def __init__(self, channels: int, embed_dim: int = 256):
        super().__init__()
        self.motion_cond_proj = nn.Linear(embed_dim, channels, bias=False)
        self.combine_proj = nn.Linear(2 * channels, channels, bias=False)

    def forward(self, guidance_term: torch.Tensor, m_emb: torch.Tensor) -> torch.Tensor:
        motion = self.motion_cond_proj(m_emb.to(self.motion_cond_proj.weight.dtype))
        return self.combine_proj(torch.cat([guidance_term.to(motion.dtype), motion], dim=1))


def split_motion_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the VC2 UNet's own keys, the motion keys) of an lvdm state dict; the second is {} for a v1 / plain UNet."""
    motion = {k: v for k, v in state.items() if k in MOTION_KEYS}
    if motion and set(motion) != set(MOTION_KEYS):
        missing = next(k for k in MOTION_KEYS if k not in motion)
        raise CheckpointError(f"a T2V-Turbo-v2 motion-guided UNet needs both {MOTION_KEYS}; {missing} is missing")
    return {k: v for k, v in state.items() if k not in MOTION_KEYS}, motion


def attach_motion_condition(unet: nn.Module, motion_state: dict[str, torch.Tensor]) -> MotionCondition:
    """Build :class:`MotionCondition` from ``motion_state`` (the two lvdm weights) onto ``unet``, checked by shape."""
    cond_proj = getattr(unet.time_embedding, "cond_proj", None)
    if cond_proj is None:
        raise CheckpointError("a motion-guided UNet needs its guidance projection (time_cond_proj.weight) too")
    channels, embed_dim = cond_proj.weight.shape
    module = MotionCondition(channels, embed_dim)
    for key, tensor in motion_state.items():
        want = module.state_dict()[key].shape
        if tuple(tensor.shape) != tuple(want):
            raise CheckpointError(f"{key} has shape {tuple(tensor.shape)}, this UNet needs {tuple(want)}")
    module.load_state_dict({k: v.float() for k, v in motion_state.items()}, strict=True)
    param = cond_proj.weight
    unet.motion_condition = module.to(device=param.device, dtype=param.dtype).requires_grad_(False)
    return unet.motion_condition


class motion_input(OneCallHook):  # noqa: N801 - used as a context manager, like torch.no_grad
    """Within the block the UNet's time embedding takes ``t_emb + combine_proj(cat[cond_proj(w_emb),
    motion_cond_proj(m_emb)])``; ``m_emb`` None leaves the UNet as it is (the v2 reference's motion_cond=None)."""

    def __init__(self, unet: nn.Module, m_emb: torch.Tensor | None):
        net = getattr(unet, "module", unet)
        self.m_emb = m_emb
        self.module = getattr(net, "motion_condition", None)
        self.target = net.time_embedding
        if m_emb is not None and self.module is None:
            raise CheckpointError("a motion condition was given but this UNet has no motion projections; load a "
                                  "T2V-Turbo-v2 motion-guided student (unet_mg.pt)")

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        condition = args[1] if len(args) > 1 else kwargs.get("condition")
        if condition is None:
            raise CheckpointError("the motion condition needs the guidance embedding too (timestep_cond)")
        term = module.cond_proj(condition.to(module.cond_proj.weight.dtype))
        combined = self.module(term, self.m_emb.to(sample.device))
        return (sample + combined.to(sample.dtype), None), {}

    def register(self):
        return (self.target.register_forward_pre_hook(self._hook, with_kwargs=True) if self.m_emb is not None
                else None)


def motion_schedule(timesteps: list[int], percentage: float = 0.3, num_train_timesteps: int = 1000) -> list[bool]:
    """Which sampling steps get the motion guidance: those with t >= T (1 - percentage) (the v2 pipeline; the
    others get the embedding of 0, not no condition)."""
    threshold = num_train_timesteps * (1 - percentage)
    return [t >= threshold for t in timesteps]
