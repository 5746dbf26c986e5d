"""ViCLIP (InternVid) video-text reward: our implementation of the architecture, loading the official keys.

Official file ``ViClip-InternVid-10M-FLT.pth`` (hub repo OpenGVLab/ViCLIP) = ``{"model": state_dict}`` with 447
keys: ``vision_encoder.*`` (ViT-L/14 over 8 frames: Conv3d patch embedding, spatial + temporal positional
embeddings, class token -> ln_post -> proj), ``text_encoder.*`` (CLIP text transformer, context 32, causal mask,
EOT pooling) and ``temp``. The BPE vocabulary is open_clip's packaged one.

Reward = cosine(video embedding, text embedding); frames are resized on the short side to 224, cropped to
224 x 224 (centre), ImageNet-normalised.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from ..hub import resolve_file
from ..safeio import load_weights
from . import RewardModel, register_reward
from .loading import build_and_load, causal_mask, check_options, unwrap_state_dict
from .preprocess import viclip_pixels

VICLIP_HUB_REPO = "OpenGVLab/ViCLIP"
VICLIP_FILE = "ViClip-InternVid-10M-FLT.pth"


@dataclass(frozen=True)
class ViCLIPConfig:
    """Architecture; the defaults are the released ViCLIP-L/14 (change them only for small test models)."""

    input_resolution: int = 224
    patch_size: int = 14
    num_frames: int = 8
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    embed_dim: int = 768
    context_length: int = 32
    vocab_size: int = 49408
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block; parameter names follow the official checkpoint (attn, ln_1, mlp.c_fc, ...)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(4 * width, width))])
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class VisionEncoder(nn.Module):
    """ViT over a clip: every (frame, patch) is a token; one class token attends to all of them."""

    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        width, patch = cfg.vision_width, cfg.patch_size
        self.conv1 = nn.Conv3d(3, width, (1, patch, patch), stride=(1, patch, patch), bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((cfg.input_resolution // patch) ** 2 + 1, width))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, cfg.num_frames, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, cfg.vision_layers, cfg.vision_heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, cfg.embed_dim))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) normalised pixels -> (B, embed_dim) unnormalised video embedding."""
        x = self.conv1(video)  # (B, C, T, h, w)
        b, c, t = x.shape[:3]
        x = x.flatten(3).permute(0, 2, 3, 1)  # (B, T, N, C)
        x = x + self.positional_embedding[1:].to(x.dtype)
        if t == 1:  # a single image: the reference adds the mean temporal embedding
            temporal = self.temporal_positional_embedding.mean(1, keepdim=True)
        elif t == self.temporal_positional_embedding.shape[1]:
            temporal = self.temporal_positional_embedding
        else:
            raise ValueError(f"ViCLIP takes {self.temporal_positional_embedding.shape[1]} frames, got {t}")
        x = x + temporal.to(x.dtype)[:, :, None]  # same temporal embedding for every patch of a frame
        x = x.transpose(1, 2).reshape(b, -1, c)  # tokens ordered (patch, frame), as the reference
        cls = (self.class_embedding + self.positional_embedding[0]).to(x.dtype).expand(b, 1, c)
        x = self.ln_pre(torch.cat([cls, x], dim=1))
        x = self.transformer(x)
        return self.ln_post(x[:, 0]) @ self.proj


class TextEncoder(nn.Module):
    """CLIP text transformer with a causal mask; the embedding is taken at the EOT token (highest id)."""

    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.text_width))
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads)
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.zeros(cfg.text_width, cfg.embed_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, context_length) token ids -> (B, embed_dim) unnormalised text embedding."""
        x = self.token_embedding(tokens) + self.positional_embedding
        mask = causal_mask(tokens.shape[1], device=x.device, dtype=x.dtype)
        x = self.ln_final(self.transformer(x, mask))
        return x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ self.text_projection


class ViCLIP(RewardModel):
    """ViCLIP as a video reward: (B, T=num_frames, 3, H, W) frames in [0, 1] + B prompts -> (B,) cosine scores."""

    kind = "video"
    text_method = "encode_text"
    text_modules = ("text_encoder",)

    def __init__(self, cfg: ViCLIPConfig = ViCLIPConfig()):
        super().__init__()
        self.cfg = cfg
        self.num_frames = cfg.num_frames
        self.vision_encoder = VisionEncoder(cfg)
        self.text_encoder = TextEncoder(cfg)
        self.temp = nn.Parameter(torch.tensor(0.01))  # contrastive temperature, stored in the file, unused here
        self._tokenizer = None

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self.cfg.context_length)
        return self._tokenizer(prompts)

    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) normalised pixels -> (B, D) unnormalised embedding."""
        dtype = self.vision_encoder.conv1.weight.dtype
        return self.vision_encoder(pixels.permute(0, 2, 1, 3, 4).to(dtype)).float()

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> (B, D) unnormalised embedding."""
        tokens = self.tokenize(prompts).to(self.text_encoder.positional_embedding.device)
        return self.text_encoder(tokens).float()

    def forward(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        b, t = frames.shape[:2]
        pixels = viclip_pixels(frames.flatten(0, 1), self.cfg.input_resolution)
        video = self.encode_video(pixels.view(b, t, *pixels.shape[1:]))
        video = video / video.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            text = self.encode_text(prompts)
            text = text / text.norm(dim=-1, keepdim=True)
        return (video * text).sum(-1)


_CONFIG_FIELDS = tuple(f.name for f in fields(ViCLIPConfig))


def viclip_state_dict_shapes(cfg: ViCLIPConfig = ViCLIPConfig()) -> dict[str, tuple[int, ...]]:
    """Official key names and shapes for ``cfg`` (built on the meta device, no memory)."""
    with torch.device("meta"):
        model = ViCLIP(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@register_reward("viclip", kind="video", description="ViCLIP-L/14 InternVid-10M-FLT video-text similarity (8 frames)")
def load_viclip(checkpoint: str | None = None, device="cpu", dtype=torch.float32, **options) -> ViCLIP:
    """ViCLIP. Options: any :class:`ViCLIPConfig` field (e.g. ``vision_width=64``) for a smaller architecture."""
    check_options("viclip", options, _CONFIG_FIELDS)
    cfg = ViCLIPConfig(**{**asdict(ViCLIPConfig()), **options})
    path = resolve_file(checkpoint, VICLIP_HUB_REPO, VICLIP_FILE, how="--reward-checkpoint viclip=PATH")
    state = unwrap_state_dict(load_weights(path), "model", path)
    return build_and_load(lambda: ViCLIP(cfg), state, path, device=device, dtype=dtype)
