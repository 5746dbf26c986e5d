"""T2V-Turbo-v2's motion guidance on a VideoCrafter2 UNet (the UNet3D family's side of :mod:`t2vturbo.motion`): an
explicit per-call input, like the fps, and where the UNet's temporal attention is.

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


def add_motion_condition(unet: nn.Module) -> MotionCondition:
    """Give a student UNet fresh, trainable motion projections (distilling a v2-style student with
    ``distill.motion``). The init makes the motion input a no-op: ``motion_cond_proj`` is zero and ``combine_proj``
    is ``[I | I]``, so ``combine_proj(cat[c, 0]) = c`` and the new student starts as the v1 one; both projections
    get gradients from the first step (through the identity halves). The reference trains the whole UNet from
    nn.Linear's random init instead; a LoRA student that starts at the teacher needs the no-op start."""
    cond_proj = getattr(unet.time_embedding, "cond_proj", None)
    if cond_proj is None:
        raise CheckpointError("motion projections need the student's guidance projection (time_embedding.cond_proj)")
    channels, embed_dim = cond_proj.weight.shape
    eye = torch.eye(channels)
    no_op = {"motion_cond_proj.weight": torch.zeros(channels, embed_dim), "combine_proj.weight": torch.cat([eye, eye], 1)}
    return attach_motion_condition(unet, no_op).requires_grad_(True)


def temporal_attention_layers(unet: nn.Module) -> list[nn.Module]:
    """The self-attentions of the decoder's temporal transformers, where T2V-Turbo-v2 (after MotionClone) reads
    the motion of a video: lvdm ``output_blocks.3-11.2.transformer_blocks.0.attn1`` of VideoCrafter2, in diffusers
    names ``up_blocks.*.temp_attentions.*.transformer_blocks.0.attn1`` (every up block that has attention)."""
    net = getattr(unet, "module", unet)
    layers = [temp.transformer_blocks[0].attn1 for block in net.up_blocks
              for temp in getattr(block, "temp_attentions", [])]
    if not layers:
        raise CheckpointError("this UNet has no temporal attention in its up blocks: motion guidance needs a "
                              "UNet3D-family teacher (ModelScope, VideoCrafter2, tiny)")
    return layers


class record_temporal_attention:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Within the block, every layer of :func:`temporal_attention_layers` runs diffusers' plain ``AttnProcessor``
    (the one that forms the attention probabilities explicitly) and appends them, differentiably, to ``probs``:
    one (batch * pixels * heads, frames, frames) tensor per layer and call. The layers' processors are restored
    on exit."""

    def __init__(self, unet: nn.Module):
        self.layers = temporal_attention_layers(unet)
        self.probs: list[torch.Tensor] = []

    def __enter__(self):
        from diffusers.models.attention_processor import AttnProcessor

        self.saved = [(layer, layer.processor, layer.__dict__.get("get_attention_scores")) for layer in self.layers]
        for layer in self.layers:
            scores = type(layer).get_attention_scores.__get__(layer)

            def recording(query, key, attention_mask=None, _scores=scores):
                out = _scores(query, key, attention_mask)
                self.probs.append(out)
                return out

            layer.set_processor(AttnProcessor())
            layer.get_attention_scores = recording
        return self

    def __exit__(self, *exc):
        for layer, processor, own in self.saved:
            layer.set_processor(processor)
            del layer.get_attention_scores
            if own is not None:
                layer.get_attention_scores = own
        return False
