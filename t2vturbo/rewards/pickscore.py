"""PickScore v1: a transformers ``CLIPModel`` (ViT-H-14) fine-tuned on Pick-a-Pic preferences.

Weights: the hub folder yuvalkirstain/PickScore_v1 (config.json + model weights), or a local folder in that
layout. The official processor (laion/CLIP-ViT-H-14-laion2B-s32B-b79K) is mirrored on tensors: frames resized
to 224 x 224, centre-cropped, CLIP-normalised; text tokenised with the same CLIP BPE (open_clip's packaged
vocabulary), truncated to 77 tokens. Reward = cosine(image, text) per frame, averaged over frames.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import MissingWeightError
from ..hub import resolve_pretrained_dir
from . import RewardModel, register_reward
from .loading import check_options
from .preprocess import clip_pixels

PICKSCORE_HUB_REPO = "yuvalkirstain/PickScore_v1"


class PickScore(RewardModel):
    kind = "image"
    text_method = "encode_prompts"
    text_modules = ("model.text_model", "model.text_projection")

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer

        self.model = model
        self.context_length = model.config.text_config.max_position_embeddings
        self.tokenizer = SimpleTokenizer(context_length=self.context_length)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [0, 1] -> (B, T, D) normalised image embeddings."""
        b, t = frames.shape[:2]
        dtype = self.model.visual_projection.weight.dtype
        pixels = clip_pixels(frames.flatten(0, 1)).to(dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        emb = self.model.visual_projection(pooled).float()
        return (emb / emb.norm(dim=-1, keepdim=True)).view(b, t, -1)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> (B, D) normalised text embeddings (no gradient)."""
        device = self.model.text_projection.weight.device
        tokens = self.tokenizer(prompts)
        # Pad to the longest prompt, like the processor's padding=True; the causal mask makes the EOT feature
        # independent of what follows it.
        lengths = (tokens != 0).sum(-1)
        width = int(lengths.max())
        ids = tokens[:, :width].to(device)
        mask = (torch.arange(width)[None] < lengths[:, None]).long().to(device)
        pooled = self.model.text_model(input_ids=ids, attention_mask=mask).pooler_output
        emb = self.model.text_projection(pooled).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    def forward(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image = self.encode_frames(frames)
        text = self.encode_prompts(prompts)
        return (image * text[:, None]).sum(-1).mean(1)


@register_reward("pickscore", kind="image", description="PickScore v1 (transformers CLIP ViT-H-14; image, per frame)")
def load_pickscore(checkpoint: str | None = None, device="cpu", dtype=torch.float32, **options) -> PickScore:
    """PickScore. ``checkpoint`` is a folder in the hub layout (config.json + weights); a smaller architecture is
    simply a folder with a smaller config."""
    from transformers import CLIPModel

    check_options("pickscore", options, ())
    how = "--reward-checkpoint pickscore=FOLDER"
    if checkpoint:
        folder = Path(checkpoint).expanduser()
        if not (folder / "config.json").is_file():
            raise MissingWeightError(
                f"{checkpoint} is not a PickScore folder (config.json + model.safetensors); pass one with {how}"
            )
        spec = str(folder)
    else:
        spec = resolve_pretrained_dir(PICKSCORE_HUB_REPO, "PickScore weights", how)
    model = CLIPModel.from_pretrained(spec, dtype=dtype, local_files_only=True)
    return PickScore(model.to(device))
