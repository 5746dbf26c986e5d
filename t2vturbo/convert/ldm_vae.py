"""The LDM first-stage VAE -> diffusers ``AutoencoderKL`` (an exact key map, docs/formats.md §2)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError
from .lvdm_unet import materialise, rename_checked


def _vae_resnet(prefix: str, rest: list[str]) -> str:
    part = {"nin_shortcut": "conv_shortcut"}.get(rest[0], rest[0])
    return f"{prefix}.{part}." + ".".join(rest[1:])


_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def ldm_vae_to_diffusers_key(key: str, levels: int) -> str:
    """Map one LDM VAE key (no ``first_stage_model.`` prefix) to its diffusers AutoencoderKL name."""
    p = key.split(".")
    if p[0] in ("quant_conv", "post_quant_conv"):
        return key
    side = p[0]
    if side not in ("encoder", "decoder"):
        raise KeyError(key)
    q = p[1:]
    if q[0] in ("conv_in", "conv_out"):
        return f"{side}.{q[0]}." + ".".join(q[1:])
    if q[0] == "norm_out":
        return f"{side}.conv_norm_out." + ".".join(q[1:])
    if q[0] == "mid":
        if q[1] in ("block_1", "block_2"):
            return _vae_resnet(f"{side}.mid_block.resnets.{int(q[1][-1]) - 1}", q[2:])
        if q[1] == "attn_1":
            return f"{side}.mid_block.attentions.0.{_VAE_ATTN[q[2]]}." + ".".join(q[3:])
        raise KeyError(key)
    if side == "encoder" and q[0] == "down":
        lv = int(q[1])
        if q[2] == "block":
            return _vae_resnet(f"encoder.down_blocks.{lv}.resnets.{int(q[3])}", q[4:])
        if q[2] == "downsample":
            return f"encoder.down_blocks.{lv}.downsamplers.0." + ".".join(q[3:])
    if side == "decoder" and q[0] == "up":
        lv = levels - 1 - int(q[1])  # diffusers orders decoder levels from the deepest
        if q[2] == "block":
            return _vae_resnet(f"decoder.up_blocks.{lv}.resnets.{int(q[3])}", q[4:])
        if q[2] == "upsample":
            return f"decoder.up_blocks.{lv}.upsamplers.0." + ".".join(q[3:])
    raise KeyError(key)


def build_vae(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> nn.Module:
    """diffusers AutoencoderKL from an LDM ``first_stage_model`` state dict (keys without prefix)."""
    from diffusers import AutoencoderKL

    if "encoder.conv_in.weight" not in state or "quant_conv.weight" not in state:
        raise CheckpointError("model.ckpt has no VAE (first_stage_model.encoder.conv_in / quant_conv); "
                              "pass the original VideoCrafter2 model.ckpt")
    levels = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down."))
    widths = [int(state[f"encoder.down.{lv}.block.0.conv2.weight"].shape[0]) for lv in range(levels)]
    nrb = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("encoder.down.0.block."))
    config = dict(
        in_channels=int(state["encoder.conv_in.weight"].shape[1]),
        out_channels=int(state["decoder.conv_out.weight"].shape[0]),
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(widths),
        layers_per_block=nrb,
        latent_channels=int(state["post_quant_conv.weight"].shape[0]),
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    target = {k: v.shape for k, v in vae.state_dict().items()}

    def adapt(key: str) -> str:
        return ldm_vae_to_diffusers_key(key, levels)

    # mid-block attention q/k/v/proj_out are 1x1 convs in LDM, Linear in diffusers
    squeezed = {k: (v[:, :, 0, 0] if v.dim() == 4 and ".attn_1." in k and not k.endswith("norm.weight") else v)
                for k, v in state.items()}
    renamed = rename_checked(squeezed, target, adapt, "VideoCrafter2 VAE")
    return materialise(vae, renamed, dtype)


