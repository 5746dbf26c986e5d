"""InternVideo2 stage-2 (1B, 224 px) video-text reward: our implementation, loading the official keys.

Official file ``InternVideo2-stage2_1b-224p-f4.pt`` (hub repo OpenGVLab/InternVideo2-Stage2_1B-224p-f4) =
``{"module": state_dict}`` (docs/formats.md §6):

- ``vision_encoder.*``: ViT over a clip (Conv3d patch (1, 14, 14), width 1408, 40 blocks, 16 heads, qkv without
  bias, RMSNorm block norms and q/k norms, LayerScale), one class token, a joint space-time ``pos_embed`` saved
  at 4 frames (interpolated linearly in time to ``num_frames`` at load), and an attention-pool
  ``clip_projector`` -> 768. The distillation heads (``clip_decoder``, ``final_clip_decoder``) and the image /
  clip position embeddings do not affect the score and are not loaded.
- ``text_encoder.bert.*``: BERT-large; in text mode only the first ``fusion_layer`` = 19 layers run (the later
  ones hold cross-attention for the fusion encoder), so we build transformers' ``BertModel`` with 19 layers.
- ``vision_proj`` 768 -> 512, ``text_proj`` 1024 -> 512.

Attention runs through PyTorch SDPA (no flash-attn, no fused kernels). Reward = cosine(video, text) as the
reference ``get_intern_vid2_score_fn``: frames short side -> 224, crop, ImageNet mean/std; prompts tokenised
by the bert-large-uncased WordPiece vocabulary as ``[CLS] tokens`` (the reference tokenizer adds no [SEP]),
padded to 40.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..hub import cached_hub_file, resolve_file
from ..safeio import load_weights
from . import RewardModel, register_reward
from .loading import build_and_load, check_options, unwrap_state_dict
from .preprocess import viclip_pixels

INTERNVIDEO2_HUB_REPO = "OpenGVLab/InternVideo2-Stage2_1B-224p-f4"
INTERNVIDEO2_FILE = "InternVideo2-stage2_1b-224p-f4.pt"
BERT_HUB_REPOS = ("google-bert/bert-large-uncased", "bert-large-uncased")
VOCAB_FILE = "vocab.txt"


@dataclass(frozen=True)
class InternVideo2Config:
    """Architecture; the defaults are the released stage-2 1B model (change them only for small test models)."""

    image_size: int = 224
    patch_size: int = 14
    num_frames: int = 8
    vision_width: int = 1408
    vision_layers: int = 40
    vision_heads: int = 16
    vision_mlp: int = 6144  # int(1408 * 48 / 11)
    pool_heads: int = 16
    clip_embed_dim: int = 768
    embed_dim: int = 512
    vocab_size: int = 30522
    text_width: int = 1024
    fusion_layer: int = 19  # text mode runs BERT layers [0, fusion_layer)
    text_heads: int = 16
    text_intermediate: int = 4096
    text_max_positions: int = 512
    type_vocab_size: int = 2
    max_length: int = 40
    #: GELU of the vision MLP: "none" (exact, the reference's plain Mlp) or "tanh" (its fused-MLP path)
    gelu: str = "none"


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32 (eps 1e-6), then scaled by ``weight``."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.gamma.float()).to(x.dtype)  # float32 as the reference (force_fp32)


class Attention(nn.Module):
    """Self-attention with RMS-normalised queries and keys (normalised over all heads together)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = RMSNorm(dim)
        self.k_norm = RMSNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(b, n, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, gelu: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=gelu)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: InternVideo2Config):
        super().__init__()
        w = cfg.vision_width
        self.norm1 = RMSNorm(w)
        self.attn = Attention(w, cfg.vision_heads)
        self.ls1 = LayerScale(w)
        self.norm2 = RMSNorm(w)
        self.mlp = Mlp(w, cfg.vision_mlp, cfg.gelu)
        self.ls2 = LayerScale(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PoolingAttention(nn.Module):
    """Cross-attention of one query onto all tokens; names follow the official ``cross_attn`` keys."""

    def __init__(self, dim: int, heads: int, out_dim: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.k_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        b, n, c = key.shape
        split = lambda t: t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q = split(F.linear(query, self.q.weight, self.q_bias))
        k = split(F.linear(key, self.k.weight, self.k_bias))
        v = split(F.linear(value, self.v.weight, self.v_bias))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, -1, c))


class AttentionPool(nn.Module):
    """``clip_projector``: the mean token queries all tokens (LayerNorm eps 1e-5 on q, k, v) -> (B, out_dim)."""

    def __init__(self, dim: int, heads: int, out_dim: int):
        super().__init__()
        self.norm1_q = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_k = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_v = nn.LayerNorm(dim, eps=1e-5)
        self.cross_attn = PoolingAttention(dim, heads, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = self.norm1_q(x.mean(1, keepdim=True))
        return self.cross_attn(query, self.norm1_k(x), self.norm1_v(x)).squeeze(1)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: InternVideo2Config):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv3d(3, cfg.vision_width, (1, p, p), stride=(1, p, p))


class VisionEncoder(nn.Module):
    """ViT over every (frame, patch) token plus one class token; the output is the attention-pooled feature."""

    def __init__(self, cfg: InternVideo2Config):
        super().__init__()
        patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.vision_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.num_frames * patches, cfg.vision_width))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.vision_layers))
        self.clip_projector = AttentionPool(cfg.vision_width, cfg.pool_heads, cfg.clip_embed_dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) normalised pixels -> (B, clip_embed_dim) pooled feature (before ``vision_proj``)."""
        x = self.patch_embed.proj(video)  # (B, C, T, h, w)
        b, c = x.shape[:2]
        x = x.flatten(3).permute(0, 2, 3, 1).reshape(b, -1, c)  # tokens ordered (frame, patch)
        x = torch.cat([self.cls_token.to(x.dtype).expand(b, 1, c), x], dim=1)
        if x.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f"InternVideo2 was loaded for {self.pos_embed.shape[1] - 1} tokens "
                             f"(frames x patches), got {x.shape[1] - 1}; pass num_frames frames of 224x224")
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.clip_projector(x)


def _bert_config(cfg: InternVideo2Config):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.text_width, num_hidden_layers=cfg.fusion_layer,
        num_attention_heads=cfg.text_heads, intermediate_size=cfg.text_intermediate, hidden_act="gelu",
        max_position_embeddings=cfg.text_max_positions, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=1e-12, pad_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",
    )


class InternVideo2(RewardModel):
    """InternVideo2 as a video reward: (B, T=num_frames, 3, H, W) frames in [0, 1] + B prompts -> (B,) scores."""

    kind = "video"
    text_method = "encode_text"
    text_modules = ("text_encoder", "text_proj")

    def __init__(self, cfg: InternVideo2Config = InternVideo2Config(), tokenizer=None):
        super().__init__()
        from transformers import BertModel

        self.cfg = cfg
        self.num_frames = cfg.num_frames
        self.vision_encoder = VisionEncoder(cfg)
        self.text_encoder = BertModel(_bert_config(cfg), add_pooling_layer=False)
        self.vision_proj = nn.Linear(cfg.clip_embed_dim, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim)
        self.tokenizer = tokenizer

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] wordpieces`` (no [SEP], the reference tokenizer's quirk), truncated and padded to max_length."""
        if self.tokenizer is None:
            raise CheckpointError("InternVideo2 has no tokenizer; load it with load_reward('internvideo2', ...)")
        tok, n = self.tokenizer, self.cfg.max_length
        pieces = tok(list(prompts), add_special_tokens=False, truncation=True, max_length=n - 1)["input_ids"]
        ids = torch.full((len(prompts), n), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), n), dtype=torch.long)
        for i, p in enumerate(pieces):
            row = [tok.cls_token_id, *p]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask

    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) normalised pixels -> (B, embed_dim) unnormalised video embedding."""
        dtype = self.vision_encoder.patch_embed.proj.weight.dtype
        pooled = self.vision_encoder(pixels.permute(0, 2, 1, 3, 4).to(dtype))
        return self.vision_proj(pooled).float()

    def encode_text_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids -> (B, embed_dim) unnormalised text embedding (CLS of the text-mode BERT -> text_proj)."""
        device = self.text_proj.weight.device
        hidden = self.text_encoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        return self.text_proj(hidden.last_hidden_state[:, 0]).float()

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.encode_text_ids(*self.tokenize(prompts))

    def forward(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        b, t = frames.shape[:2]
        pixels = viclip_pixels(frames.flatten(0, 1), self.cfg.image_size)
        video = self.encode_video(pixels.view(b, t, *pixels.shape[1:]))
        video = video / video.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            text = self.encode_text(prompts)
            text = text / text.norm(dim=-1, keepdim=True)
        return (video * text).sum(-1)


# ------------------------------------------------------------------------------------------------------------
# loading


def interpolate_pos_embed(pos: torch.Tensor, num_frames: int, patches: int) -> torch.Tensor:
    """Linear interpolation in time of a joint space-time position embedding [1, 1 + T0*P, C] -> T = num_frames.

    The class-token entry is kept; each spatial position's T0 values are resampled to T
    (``F.interpolate(mode="linear", align_corners=False)``), as the reference loader does.
    """
    c = pos.shape[-1]
    t0, rest = divmod(pos.shape[1] - 1, patches)
    if rest:
        raise CheckpointError(f"InternVideo2 pos_embed {tuple(pos.shape)} is not 1 + frames x {patches} patches; "
                              "check image_size / patch_size")
    if t0 == num_frames:
        return pos
    tokens = pos[:, 1:].reshape(1, t0, patches, c).permute(0, 2, 3, 1).reshape(-1, c, t0)
    tokens = F.interpolate(tokens, size=num_frames, mode="linear", align_corners=False)
    tokens = tokens.reshape(1, patches, c, num_frames).permute(0, 3, 1, 2).reshape(1, -1, c)
    return torch.cat([pos[:, :1], tokens], dim=1)


#: official keys that do not affect the score (distillation heads, image / clip position embeddings, ...)
_VISION_UNUSED = ("vision_encoder.img_pos_embed", "vision_encoder.clip_pos_embed", "vision_encoder.clip_img_pos_embed",
                  "vision_encoder.clip_decoder.", "vision_encoder.final_clip_decoder.")


def select_official_state(state: dict[str, torch.Tensor], cfg: InternVideo2Config) -> dict[str, torch.Tensor]:
    """Map the official stage-2 keys onto :class:`InternVideo2` keys (text layers past fusion_layer and heads that
    do not affect the score are dropped; ``pos_embed`` is interpolated to ``cfg.num_frames``)."""
    patches = (cfg.image_size // cfg.patch_size) ** 2
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("vision_encoder."):
            if key.startswith(_VISION_UNUSED):
                continue
            if key == "vision_encoder.pos_embed":
                value = interpolate_pos_embed(value, cfg.num_frames, patches)
            out[key] = value
        elif key.startswith("text_encoder.bert."):
            name = key[len("text_encoder.bert."):]
            if name in ("embeddings.position_ids", "embeddings.token_type_ids") or name.startswith("pooler."):
                continue
            if name.startswith("encoder.layer.") and int(name.split(".")[2]) >= cfg.fusion_layer:
                continue
            out["text_encoder." + name] = value
        elif key.split(".")[0] in ("vision_proj", "text_proj"):
            out[key] = value
        # anything else (text_encoder.cls.*, itm_head.*, temp, ...) is not part of the video-text score
    return out


def _rebuild_buffers(model: InternVideo2) -> None:
    emb = model.text_encoder.embeddings
    n = model.cfg.text_max_positions
    emb.position_ids = torch.arange(n, device=emb.position_ids.device).expand(1, -1).clone()
    emb.token_type_ids = torch.zeros((1, n), dtype=torch.long, device=emb.token_type_ids.device)


def load_bert_tokenizer(vocab_file: str | Path | None = None):
    """WordPiece tokenizer (lower-case) from ``vocab_file``, else bert-large-uncased's vocab.txt from the HF cache."""
    from transformers import BertTokenizer

    if vocab_file is None:
        for repo in BERT_HUB_REPOS:
            found = cached_hub_file(repo, VOCAB_FILE)
            if found is not None:
                vocab_file = found
                break
    path = resolve_file(vocab_file, None if vocab_file else BERT_HUB_REPOS[0], VOCAB_FILE,
                        how="the internvideo2 reward option vocab_file=PATH (bert-large-uncased vocab.txt)")
    words = Path(path).read_text(encoding="utf-8").splitlines()
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)


_CONFIG_FIELDS = tuple(f.name for f in fields(InternVideo2Config))


@register_reward("internvideo2", kind="video",
                 description="InternVideo2 stage-2 1B (224p, f4 checkpoint) video-text similarity (8 frames)")
def load_internvideo2(checkpoint: str | None = None, device="cpu", dtype=torch.float32, vocab_file: str | None = None,
                      **options) -> InternVideo2:
    """InternVideo2. Options: ``vocab_file`` (BERT vocab.txt) and any :class:`InternVideo2Config` field
    (e.g. ``vision_width=64``) for a smaller architecture."""
    check_options("internvideo2", options, _CONFIG_FIELDS)
    cfg = InternVideo2Config(**{**asdict(InternVideo2Config()), **options})
    path = resolve_file(checkpoint, INTERNVIDEO2_HUB_REPO, INTERNVIDEO2_FILE,
                        how="--reward-checkpoint internvideo2=PATH")
    tokenizer = load_bert_tokenizer(vocab_file)
    state = select_official_state(unwrap_state_dict(load_weights(path), "module", path), cfg)
    model = build_and_load(lambda: InternVideo2(cfg), state, path, device=device, dtype=dtype,
                           rebuild_buffers=_rebuild_buffers)
    model.tokenizer = tokenizer
    return model
