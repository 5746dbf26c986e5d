"""Offline checkpoint conversion (VideoCrafter2's model.ckpt), apart from what runs at sampling time."""

from .ldm_vae import build_vae, ldm_vae_to_diffusers_key
from .lvdm_unet import (
    VC2_LAYOUT,
    UNetLayout,
    build_vc2_unet,
    build_vc2_v2_unet,
    infer_unet_layout,
    layout_of,
    lvdm_to_diffusers_key,
)
from .official_order import lvdm_lora_module_order, vc2_lora_module_names
from .open_clip_text import build_clip_tokenizer, build_text_encoder, open_clip_bpe, open_clip_to_hf_text
from .vc2 import (
    TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    convert_vc2_checkpoint,
    convert_vc2_state,
    read_vc2_state,
    save_converted,
)

__all__ = ["TEXT_PREFIX", "UNET_PREFIX", "VAE_PREFIX", "VC2_LAYOUT", "UNetLayout", "build_clip_tokenizer",
           "build_text_encoder", "build_vae", "build_vc2_unet", "build_vc2_v2_unet", "convert_vc2_checkpoint", "convert_vc2_state",
           "infer_unet_layout", "layout_of", "ldm_vae_to_diffusers_key", "lvdm_lora_module_order",
           "lvdm_to_diffusers_key", "open_clip_bpe", "open_clip_to_hf_text", "read_vc2_state", "save_converted",
           "vc2_lora_module_names"]
