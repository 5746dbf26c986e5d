"""HPSv3: a Qwen2-VL-7B human-preference image reward, scored differentiably on each frame.

The release (hub repo MizzenAI/HPSv3, file ``HPSv3.safetensors``; docs/vlm-rewards.md) is Qwen2-VL-7B-Instruct
fully fine-tuned, with one added token ``<|Reward|>`` (id 151657, embedding rows 151658) and a float32 head
``rm_head`` = Linear(3584, 1024) / ReLU / Dropout / Linear(1024, 16) / ReLU / Linear(16, 2) read at that token:
(mu, log sigma); the score is mu. The file is the plain state dict in transformers 4.45's module names
(``model.*`` text decoder, ``visual.*``, ``lm_head.*`` -- not used and not loaded -- and ``rm_head.*``).

Each frame is one image (the registry averages an image reward over frames): resized (bicubic, antialiased)
to exactly the release's 200704-pixel budget (256 x 256 -> 448 x 448: 256 vision tokens), CLIP-normalised,
repeated twice in time and patchified in torch (:func:`~t2vturbo.rewards.videoreward.qwen2vl_patches`, the
Qwen2-VL image processor's tensors, differentiable), then read by the text decoder with sequential positions
after the scoring prompt (package data ``vlm_reward_prompts.json``). The tokenizer is the base model's
(Qwen/Qwen2-VL-7B-Instruct, from the local HF cache) with ``<|Reward|>`` added.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import MissingWeightError
from ..hub import cached_hub_file
from ..safeio import load_weights
from . import register_reward
from .loading import build_and_load, unwrap_state_dict
from .videoreward import (
    QwenVLConfig,
    QwenVLReward,
    build_tiny,
    finish_loading,
    load_qwen_tokenizer,
    prompt_format,
    select_qwen_vl_state,
    split_options,
)

HPSV3_HUB_REPO = "MizzenAI/HPSv3"
HPSV3_FILE = "HPSv3.safetensors"
QWEN2_VL_7B = "Qwen/Qwen2-VL-7B-Instruct"
HPSV3_TEMPLATE = "hpsv3_instruction_plus_reward_token"
HPSV3_PIXELS = 256 * 28 * 28  # 200704: min_pixels = max_pixels in the release's inference
#: Qwen2-VL-7B-Instruct with the one added token
HPSV3_CONFIG = QwenVLConfig(hidden_size=3584, layers=28, heads=28, kv_heads=4, intermediate_size=18944,
                            vocab_size=151658)
_OPTIONS = ("min_pixels", "max_pixels")


class HPSv3(QwenVLReward):
    """HPSv3 as an image reward: (B, T, 3, H, W) frames in [0, 1] + B prompts -> (B,) mean over frames of mu.

    Args:
        cfg: the architecture.
        tokenizer: the Qwen2 tokenizer with ``<|Reward|>``.
        min_pixels, max_pixels: the per-image pixel range of the resize (the release: both 200704).
    """

    kind = "image"

    def __init__(self, cfg: QwenVLConfig = HPSV3_CONFIG, tokenizer=None, min_pixels: int = HPSV3_PIXELS,
                 max_pixels: int = HPSV3_PIXELS):
        head = nn.Sequential(nn.Linear(cfg.hidden_size, 1024), nn.ReLU(), nn.Dropout(0.05), nn.Linear(1024, 16),
                             nn.ReLU(), nn.Linear(16, 2))
        super().__init__(cfg, head, tokenizer)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels

    def scores(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] + N prompts -> the official ``logits`` (N, 2) = (mu, log sigma)."""
        chat = prompt_format("qwen2_vl_chat")
        template = prompt_format(HPSV3_TEMPLATE)
        before = self.encode(chat["prefix"]) + [self.token_id(chat["vision_start"])]
        reward_ids = [self.token_id(tok) for tok in template["reward_tokens"]]
        after = [[self.token_id(chat["vision_end"])] + self.encode(template["template"].format(text_prompt=p))
                 + self.encode(chat["suffix"]) for p in prompts]
        vision = self.vision_tokens(images[:, None], self.min_pixels, self.max_pixels)  # one frame, doubled
        hidden = self.hidden_at(before, vision, after, reward_ids)
        return self.rm_head(hidden.float())[:, 0]

    def forward(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if frames.ndim != 5 or frames.shape[0] != len(prompts):
            raise ValueError(f"hpsv3 expects frames (B, T, 3, H, W) and B prompts, "
                             f"got {tuple(frames.shape)} and {len(prompts)} prompts")
        b, t = frames.shape[:2]
        mu = self.scores(frames.flatten(0, 1), [p for p in prompts for _ in range(t)])[:, 0]
        return mu.reshape(b, t).mean(1)


def resolve_hpsv3(checkpoint: str | os.PathLike | None, flag: str) -> Path:
    """HPSv3.safetensors: an explicit file or folder, else the HF cache, else one line naming the hub id."""
    if checkpoint:
        p = Path(checkpoint).expanduser()
        p = p / HPSV3_FILE if p.is_dir() else p
        if not p.is_file():
            raise MissingWeightError(f"{HPSV3_FILE} not found at {checkpoint}; give the right path with {flag}")
        return p
    found = cached_hub_file(HPSV3_HUB_REPO, HPSV3_FILE)
    if found is None:
        raise MissingWeightError(f"missing weight {HPSV3_FILE} (hub repo {HPSV3_HUB_REPO}: `hf download "
                                 f"{HPSV3_HUB_REPO} {HPSV3_FILE}`, and `hf download {QWEN2_VL_7B}` for its "
                                 f"tokenizer); download it and pass its path with {flag}")
    return found


@register_reward("hpsv3", kind="image",
                 description="HPSv3 (Qwen2-VL-7B) human preference, mu per frame at 448x448-pixel budget")
def load_hpsv3(checkpoint: str | None = None, device="cpu", dtype=torch.float32, tokenizer: str | None = None,
               gradient_checkpointing: bool = True, **options) -> HPSv3:
    """HPSv3. Options: ``min_pixels`` / ``max_pixels``, ``gradient_checkpointing`` (default true), ``tokenizer``
    (folder; default Qwen/Qwen2-VL-7B-Instruct's from the HF cache), and any
    :class:`~t2vturbo.rewards.videoreward.QwenVLConfig` field for a smaller architecture. Its weights in
    ``rewards[].dtype: bfloat16`` (as trained) halve the memory (~16 GB in bfloat16)."""
    flag = "--reward-checkpoint hpsv3=PATH"
    cfg, score_options = split_options("hpsv3", options, _OPTIONS, HPSV3_CONFIG)
    path = resolve_hpsv3(checkpoint, flag)
    tok = load_qwen_tokenizer(tokenizer, None, QWEN2_VL_7B, prompt_format(HPSV3_TEMPLATE)["reward_tokens"],
                              "the hpsv3 option tokenizer=PATH")
    # the same renames as VideoReward's file (no LoRA here): newer module names mapped back, lm_head dropped
    state = select_qwen_vl_state(unwrap_state_dict(load_weights(path), "model", path))
    model = build_and_load(lambda: HPSv3(cfg, **score_options), state, path, device=device, dtype=dtype,
                           rebuild_buffers=lambda m: m.rebuild_buffers())
    model.tokenizer = tok
    return finish_loading(model, gradient_checkpointing)


@register_reward("tiny-hpsv3", kind="image",
                 description="HPSv3's architecture at toy width, random weights (tests; no download)")
def load_tiny_hpsv3(checkpoint: str | None = None, device="cpu", dtype=torch.float32, seed: int = 0,
                    gradient_checkpointing: bool = False, **options) -> HPSv3:
    """A random tiny HPSv3 (the architecture of :data:`~t2vturbo.rewards.videoreward.TINY_QWEN_VL`, 56 x 56-pixel
    images); options as ``hpsv3`` and ``seed``; ``checkpoint`` is not used."""
    split_options("tiny-hpsv3", options, _OPTIONS)
    model = build_tiny(HPSv3, HPSV3_TEMPLATE, seed, **options).to(device=device, dtype=dtype)
    model.rebuild_buffers()
    return finish_loading(model, gradient_checkpointing)
