"""CLIP score with open_clip ViT-H-14 (laion2B-s32B-b79K), and the open_clip reward shared with HPSv2.

Score per frame = cosine(image embedding, text embedding); a video's score is the mean over its frames.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, MissingWeightError
from ..hub import cached_hub_file, resolve_file
from ..safeio import load_weights
from . import RewardModel, register_reward
from .loading import build_and_load, causal_mask, check_options, unwrap_state_dict
from .preprocess import clip_pixels

CLIP_HUB_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_OPTIONS = ("arch", "model_cfg")


class OpenClipReward(RewardModel):
    """An open_clip CLIP model as an image reward: per-frame cosine similarity, averaged over frames.

    Args:
        model: an ``open_clip.model.CLIP``.
        preprocess: (N, 3, H, W) pixels in [0, 1] -> normalised model input (differentiable).
    """

    kind = "image"
    text_method = "encode_prompts"
    text_modules = ("model.transformer", "model.token_embedding", "model.positional_embedding", "model.ln_final",
                    "model.text_projection")

    def __init__(self, model: torch.nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer

        self.model = model
        self.preprocess = preprocess
        self.tokenizer = SimpleTokenizer(context_length=model.context_length)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [0, 1] -> (B, T, D) normalised image embeddings."""
        b, t = frames.shape[:2]
        dtype = self.model.visual.conv1.weight.dtype
        pixels = self.preprocess(frames.flatten(0, 1)).to(dtype)
        return self.model.encode_image(pixels, normalize=True).float().view(b, t, -1)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> (B, D) normalised text embeddings (no gradient: the text side is fixed)."""
        tokens = self.tokenizer(prompts).to(self.model.token_embedding.weight.device)
        return self.model.encode_text(tokens, normalize=True).float()

    def forward(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image = self.encode_frames(frames)
        text = self.encode_prompts(prompts)
        return (image * text[:, None]).sum(-1).mean(1)


def open_clip_config(arch: str = "ViT-H-14", model_cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The open_clip model config: ``model_cfg`` (e.g. a tiny one for tests) or the registered ``arch``."""
    if model_cfg is not None:
        return dict(model_cfg)
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ConfigError(f"unknown open_clip architecture {arch}; use a name from open_clip.list_models()")
    return cfg


def load_open_clip_model(
    path: str | os.PathLike,
    nesting: str | None,
    cfg: Mapping[str, Any],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """Build ``open_clip.model.CLIP(**cfg)`` and load its weights strictly from ``path`` (``{nesting: sd}`` or flat)."""
    from open_clip.model import CLIP

    state = unwrap_state_dict(load_weights(path), nesting, path)

    def rebuild(model):
        model.attn_mask = causal_mask(model.context_length, device=model.positional_embedding.device)

    return build_and_load(lambda: CLIP(**cfg), state, path, device=device, dtype=dtype, rebuild_buffers=rebuild)


def resolve_open_clip_file(checkpoint: str | None, how: str) -> Path:
    """An explicit file (or a folder holding one of CLIP_FILES), else the HF cache copy of the laion weights."""
    if checkpoint:
        folder = Path(checkpoint).expanduser()
        if folder.is_dir():
            for filename in CLIP_FILES:
                if (folder / filename).is_file():
                    return folder / filename
            raise MissingWeightError(f"neither {' nor '.join(CLIP_FILES)} found in {checkpoint}; give the file with {how}")
        return resolve_file(checkpoint, None, CLIP_FILES[0], how)
    for filename in CLIP_FILES:
        hit = cached_hub_file(CLIP_HUB_REPO, filename)
        if hit is not None:
            return hit
    return resolve_file(None, CLIP_HUB_REPO, CLIP_FILES[1], how)  # raises the standard one-line error


@register_reward("clip", kind="image", description="CLIP score, open_clip ViT-H-14 laion2B-s32B-b79K (image, per frame)")
def load_clip(
    checkpoint: str | None = None, device="cpu", dtype=torch.float32, **options
) -> OpenClipReward:
    """CLIP score. Options: ``arch`` (open_clip config name, default ViT-H-14) or ``model_cfg`` (a config dict)."""
    check_options("clip", options, OPEN_CLIP_OPTIONS)
    path = resolve_open_clip_file(checkpoint, how="--reward-checkpoint clip=PATH")
    cfg = open_clip_config(options.get("arch", "ViT-H-14"), options.get("model_cfg"))
    model = load_open_clip_model(path, None, cfg, device=device, dtype=dtype)
    return OpenClipReward(model, clip_pixels)
