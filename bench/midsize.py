"""A mid-size ModelScope-architecture teacher built in code (random weights, fixed seed) for the benchmarks.

Same layout as ali-vilab/text-to-video-ms-1.7b (UNet3DConditionModel with cross-attention down/up blocks and a
plain bottom level, AutoencoderKL with an 8x spatial factor, CLIP text encoder with 77 tokens), only narrower:
large enough that the UNet's weights and compute dominate, small enough for a 2-core CPU.
"""

from __future__ import annotations

import torch

UNET_CONFIG = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(64, 128, 256),
    layers_per_block=2,
    norm_num_groups=32,
    cross_attention_dim=256,
    attention_head_dim=8,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=256,
)
#: the VAE narrowed by the factor the UNet is (its first width 64 of ModelScope's 320: 1/5), two layers a block as
#: the real one: the real model's cost proportions at 16 x 256 x 256, by FLOP count on the meta device (torch's
#: FlopCounterMode): encoding 16 frames costs 0.92 of a UNet pass and decoding them 2.06 (ModelScope: 0.89 and
#: 2.04; VAE_CONFIG: 0.22 and 0.69). For benchmarks where what the VAE costs beside the UNet matters (what
#: prepared latents save).
PROPORTIONATE_VAE_CONFIG = dict(VAE_CONFIG, block_out_channels=(24, 48, 104, 104), layers_per_block=2)
TEXT_CONFIG = dict(
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=256,
)


def build_teacher(unet: dict, vae: dict, text: dict, seed: int = 0, name: str = "bench-random",
                  with_text: bool = True):
    """A ModelScope-family :class:`t2vturbo.teachers.UNet3DTeacher` built from configs (UNet3DConditionModel,
    AutoencoderKL and CLIP text encoder kwargs), random weights from ``seed`` (the global RNG is left as it was),
    frozen, eval; the tiny teacher's word-level tokenizer with CLIP's prompt length. ``with_text=False``: no text
    encoder (a run from prepared latents, whose text states are stored)."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from t2vturbo.schedules import VPSchedule
    from t2vturbo.teachers import UNet3DTeacher
    from t2vturbo.tiny.teacher import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    tokenizer.model_max_length = text["max_position_embeddings"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet_model = UNet3DConditionModel(**unet)
        vae_model = AutoencoderKL(**vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, **text,
        )) if with_text else None
    for m in (unet_model, vae_model, text_encoder):
        if m is not None:
            m.requires_grad_(False).eval()
    return UNet3DTeacher(unet=unet_model, vae=vae_model, text_encoder=text_encoder, tokenizer=tokenizer,
                         schedule=VPSchedule.standard(), name=name,
                         vae_scale=float(vae_model.config.scaling_factor))


def build_midsize_teacher(seed: int = 0, width: int = 64, layers: int = 2, with_text: bool = True,
                          vae: dict | None = None):
    """The mid-size model (:func:`build_teacher`): UNet block widths (width, 2*width, 4*width), ``layers`` per
    block; ``vae``: its AutoencoderKL kwargs (default VAE_CONFIG)."""
    unet = dict(UNET_CONFIG, block_out_channels=(width, 2 * width, 4 * width), layers_per_block=layers)
    return build_teacher(unet, vae or VAE_CONFIG, TEXT_CONFIG, seed=seed, name="midsize-random", with_text=with_text)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def load_average() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "n/a"
