"""The lvdm (VideoCrafter2) UNet -> diffusers ``UNet3DConditionModel``: key map, layout, checked renaming
(docs/formats.md §2)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CheckpointError
from ..teachers.fps import DEFAULT_FPS, FPSEmbedding, attach_fps_embedding


@dataclass(frozen=True)
class UNetLayout:
    """What the lvdm -> diffusers name mapping needs to know about the block structure."""

    levels: int = 4
    layers_per_block: int = 2
    #: spatial + temporal attention at each down level (VC2: all but the deepest)
    attention: tuple[bool, ...] = (True, True, True, False)
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)

    def up_attention(self, level: int) -> bool:
        return self.attention[self.levels - 1 - level]


VC2_LAYOUT = UNetLayout()

_RESNET_PARTS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
}
_EMBED_PARTS = {"0": "linear_1", "2": "linear_2"}


def _resnet_key(prefix: str, pos: int, rest: list[str]) -> str:
    if rest[0] == "temopral_conv":  # (sic) the lvdm spelling
        return f"{prefix}.temp_convs.{pos}." + ".".join(rest[1:])
    if rest[0] == "skip_connection":
        return f"{prefix}.resnets.{pos}.conv_shortcut." + ".".join(rest[1:])
    part = _RESNET_PARTS[".".join(rest[:2])]
    return f"{prefix}.resnets.{pos}.{part}." + ".".join(rest[2:])


def _block_key(prefix: str, pos: int, sub: int, rest: list[str], attention: bool) -> str:
    if sub == 0:
        return _resnet_key(prefix, pos, rest)
    if attention and sub == 1:
        return f"{prefix}.attentions.{pos}." + ".".join(rest)
    if attention and sub == 2:
        return f"{prefix}.temp_attentions.{pos}." + ".".join(rest)
    raise KeyError


def lvdm_to_diffusers_key(key: str, layout: UNetLayout = VC2_LAYOUT) -> str:
    """Map one lvdm UNet key (no ``model.diffusion_model.`` prefix) to its diffusers name (docs/formats.md §2).

    The fps embedding maps to ``fps_embedding.linear_{1,2}``; ``time_cond_proj`` to ``time_embedding.cond_proj``.

    Raises:
        KeyError: the key has no place in a VC2 UNet of this layout.
    """
    p = key.split(".")
    head, per = p[0], layout.layers_per_block + 1
    if head in ("time_embed", "fps_embedding"):
        return ("time_embedding." if head == "time_embed" else "fps_embedding.") + _EMBED_PARTS[p[1]] + "." + ".".join(p[2:])
    if head == "time_cond_proj":
        return "time_embedding.cond_proj." + ".".join(p[1:])
    if head == "init_attn" and p[1] == "0":
        return "transformer_in." + ".".join(p[2:])
    if head == "out":
        return {"0": "conv_norm_out", "2": "conv_out"}[p[1]] + "." + ".".join(p[2:])
    if head == "input_blocks":
        i, sub, rest = int(p[1]), int(p[2]), p[3:]
        if i == 0 and sub == 0:
            return "conv_in." + ".".join(rest)
        level, pos = divmod(i - 1, per)
        if level >= layout.levels:
            raise KeyError(key)
        prefix = f"down_blocks.{level}"
        if pos == layout.layers_per_block:
            if sub == 0 and rest[0] == "op" and level < layout.levels - 1:
                return f"{prefix}.downsamplers.0.conv." + ".".join(rest[1:])
            raise KeyError(key)
        return _block_key(prefix, pos, sub, rest, layout.attention[level])
    if head == "middle_block":
        sub, rest = int(p[1]), p[2:]
        if sub in (0, 3):
            return _resnet_key("mid_block", sub // 3, rest)
        return _block_key("mid_block", 0, sub, rest, True)
    if head == "output_blocks":
        i, sub, rest = int(p[1]), int(p[2]), p[3:]
        level, pos = divmod(i, per)
        if level >= layout.levels:
            raise KeyError(key)
        attention = layout.up_attention(level)
        upsampler_sub = 3 if attention else 1
        if sub == upsampler_sub and pos == layout.layers_per_block and level < layout.levels - 1 and rest[0] == "conv":
            return f"up_blocks.{level}.upsamplers.0.conv." + ".".join(rest[1:])
        return _block_key(f"up_blocks.{level}", pos, sub, rest, attention)
    raise KeyError(key)


def infer_unet_layout(state: dict[str, torch.Tensor]) -> tuple[UNetLayout, dict, int | None]:
    """Derive (layout, diffusers UNet3DConditionModel config, fps channels or None) from lvdm key shapes.

    Works for any width (e.g. the small test model, channel_mult [1,1,1,2], width 32) as for the real VC2.
    """
    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"not a VideoCrafter2 UNet: key {key} is missing; pass the original VC2 model.ckpt")
        return state[key]

    inputs = {int(k.split(".")[1]) for k in state if k.startswith("input_blocks.")}
    downs = sorted(i for i in inputs if f"input_blocks.{i}.0.op.weight" in state)
    levels = len(downs) + 1
    if not inputs or len(inputs) % levels:
        raise CheckpointError(f"not a VideoCrafter2 UNet: {len(inputs)} input blocks do not form {levels} levels")
    per = len(inputs) // levels
    nrb = per - 1
    attention = tuple(f"input_blocks.{1 + lv * per}.1.proj_in.weight" in state for lv in range(levels))
    widths = [int(need(f"input_blocks.{1 + lv * per}.0.out_layers.3.weight").shape[0]) for lv in range(levels)]
    conv_in = need("input_blocks.0.0.weight")
    head_dim = int(need("init_attn.0.proj_in.weight").shape[0]) // 8  # init_attn: 8 heads of num_head_channels
    cross_dim = int(need("middle_block.1.transformer_blocks.0.attn2.to_k.weight").shape[1])
    cond = state.get("time_cond_proj.weight")
    config = dict(
        sample_size=64,
        in_channels=int(conv_in.shape[1]),
        out_channels=int(need("out.2.weight").shape[0]),
        down_block_types=tuple("CrossAttnDownBlock3D" if a else "DownBlock3D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(attention)),
        block_out_channels=tuple(widths),
        layers_per_block=nrb,
        norm_num_groups=32,
        cross_attention_dim=cross_dim,
        attention_head_dim=head_dim,
        time_cond_proj_dim=int(cond.shape[1]) if cond is not None else None,
    )
    fps_w = state.get("fps_embedding.0.weight")
    return UNetLayout(levels, nrb, attention, tuple(widths)), config, (int(fps_w.shape[1]) if fps_w is not None else None)


def _adapt(key: str, value: torch.Tensor, target_shape: torch.Size) -> torch.Tensor:
    # init_attn's proj_in/proj_out are Conv1d (kernel 1) in lvdm, Linear in diffusers.
    if value.dim() == 3 and len(target_shape) == 2 and value.shape[-1] == 1:
        return value[..., 0]
    return value


def rename_checked(state: dict[str, torch.Tensor], target: dict[str, torch.Size], mapper, what: str,
                   ignore: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Rename every key of ``state`` with ``mapper`` and check it against ``target`` (name -> shape).

    Every source key must map to a target key of the same shape, and every target key must be produced.
    Keys in ``ignore`` are dropped. Raises CheckpointError naming the first bad key.
    """
    ignore = set(ignore)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in ignore:
            continue
        try:
            new = mapper(key)
        except (KeyError, ValueError, IndexError):
            raise CheckpointError(f"{what}: unexpected key {key} (no place in the converted model); "
                                  "is this the original VideoCrafter2 model.ckpt?") from None
        if new not in target:
            raise CheckpointError(f"{what}: key {key} maps to {new}, which the converted model does not have")
        value = _adapt(key, value, target[new])
        if tuple(value.shape) != tuple(target[new]):
            raise CheckpointError(f"{what}: key {key} has shape {tuple(value.shape)}, expected {tuple(target[new])} "
                                  f"(for {new})")
        if new in out:
            raise CheckpointError(f"{what}: key {key} maps onto {new} a second time")
        out[new] = value
    missing = [k for k in target if k not in out]
    if missing:
        raise CheckpointError(f"{what}: checkpoint lacks the weight for {missing[0]} ({len(missing)} missing)")
    return out


def materialise(module: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """Load ``state`` strictly into a module built on the meta device (no random init of 1.4e9 params)."""
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in module.parameters()) or any(t.is_meta for t in module.buffers()):
        raise CheckpointError("internal error: converted model still has unloaded tensors")
    return module


def build_vc2_unet(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32, device: str = "cpu",
                   default_fps: int = DEFAULT_FPS) -> nn.Module:
    """Build the diffusers UNet (+ fps embedding) from an lvdm UNet state dict (keys without prefix).

    ``device="meta"`` checks names and shapes only (no data; for tests on the full-size key list).
    """
    from diffusers import UNet3DConditionModel

    layout, config, fps_channels = infer_unet_layout(state)
    with torch.device("meta"):
        unet = UNet3DConditionModel(**config)
        if fps_channels is not None:
            attach_fps_embedding(unet, FPSEmbedding(fps_channels, unet.time_embedding.linear_1.out_features,
                                                    default_fps))
    target = {k: v.shape for k, v in unet.state_dict().items()}
    renamed = rename_checked(state, target, lambda k: lvdm_to_diffusers_key(k, layout), "VideoCrafter2 UNet")
    if device == "meta":
        return unet
    return materialise(unet, renamed, dtype)


def layout_of(unet: nn.Module) -> UNetLayout:
    """The :class:`UNetLayout` of a diffusers UNet3DConditionModel (from its config)."""
    cfg = unet.config
    return UNetLayout(len(cfg.block_out_channels), int(cfg.layers_per_block),
                      tuple("CrossAttn" in t for t in cfg.down_block_types), tuple(cfg.block_out_channels))


def build_vc2_v2_unet(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                      default_fps: int = DEFAULT_FPS) -> nn.Module:
    """A released T2V-Turbo-v2 student (``unet_mg.pt`` / ``unet_no_mg.pt``: a whole lvdm UNet state dict with
    ``time_cond_proj`` and, when motion-guided, ``motion_cond_proj`` + ``combine_proj``) as our UNet: the VC2 keys
    checked one by one as for the teacher, the motion projections attached beside it (teachers/motion.py)."""
    from ..teachers.motion import attach_motion_condition, split_motion_state

    rest, motion = split_motion_state(state)
    if "time_cond_proj.weight" not in rest:
        raise CheckpointError("not a T2V-Turbo-v2 student: no time_cond_proj.weight (a v1 LoRA list or a teacher?)")
    unet = build_vc2_unet(rest, dtype=dtype, default_fps=default_fps)
    if motion:
        attach_motion_condition(unet, motion)
    return unet
