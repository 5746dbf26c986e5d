"""The module order of the official T2V-Turbo (VC2) ``unet_lora.pt``: lvdm's ``named_modules()`` order, mapped to
diffusers names (docs/formats.md §3)."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import CheckpointError
from .lvdm_unet import VC2_LAYOUT, UNetLayout, lvdm_to_diffusers_key


def _lvdm_resblock(name: str, skip: bool) -> list[str]:
    mods = [f"{name}.in_layers.2", f"{name}.emb_layers.1", f"{name}.out_layers.3"]
    if skip:
        mods.append(f"{name}.skip_connection")
    return mods + [f"{name}.temopral_conv.conv1.2"] + [f"{name}.temopral_conv.conv{j}.3" for j in (2, 3, 4)]


def _lvdm_transformer(name: str, proj: bool = True) -> list[str]:
    block = f"{name}.transformer_blocks.0"
    attn = lambda a: [f"{block}.{a}.to_q", f"{block}.{a}.to_k", f"{block}.{a}.to_v", f"{block}.{a}.to_out.0"]  # noqa: E731
    inner = attn("attn1") + [f"{block}.ff.net.0.proj", f"{block}.ff.net.2"] + attn("attn2")
    return [f"{name}.proj_in", *inner, f"{name}.proj_out"] if proj else inner


def lvdm_lora_module_order(layout: UNetLayout = VC2_LAYOUT, fps: bool = True, time_cond_proj: bool = True) -> list[str]:
    """lvdm names of every Linear / Conv2d / Conv3d of the VC2 UNet in ``named_modules()`` order: the order of
    the official ``unet_lora.pt`` pairs (docs/formats.md §3). init_attn's proj_in/proj_out are Conv1d, so not included."""
    per, widths = layout.layers_per_block + 1, layout.block_out_channels
    mods = ["time_embed.0", "time_embed.2"]
    mods += ["fps_embedding.0", "fps_embedding.2"] if fps else []
    mods += ["time_cond_proj"] if time_cond_proj else []
    mods.append("input_blocks.0.0")
    for lv in range(layout.levels):
        for pos in range(layout.layers_per_block):
            i = 1 + lv * per + pos
            skip = pos == 0 and lv > 0 and widths[lv] != widths[lv - 1]
            mods += _lvdm_resblock(f"input_blocks.{i}.0", skip)
            if layout.attention[lv]:
                mods += _lvdm_transformer(f"input_blocks.{i}.1") + _lvdm_transformer(f"input_blocks.{i}.2")
        if lv < layout.levels - 1:
            mods.append(f"input_blocks.{1 + lv * per + layout.layers_per_block}.0.op")
    mods += _lvdm_transformer("init_attn.0", proj=False)
    mods += _lvdm_resblock("middle_block.0", False)
    mods += _lvdm_transformer("middle_block.1") + _lvdm_transformer("middle_block.2")
    mods += _lvdm_resblock("middle_block.3", False)
    for lv in range(layout.levels):
        attention = layout.up_attention(lv)
        for pos in range(per):
            i = lv * per + pos
            mods += _lvdm_resblock(f"output_blocks.{i}.0", True)
            if attention:
                mods += _lvdm_transformer(f"output_blocks.{i}.1") + _lvdm_transformer(f"output_blocks.{i}.2")
            if pos == layout.layers_per_block and lv < layout.levels - 1:
                mods.append(f"output_blocks.{i}.{3 if attention else 1}.conv")
    mods.append("out.2")
    return mods


def vc2_lora_module_names(layout: UNetLayout = VC2_LAYOUT, fps: bool = True, time_cond_proj: bool = True,
                          lvdm_names: Iterable[str] | None = None) -> list[str]:
    """Diffusers module names (of the converted UNet) in the order of the official VC2 ``unet_lora.pt``.

    ``fps_embedding.linear_{1,2}`` name our fps embedding and ``time_embedding.cond_proj`` the guidance
    projection; all other names are modules of the stock UNet3DConditionModel.

    Args:
        layout: the UNet's block layout (:func:`layout_of` for a converted UNet; default: full-size VC2).
        lvdm_names: an explicit lvdm order (default: :func:`lvdm_lora_module_order`).
    """
    names = list(lvdm_names) if lvdm_names is not None else lvdm_lora_module_order(layout, fps, time_cond_proj)
    out = []
    for name in names:
        try:
            out.append(lvdm_to_diffusers_key(name + ".weight", layout)[: -len(".weight")])
        except (KeyError, ValueError, IndexError):
            raise CheckpointError(f"official VC2 LoRA: module {name} has no place in the converted UNet") from None
    return out
