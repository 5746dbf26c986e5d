"""Rewards of the embedded tiny world, trained by scripts/train_tiny_rewards.py, shipped in the package.

- ``tiny-image``: frame-text contrastive. A small CNN embeds every frame on its own and the score is the mean
  over frames of the cosine similarity with the caption embedding, so it sees colour and shape and is blind to
  motion by construction (shuffling frames cannot change it).
- ``tiny-video``: clip-text contrastive. A small 3D CNN embeds 4 strided frames at 6x6 pixels, so, like ViCLIP
  (8 frames at 224 px of a 256-px video, a coarse view), it is strong on motion and weaker on appearance: the
  shape is barely visible at that resolution.

Both take frames (B, T, 3, H, W) in [0, 1] (resized to their own size if needed) and return a differentiable
cosine similarity in [-1, 1] per video. Captions are read word by word; words outside the tiny world are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, MissingWeightError
from . import RewardModel, register_reward, strided_frame_indices

REWARD_DIR = Path(__file__).resolve().parent.parent / "tiny" / "weights" / "rewards"
FORMAT = "t2vturbo-tiny-reward"


def _words() -> tuple[str, ...]:
    from ..tiny.teacher import WORDS

    return WORDS


class WordTextEncoder(nn.Module):
    """Caption -> unit vector: sum of learned word embeddings through an MLP (word order carries nothing here)."""

    def __init__(self, words: tuple[str, ...], dim: int):
        super().__init__()
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.embed = nn.Embedding(len(self.words), dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def bag(self, prompts: list[str]) -> torch.Tensor:
        """(B, V) word counts of the prompts."""
        counts = torch.zeros(len(prompts), len(self.words))
        for i, p in enumerate(prompts):
            for w in p.lower().replace(",", " ").replace(".", " ").split():
                if w in self.index:
                    counts[i, self.index[w]] += 1
        return counts

    def forward(self, prompts: list[str]) -> torch.Tensor:
        counts = self.bag(prompts).to(self.embed.weight)
        return F.normalize(self.mlp(counts @ self.embed.weight), dim=-1)


def _conv_stack(conv, channels: list[int], first_in: int, strides) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = first_in
    for c, s in zip(channels, strides, strict=True):
        layers += [conv(c_in, c, 3, stride=s, padding=1), nn.GroupNorm(4, c), nn.SiLU()]
        c_in = c
    return nn.Sequential(*layers)


class FrameEncoder(nn.Module):
    """One frame (N, 3, S, S) -> unit vector; mean and max pooled features keep colour and shape."""

    def __init__(self, channels: list[int], dim: int):
        super().__init__()
        self.net = _conv_stack(nn.Conv2d, channels, 3, [2] * len(channels))
        self.head = nn.Linear(2 * channels[-1], dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x * 2 - 1)
        pooled = torch.cat([h.mean(dim=(-1, -2)), h.amax(dim=(-1, -2))], dim=-1)
        return F.normalize(self.head(pooled), dim=-1)


class ClipEncoder(nn.Module):
    """A clip (B, 3, T, S, S) -> unit vector; 3D convolutions see how the frames change, i.e. the motion."""

    def __init__(self, channels: list[int], dim: int):
        super().__init__()
        strides = [(1, 2, 2)] + [(2, 2, 2)] * (len(channels) - 1)
        self.net = _conv_stack(nn.Conv3d, channels, 3, strides)
        self.head = nn.Linear(2 * channels[-1], dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x * 2 - 1)
        pooled = torch.cat([h.mean(dim=(-1, -2, -3)), h.amax(dim=(-1, -2, -3))], dim=-1)
        return F.normalize(self.head(pooled), dim=-1)


class TinyReward(RewardModel):
    """Cosine similarity between a video (or each of its frames) and its caption in a learned joint space."""

    def __init__(self, kind: str, channels: list[int], dim: int = 64, num_frames: int = 4, size: int = 24):
        super().__init__()
        self.kind = kind
        self.num_frames = num_frames if kind == "video" else None
        self.size = size
        self.config = {"format": FORMAT, "version": 1, "kind": kind, "channels": list(channels), "dim": dim,
                       "num_frames": num_frames, "size": size, "words": list(_words())}
        self.text = WordTextEncoder(_words(), dim)
        self.visual = FrameEncoder(channels, dim) if kind == "image" else ClipEncoder(channels, dim)

    def _resize(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        flat = frames.reshape(b * t, *frames.shape[2:])
        if flat.shape[-2:] != (self.size, self.size):
            flat = F.interpolate(flat, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return flat.reshape(b, t, 3, self.size, self.size)

    def embed_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, D) per-frame embeddings (image) or (B, D) clip embeddings (video, of its strided frames)."""
        if self.num_frames is not None and frames.shape[1] != self.num_frames:
            frames = frames[:, strided_frame_indices(frames.shape[1], self.num_frames)]
        # resized in float32 (antialiased bilinear has no bfloat16 CPU kernel), then in the weights' precision
        frames = self._resize(frames.float()).to(self.text.embed.weight.dtype)
        b, t = frames.shape[:2]
        if self.kind == "image":
            return self.visual(frames.flatten(0, 1)).reshape(b, t, -1)
        return self.visual(frames.permute(0, 2, 1, 3, 4))

    def similarity(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B, P) cosine similarity of every video with every prompt (image: averaged over frames)."""
        v = self.embed_video(frames)
        txt = self.text(list(prompts))
        if self.kind == "image":
            return torch.einsum("btd,pd->bp", v, txt) / v.shape[1]
        return v @ txt.T

    def forward(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if frames.ndim != 5 or frames.shape[0] != len(prompts):
            raise ValueError(f"{self.kind} reward expects frames (B, T, 3, H, W) and B prompts, "
                             f"got {tuple(frames.shape)} and {len(prompts)} prompts")
        v = self.embed_video(frames)
        txt = self.text(list(prompts))
        if self.kind == "image":
            return (v * txt[:, None]).sum(-1).mean(dim=1)
        return (v * txt).sum(-1)


def save_tiny_reward(model: TinyReward, path: str | Path) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` (the architecture) for a tiny reward."""
    from ..safeio import save_json, save_safetensors

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path)
    save_json(model.config, path.with_suffix(".json"))
    return path


def read_tiny_reward(path: str | Path) -> TinyReward:
    """Build a tiny reward from ``<name>.safetensors`` + its ``<name>.json``."""
    from ..safeio import load_weights

    path = Path(path)
    cfg_path = path.with_suffix(".json")
    if not path.is_file() or not cfg_path.is_file():
        raise MissingWeightError(f"tiny reward weights {path} (+ {cfg_path.name}) not found; "
                                 f"make them with `python scripts/train_tiny_rewards.py`")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path} is not a t2vturbo tiny reward config (format {cfg.get('format')!r})")
    if list(cfg["words"]) != list(_words()):
        raise CheckpointError(f"{cfg_path} was trained on another tiny-world vocabulary; retrain it")
    model = TinyReward(cfg["kind"], cfg["channels"], cfg["dim"], cfg["num_frames"], cfg["size"])
    state = load_weights(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model


def _load(kind: str, checkpoint, device, dtype) -> TinyReward:
    path = Path(checkpoint) if checkpoint else REWARD_DIR / f"tiny-{kind}.safetensors"
    model = read_tiny_reward(path)
    if model.kind != kind:
        raise CheckpointError(f"{path} holds a tiny-{model.kind} reward, not tiny-{kind}")
    return model.to(device=device, dtype=dtype)


@register_reward("tiny-image", kind="image",
                 description="tiny world: per-frame image-text similarity (colour, shape; blind to motion)")
def load_tiny_image(checkpoint=None, device="cpu", dtype=torch.float32, **options) -> RewardModel:
    """The shipped tiny-image reward (or ``checkpoint``: a .safetensors with its .json beside it)."""
    return _load("image", checkpoint, device, dtype)


@register_reward("tiny-video", kind="video",
                 description="tiny world: clip-text similarity from a 3D CNN (sees motion)")
def load_tiny_video(checkpoint=None, device="cpu", dtype=torch.float32, **options) -> RewardModel:
    """The shipped tiny-video reward (or ``checkpoint``: a .safetensors with its .json beside it)."""
    return _load("video", checkpoint, device, dtype)
