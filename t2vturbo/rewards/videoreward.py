"""VideoReward (VideoAlign): a Qwen2-VL-2B video reward model, scored differentiably from decoded frames.

The released model (hub repo KwaiVGI/VideoReward, also KlingTeam/VideoReward; docs/vlm-rewards.md) is
Qwen2-VL-2B-Instruct with three added tokens ``<|VQ_reward|>``, ``<|MQ_reward|>``, ``<|TA_reward|>`` (ids 151657-9,
embedding rows 151660), LoRA (r 64, alpha 128) on every linear of the text decoder, a fully fine-tuned vision
tower, and a head ``rm_head`` = Linear(1536 -> 1, no bias) read at the three tokens: visual quality (VQ), motion
quality (MQ), text alignment (TA). ``checkpoint-11352/model.pth`` is the state dict of the peft-wrapped model
(``base_model.model.``, 4.45 module names, LoRA unmerged); we merge the LoRA at load (W + alpha/r * B @ A), drop
the unused ``lm_head``, and load strictly into transformers' Qwen2-VL vision tower and text decoder.

The forward is the reference's, built so that the gradient reaches the pixels:

1. frames: ``num_frames`` of the clip (the reference's rule: 2 per second of video, at least 4, even, at
   ``round(linspace(0, T - 1, n))``; :meth:`VideoReward.frame_indices`, used by the registry);
2. the vision input in torch (:func:`qwen2vl_patches`): bicubic antialiased resize to the ``smart_resize`` size
   (multiples of 28, 100352 to 200704 pixels), CLIP mean/std, patchify into ``pixel_values`` rows of
   3 x 2 x 14 x 14 and ``grid_thw`` -- the tensors the Qwen2-VL processor makes, here differentiable;
3. tokens: the Qwen2-VL chat turn [video, prompt] with the scoring prompt (package data
   ``vlm_reward_prompts.json``, checked byte for byte), the video's merged vision tokens in place of the pads;
4. the text decoder with SEQUENTIAL positions (as the model was trained, not the multimodal 3D ones), the final
   hidden state at each reward token -> ``rm_head`` -> (VQ, MQ, TA); text after the last reward token cannot
   change a score (causal attention) and is not run.

Score = vq * VQ + mq * MQ + ta * TA of the values normalised with the released means / stds (the official
"Overall" at 1 / 1 / 1). Causal attention makes VQ and MQ blind to the caption: their tokens come before it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import CheckpointError, ConfigError, MissingWeightError
from ..hub import cached_hub_file
from ..safeio import load_weights
from . import RewardModel, register_reward
from .loading import build_and_load, check_options, unwrap_state_dict
from .preprocess import CLIP_MEAN, CLIP_STD, normalize, resize

VIDEOREWARD_HUB_REPOS = ("KwaiVGI/VideoReward", "KlingTeam/VideoReward")
VIDEOREWARD_STEP = "checkpoint-11352"
VIDEOREWARD_FILE = f"{VIDEOREWARD_STEP}/model.pth"
MODEL_CONFIG_FILE = "model_config.json"
QWEN2_VL_2B = "Qwen/Qwen2-VL-2B-Instruct"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

PROMPTS_FILE = Path(__file__).resolve().parent / "vlm_reward_prompts.json"
VIDEOREWARD_TEMPLATE = "videoreward_detailed_special"
DIMENSIONS = ("VQ", "MQ", "TA")
#: the released inference_config (model_config.json): (mean, std) of the raw VQ / MQ / TA outputs
VIDEOREWARD_NORMS = {"VQ": (3.6757, 2.2476), "MQ": (1.1646, 1.3811), "TA": (2.8105, 2.5121)}
#: LoRA scale alpha / r of the release (r 64, alpha 128, no rsLoRA)
VIDEOREWARD_LORA_SCALE = 2.0

PATCH, TEMPORAL_PATCH, MERGE = 14, 2, 2
FACTOR = PATCH * MERGE  # 28: the side of one merged vision token in pixels
VIDEO_MIN_PIXELS = 128 * 28 * 28  # 100352, qwen-vl-utils' video default
VIDEOREWARD_MAX_PIXELS = 256 * 28 * 28  # 200704, the release's data_config.max_frame_pixels


# ------------------------------------------------------------------------------------------------ input format


@functools.cache
def prompt_format(name: str) -> dict:
    """One entry of the package's ``vlm_reward_prompts.json`` (the chat turn, or a scoring template whose sha256
    is checked: the models score these exact bytes)."""
    data = json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))
    entry = data[name]
    if "template" in entry:
        digest = hashlib.sha256(entry["template"].encode("utf-8")).hexdigest()
        if digest != entry["sha256_utf8"]:
            raise CheckpointError(f"{PROMPTS_FILE.name}: template {name} does not match its sha256; "
                                  "reinstall t2vturbo (the file was changed)")
    return entry


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = FACTOR) -> tuple[int, int]:
    """Qwen2-VL's frame size: each side rounded to a multiple of ``factor``, the area brought into
    [min_pixels, max_pixels] keeping the aspect (floor when shrinking, ceil when growing)."""
    if max(height, width) / min(height, width) > 200:
        raise ConfigError(f"frames of {height}x{width} have an aspect ratio over 200, which Qwen2-VL rejects")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def reference_frame_count(total: int, source_fps: float, fps: float = 2.0, min_frames: int = 4,
                          max_frames: int = 768) -> int:
    """Frames the reference samples from a ``total``-frame clip at ``source_fps``: ``fps`` per second, clamped to
    [min_frames, max_frames and the clip], rounded to even (qwen-vl-utils' ``smart_nframes``)."""
    lo = math.ceil(min_frames / TEMPORAL_PATCH) * TEMPORAL_PATCH
    hi = math.floor(min(max_frames, total) / TEMPORAL_PATCH) * TEMPORAL_PATCH
    n = min(max(total / source_fps * fps, lo), hi)
    return max(1, min(round(n / TEMPORAL_PATCH) * TEMPORAL_PATCH, total))


def linspace_indices(total: int, n: int) -> list[int]:
    """``round(linspace(0, total - 1, n))``: the reference's uniform frame choice (ends included; repeats when
    the clip is shorter than ``n``)."""
    return torch.linspace(0, total - 1, n).round().long().tolist()


def qwen2vl_patches(frames: torch.Tensor, min_pixels: int, max_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (B, T, 3, H, W) in [0, 1] -> (``pixel_values`` (B * T/2 * h * w, 1176), ``grid_thw`` (B, 3)) as the
    Qwen2-VL processor makes them, differentiably.

    Resize (bicubic, antialiased) to :func:`smart_resize`'s size, normalise with the CLIP mean / std, pad T to even
    with the last frame, then cut (T, 3, H, W) into (T/2, 2, 3, H/28, 2, 14, W/28, 2, 14) and order each row
    (channel, temporal patch, y, x) with rows ordered (t, merged block row, merged block column, y, x in the block).
    """
    b, t, c, height, width = frames.shape
    h, w = smart_resize(height, width, min_pixels, max_pixels)
    x = normalize(resize(frames.reshape(b * t, c, height, width), (h, w)), CLIP_MEAN, CLIP_STD)
    x = x.reshape(b, t, c, h, w)
    if t % TEMPORAL_PATCH:
        x = torch.cat([x, x[:, -1:].expand(b, TEMPORAL_PATCH - t % TEMPORAL_PATCH, c, h, w)], dim=1)
        t = x.shape[1]
    gt, gh, gw = t // TEMPORAL_PATCH, h // PATCH, w // PATCH
    x = x.reshape(b, gt, TEMPORAL_PATCH, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    pixel_values = x.reshape(b * gt * gh * gw, c * TEMPORAL_PATCH * PATCH * PATCH)
    grid = torch.tensor([[gt, gh, gw]] * b, dtype=torch.long, device=frames.device)
    return pixel_values, grid


# ------------------------------------------------------------------------------------------------ architecture


@dataclass(frozen=True)
class QwenVLConfig:
    """Qwen2-VL architecture; the defaults are Qwen2-VL-2B-Instruct with VideoReward's 151660-row embedding
    (change them only for small test models)."""

    vision_depth: int = 32
    vision_width: int = 1280
    vision_heads: int = 16
    vision_mlp_ratio: int = 4
    hidden_size: int = 1536
    layers: int = 28
    heads: int = 12
    kv_heads: int = 2
    intermediate_size: int = 8960
    vocab_size: int = 151660
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)
    max_position_embeddings: int = 32768


def _vision_config(cfg: QwenVLConfig):
    from transformers import Qwen2VLVisionConfig

    return Qwen2VLVisionConfig(depth=cfg.vision_depth, embed_dim=cfg.vision_width, num_heads=cfg.vision_heads,
                               mlp_ratio=cfg.vision_mlp_ratio, hidden_size=cfg.hidden_size, patch_size=PATCH,
                               temporal_patch_size=TEMPORAL_PATCH, spatial_merge_size=MERGE,
                               attn_implementation="sdpa")


def _text_config(cfg: QwenVLConfig):
    from transformers import Qwen2VLTextConfig

    return Qwen2VLTextConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                             intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.layers,
                             num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
                             rms_norm_eps=cfg.rms_norm_eps, max_position_embeddings=cfg.max_position_embeddings,
                             rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                                              "mrope_section": list(cfg.mrope_section)},
                             use_sliding_window=False, use_cache=False, attention_dropout=0.0,
                             bos_token_id=None, eos_token_id=None, pad_token_id=None,
                             attn_implementation="sdpa")


def _checkpoint_each(layers: Sequence[nn.Module]) -> None:
    """Keep no activations inside each layer for the backward: it runs again there (transformers' own switch
    works only in training mode, and a reward stays in eval mode)."""
    for layer in layers:
        inner = layer.forward

        def forward(*args, _inner=inner, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        layer.forward = forward


class QwenVLReward(RewardModel):
    """A Qwen2-VL reward read at special tokens: the vision tower ``visual``, the text decoder ``model`` and a
    head ``rm_head`` (module names as the checkpoints' 4.45 layout). Subclasses give the prompt and the head."""

    def __init__(self, cfg: QwenVLConfig, head: nn.Module, tokenizer=None):
        super().__init__()
        from transformers.models.qwen2_vl.modeling_qwen2_vl import (
            Qwen2VisionTransformerPretrainedModel,
            Qwen2VLTextModel,
        )

        self.cfg = cfg
        self.visual = Qwen2VisionTransformerPretrainedModel(_vision_config(cfg))
        self.model = Qwen2VLTextModel(_text_config(cfg))
        self.rm_head = head
        self.tokenizer = tokenizer
        self._ids: dict[str, list[int]] = {}

    def rebuild_buffers(self) -> None:
        """Recompute the rotary frequencies (non-persistent buffers, lost when built on the meta device) in
        float32 on the weights' device."""
        from transformers.models.qwen2_vl.modeling_qwen2_vl import (
            Qwen2VLRotaryEmbedding,
            Qwen2VLVisionRotaryEmbedding,
        )

        device = self.model.embed_tokens.weight.device
        self.model.rotary_emb = Qwen2VLRotaryEmbedding(config=self.model.config).to(device)
        self.visual.rotary_pos_emb = Qwen2VLVisionRotaryEmbedding(self.visual.config).to(device)

    def enable_gradient_checkpointing(self) -> None:
        _checkpoint_each(self.visual.blocks)
        _checkpoint_each(self.model.layers)

    # -- tokens

    def token_id(self, token: str) -> int:
        if self.tokenizer is None:
            raise CheckpointError("this reward has no tokenizer; load it with load_reward(...)")
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id or tid >= self.cfg.vocab_size:
            raise CheckpointError(f"the tokenizer has no token {token} within the model's {self.cfg.vocab_size} "
                                  "embedding rows; use the tokenizer saved with the checkpoint")
        return tid

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens in it recognised; no BOS); the last few thousand are kept."""
        ids = self._ids.get(text)
        if ids is None:
            if len(self._ids) >= 4096:
                self._ids.clear()
            ids = self._ids[text] = list(self.tokenizer.encode(text, add_special_tokens=False))
        return ids

    # -- model

    def vision_tokens(self, frames: torch.Tensor, min_pixels: int, max_pixels: int) -> torch.Tensor:
        """Frames (B, T, 3, H, W) in [0, 1] -> merged vision tokens (B, N, hidden) in the decoder's dtype."""
        pixel_values, grid = qwen2vl_patches(frames.float(), min_pixels, max_pixels)
        dtype = self.visual.patch_embed.proj.weight.dtype
        merged = self.visual(pixel_values.to(dtype), grid_thw=grid).pooler_output
        return merged.reshape(frames.shape[0], -1, merged.shape[-1]).to(self.model.embed_tokens.weight.dtype)

    def hidden_at(self, before: list[int], vision: torch.Tensor, after: list[list[int]],
                  reward_ids: Sequence[int]) -> torch.Tensor:
        """Final hidden states (B, len(reward_ids), hidden) at the reward tokens of each sequence
        ``before + vision tokens + after[i]`` (``before`` shared), in sequence order. Each sequence is cut after its
        last reward token and right-padded: with causal attention nothing after a token changes its state."""
        b, n = vision.shape[:2]
        cut = []
        for ids in after:
            at = [i for i, tok in enumerate(ids) if tok in reward_ids]
            if len(at) != len(reward_ids):
                names = ", ".join(self.tokenizer.convert_ids_to_tokens(list(reward_ids)))
                raise ConfigError(f"a caption holds a reward token ({names}) itself; remove it from the caption")
            cut.append(ids[: at[-1] + 1])
        width = max(map(len, cut))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        embed = self.model.embed_tokens
        device = embed.weight.device
        tail = torch.tensor([ids + [pad] * (width - len(ids)) for ids in cut], dtype=torch.long, device=device)
        head = torch.tensor(before, dtype=torch.long, device=device).expand(b, -1)
        x = torch.cat([embed(head), vision.to(device), embed(tail)], dim=1)
        hidden = self.model(inputs_embeds=x, use_cache=False).last_hidden_state  # positions 0, 1, 2, ...
        wanted = torch.zeros_like(tail, dtype=torch.bool)
        for tid in reward_ids:
            wanted |= tail == tid
        rows, cols = wanted.nonzero(as_tuple=True)  # row-major: each sequence's reward tokens in order
        return hidden[rows, cols + len(before) + n].reshape(b, len(reward_ids), -1)


class VideoReward(QwenVLReward):
    """VideoReward as a video reward: (B, T, 3, H, W) frames in [0, 1] + B prompts -> (B,) differentiable scores.

    Args:
        cfg: the architecture.
        tokenizer: the checkpoint's Qwen2 tokenizer (with the three reward tokens).
        vq, mq, ta: weights of the normalised visual quality, motion quality and text alignment in the score.
        normalize: z-score each dimension with the released means / stds (the official ``use_norm``).
        num_frames: frames sampled from a clip (the reference's count for any clip of up to 2 s).
        source_fps: the clips' frame rate; when given, the reference's count (2 frames per second, at least 4)
            replaces ``num_frames``.
        min_pixels, max_pixels: the per-frame pixel range of the resize (the release: 100352, 200704).
    """

    kind = "video"

    def __init__(self, cfg: QwenVLConfig = QwenVLConfig(), tokenizer=None, vq: float = 1.0, mq: float = 1.0,
                 ta: float = 1.0, normalize: bool = True, num_frames: int = 4, source_fps: float | None = None,
                 min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int = VIDEOREWARD_MAX_PIXELS,
                 norms: Mapping[str, tuple[float, float]] = VIDEOREWARD_NORMS, fps: float = 2.0):
        super().__init__(cfg, nn.Linear(cfg.hidden_size, 1, bias=False), tokenizer)
        self.weights = (float(vq), float(mq), float(ta))
        self.normalize = normalize
        self.num_frames = num_frames
        self.source_fps, self.fps = source_fps, fps
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.norms = {k: tuple(map(float, norms[k])) for k in DIMENSIONS}

    def frame_indices(self, total: int, count: int | None = None) -> list[int]:
        """The reference's frames of a ``total``-frame clip: ``count`` (else :attr:`num_frames`, else with
        :attr:`source_fps` the reference's count) at ``round(linspace(0, total - 1, n))``."""
        n = count or (reference_frame_count(total, self.source_fps, self.fps) if self.source_fps else self.num_frames)
        return linspace_indices(total, n)

    def scores(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Raw (VQ, MQ, TA) per video, (B, 3), float32: the official ``logits``."""
        if frames.ndim != 5 or frames.shape[0] != len(prompts):
            raise ValueError(f"videoreward expects frames (B, T, 3, H, W) and B prompts, "
                             f"got {tuple(frames.shape)} and {len(prompts)} prompts")
        chat = prompt_format("qwen2_vl_chat")
        template = prompt_format(VIDEOREWARD_TEMPLATE)
        before = self.encode(chat["prefix"]) + [self.token_id(chat["vision_start"])]
        reward_ids = [self.token_id(tok) for tok in template["reward_tokens"]]
        after = [[self.token_id(chat["vision_end"])] + self.encode(template["template"].format(text_prompt=p))
                 + self.encode(chat["suffix"]) for p in prompts]
        vision = self.vision_tokens(frames, self.min_pixels, self.max_pixels)
        hidden = self.hidden_at(before, vision, after, reward_ids)
        return self.rm_head(hidden.float()).squeeze(-1)

    def forward(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raw = self.scores(frames, prompts)
        if self.normalize:
            mean = raw.new_tensor([self.norms[k][0] for k in DIMENSIONS])
            std = raw.new_tensor([self.norms[k][1] for k in DIMENSIONS])
            raw = (raw - mean) / std
        return raw @ raw.new_tensor(self.weights)


# ------------------------------------------------------------------------------------------------ loading

def select_qwen_vl_state(state: Mapping[str, torch.Tensor], lora_scale: float = VIDEOREWARD_LORA_SCALE,
                         ) -> dict[str, torch.Tensor]:
    """A released Qwen2-VL reward state dict (4.45 module names) -> :class:`QwenVLReward` keys: peft's prefix
    ``base_model.model.`` dropped (newer transformers' ``model.language_model.`` / ``model.visual.`` names mapped
    back), each LoRA pair merged into its ``base_layer`` as W + lora_scale * B @ A (in float32, then the stored
    dtype), peft's ``modules_to_save`` copy taken for a wrapped module, ``lm_head`` dropped (never used for a
    score). A plain state dict (HPSv3's) passes through with only ``lm_head`` dropped."""
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("base_model.model.")
        if name.startswith("model.language_model."):
            name = "model." + name[len("model.language_model."):]
        elif name.startswith("model.visual."):
            name = name[len("model."):]
        if ".original_module." in name or name.startswith("lm_head."):
            continue
        plain[name.replace(".modules_to_save.default.", ".")] = value
    out: dict[str, torch.Tensor] = {}
    for name, value in plain.items():
        if ".lora_A." in name or ".lora_B." in name:
            continue
        if ".base_layer." in name:
            module, _, leaf = name.partition(".base_layer.")
            if leaf == "weight":
                a, b = plain.get(f"{module}.lora_A.default.weight"), plain.get(f"{module}.lora_B.default.weight")
                if (a is None) != (b is None):
                    raise CheckpointError(f"LoRA pair of {module} is incomplete in the checkpoint")
                if a is not None:
                    value = (value.float() + lora_scale * (b.float() @ a.float())).to(value.dtype)
            name = f"{module}.{leaf}"
        out[name] = value
    return out


def _latest_step_file(folder: Path) -> Path | None:
    """``folder/checkpoint-<largest step>/model.pth`` (the official loader's default), or ``folder/model.pth``."""
    if (folder / "model.pth").is_file():
        return folder / "model.pth"
    steps = [(int(p.parent.name.split("-", 1)[1]), p) for p in folder.glob("checkpoint-*/model.pth")
             if p.parent.name.split("-", 1)[1].isdigit()]
    return max(steps)[1] if steps else None


def resolve_videoreward(checkpoint: str | os.PathLike | None, flag: str) -> tuple[Path, Path | None]:
    """(model.pth, model_config.json or None): an explicit file or folder (the hub snapshot, or one of its
    ``checkpoint-*`` folders), else the HF cache of the hub repos, else one line naming the hub id.

    Raises:
        MissingWeightError
    """
    if checkpoint:
        p = Path(checkpoint).expanduser()
        weights = p if p.is_file() else _latest_step_file(p) if p.is_dir() else None
        if weights is None:
            raise MissingWeightError(f"no VideoReward model.pth at {checkpoint} (expected the hub snapshot of "
                                     f"{VIDEOREWARD_HUB_REPOS[0]} or its {VIDEOREWARD_STEP}/model.pth); "
                                     f"give the right path with {flag}")
        for folder in (weights.parent, weights.parent.parent):
            if (folder / MODEL_CONFIG_FILE).is_file():
                return weights, folder / MODEL_CONFIG_FILE
        return weights, None
    for repo in VIDEOREWARD_HUB_REPOS:
        weights = cached_hub_file(repo, VIDEOREWARD_FILE)
        if weights is not None:
            return weights, cached_hub_file(repo, MODEL_CONFIG_FILE)
    repo = VIDEOREWARD_HUB_REPOS[0]
    raise MissingWeightError(f"missing weight {VIDEOREWARD_FILE} (hub repo {repo}: `hf download {repo}`); "
                             f"download it and pass its folder with {flag}")


def read_model_config(path: Path | None) -> dict:
    """The release's ``model_config.json`` settings we use ({} without the file); one line for a model we do not
    implement (another template, output_dim or reward token)."""
    if path is None:
        return {}
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    data, model, lora = raw.get("data_config", {}), raw.get("model_config", {}), raw.get("peft_lora_config", {})
    wrong = [(k, v, want) for k, v, want in (
        ("prompt_template_type", data.get("prompt_template_type"), "detailed_special"),
        ("eval_dim", data.get("eval_dim"), list(DIMENSIONS)),
        ("output_dim", model.get("output_dim"), 1),
        ("reward_token", model.get("reward_token"), "special")) if v is not None and v != want]
    if wrong:
        k, v, want = wrong[0]
        raise CheckpointError(f"{path} has {k}={v!r}; the videoreward reward implements the release's {want!r}")
    out: dict = {}
    if data.get("max_frame_pixels"):
        out["max_pixels"] = int(data["max_frame_pixels"])
    if data.get("fps"):
        out["fps"] = float(data["fps"])
    if data.get("num_frames"):
        out["num_frames"] = int(data["num_frames"])
    inf = raw.get("inference_config") or {}
    if all(f"{k}_{s}" in inf for k in DIMENSIONS for s in ("mean", "std")):
        out["norms"] = {k: (float(inf[f"{k}_mean"]), float(inf[f"{k}_std"])) for k in DIMENSIONS}
    if lora.get("lora_enable", True) and lora.get("lora_r") and lora.get("lora_alpha"):
        if lora.get("use_rslora"):
            out["lora_scale"] = float(lora["lora_alpha"]) / math.sqrt(float(lora["lora_r"]))
        else:
            out["lora_scale"] = float(lora["lora_alpha"]) / float(lora["lora_r"])
    return out


def load_qwen_tokenizer(folder: str | os.PathLike | None, weights: Path | None, base_repo: str,
                        reward_tokens: Sequence[str], flag: str):
    """The tokenizer: ``folder`` (option), else the ``tokenizer/`` saved beside the checkpoint, else the base
    model's from the HF cache; the reward tokens are added when missing (in order, as training added them)."""
    from transformers import AutoTokenizer

    candidates = [Path(folder).expanduser()] if folder else []
    if weights is not None:
        candidates.append(weights.parent / "tokenizer")
    chosen = next((c for c in candidates if any((c / f).is_file() for f in TOKENIZER_FILES)), None)
    if folder and chosen is None:
        raise MissingWeightError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {folder}; give the "
                                 f"checkpoint's tokenizer folder with {flag}")
    if chosen is None:
        try:
            from huggingface_hub import snapshot_download

            chosen = Path(snapshot_download(base_repo, local_files_only=True))
        except Exception:
            raise MissingWeightError(f"no tokenizer beside the checkpoint and {base_repo} is not in the local "
                                     f"Hugging Face cache; run `hf download {base_repo}` or pass a tokenizer "
                                     f"folder with {flag}") from None
    tokenizer = AutoTokenizer.from_pretrained(str(chosen), local_files_only=True)
    missing = [t for t in reward_tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": list(reward_tokens)})
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = prompt_format("qwen2_vl_chat")["pad"]
    return tokenizer


_ARCH_FIELDS = tuple(f.name for f in fields(QwenVLConfig))
_SCORE_OPTIONS = ("vq", "mq", "ta", "normalize", "num_frames", "source_fps", "min_pixels", "max_pixels")


def split_options(name: str, options: dict, accepted: Sequence[str], base: QwenVLConfig = QwenVLConfig(),
                  ) -> tuple[QwenVLConfig, dict]:
    """(the architecture: ``base`` with the options that are :class:`QwenVLConfig` fields, the other options);
    one line for an option neither names."""
    check_options(name, options, (*_ARCH_FIELDS, *accepted))
    arch = {k: tuple(v) if k == "mrope_section" else v for k, v in options.items() if k in _ARCH_FIELDS}
    return QwenVLConfig(**{**asdict(base), **arch}), {k: v for k, v in options.items() if k not in _ARCH_FIELDS}


def finish_loading(model: QwenVLReward, gradient_checkpointing: bool) -> QwenVLReward:
    """The head in float32 (tiny; scored in float32 whatever the backbone's dtype), per-layer checkpointing."""
    model.rm_head.float()
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


@register_reward("videoreward", kind="video",
                 description="VideoReward (VideoAlign, Qwen2-VL-2B): VQ + MQ + TA, z-scored (4 frames at 2 fps)")
def load_videoreward(checkpoint: str | None = None, device="cpu", dtype=torch.float32, tokenizer: str | None = None,
                     gradient_checkpointing: bool = True, **options) -> VideoReward:
    """VideoReward. Options: ``vq`` / ``mq`` / ``ta`` (weights, default 1), ``normalize`` (default true),
    ``num_frames`` / ``source_fps``, ``min_pixels`` / ``max_pixels``, ``gradient_checkpointing`` (default true),
    ``tokenizer`` (folder), and any :class:`QwenVLConfig` field for a smaller architecture. Its weights in
    ``rewards[].dtype: bfloat16`` (as trained) halve the memory."""
    flag = "--reward-checkpoint videoreward=PATH"
    cfg, score_options = split_options("videoreward", options, _SCORE_OPTIONS)
    weights, config_path = resolve_videoreward(checkpoint, flag)
    released = read_model_config(config_path)
    lora_scale = released.pop("lora_scale", VIDEOREWARD_LORA_SCALE)
    tok = load_qwen_tokenizer(tokenizer, weights, QWEN2_VL_2B, prompt_format(VIDEOREWARD_TEMPLATE)["reward_tokens"],
                              "the videoreward option tokenizer=PATH")
    state = select_qwen_vl_state(unwrap_state_dict(load_weights(weights), "model", weights), lora_scale)
    kwargs = {**released, **score_options}
    model = build_and_load(lambda: VideoReward(cfg, **kwargs), state, weights, device=device, dtype=dtype,
                           rebuild_buffers=lambda m: m.rebuild_buffers())
    model.tokenizer = tok
    return finish_loading(model, gradient_checkpointing)


# ------------------------------------------------------------------------------------------------ tiny

#: the tiny test model: Qwen2-VL's architecture at toy width (what tests and the tiny world run)
TINY_QWEN_VL = dict(vision_depth=2, vision_width=32, vision_heads=2, vision_mlp_ratio=2, hidden_size=64, layers=2,
                    heads=4, kv_heads=2, intermediate_size=128, mrope_section=(2, 3, 3), max_position_embeddings=4096)
#: the tiny model sees 56 x 56 frames (4 x 4 patches, 4 vision tokens per frame pair)
TINY_PIXELS = 56 * 56
TINY_VOCAB = 1024


@functools.lru_cache(maxsize=4)
def _tiny_tokenizer_json(template: str) -> str:
    """A byte-level BPE trained on a scoring prompt and the chat turn (deterministic, ~10 ms), so that a tiny
    model reads sequences of about the real length (VideoReward's template: ~900 tokens here)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    chat = prompt_format("qwen2_vl_chat")
    specials = [chat["pad"], "<|im_start|>", "<|im_end|>", chat["vision_start"], chat["vision_end"],
                chat["image_pad"], chat["video_pad"], *prompt_format(template)["reward_tokens"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([prompt_format(template)["template"], chat["prefix"], chat["suffix"]], trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(template: str = VIDEOREWARD_TEMPLATE):
    """A tiny model's tokenizer for ``template`` (a transformers fast tokenizer: ``save_pretrained`` writes it as
    the real one is written); the template's reward tokens come right after the chat's special tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    chat = prompt_format("qwen2_vl_chat")
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json(template)),
                                  pad_token=chat["pad"], eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": list(prompt_format(template)["reward_tokens"])})
    return tok


def build_tiny(cls: type[QwenVLReward], template: str, seed: int = 0, **options) -> QwenVLReward:
    """A random ``cls`` of Qwen2-VL's architecture at toy width (:data:`TINY_QWEN_VL`), frames of
    :data:`TINY_PIXELS`, with its tokenizer (no files); ``options`` override either."""
    tok = tiny_tokenizer(template)
    arch = {**TINY_QWEN_VL, "vocab_size": len(tok)}
    other = {"min_pixels": TINY_PIXELS, "max_pixels": TINY_PIXELS}
    for k, v in options.items():
        (arch if k in _ARCH_FIELDS else other)[k] = tuple(v) if k == "mrope_section" else v
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(QwenVLConfig(**{**asdict(QwenVLConfig()), **arch}), tokenizer=tok, **other)
    model.rebuild_buffers()
    return model


def build_tiny_videoreward(seed: int = 0, **options) -> VideoReward:
    """A random VideoReward at toy width (:func:`build_tiny`)."""
    return build_tiny(VideoReward, VIDEOREWARD_TEMPLATE, seed, **options)


@register_reward("tiny-videoreward", kind="video",
                 description="VideoReward's architecture at toy width, random weights (tests; no download)")
def load_tiny_videoreward(checkpoint: str | None = None, device="cpu", dtype=torch.float32, seed: int = 0,
                          gradient_checkpointing: bool = False, **options) -> VideoReward:
    """A random tiny VideoReward. Options as ``videoreward`` (the architecture defaults to :data:`TINY_QWEN_VL`,
    the frames to 56 x 56 pixels) and ``seed``; ``checkpoint`` is not used."""
    split_options("tiny-videoreward", options, _SCORE_OPTIONS)
    model = build_tiny_videoreward(seed, **options).to(device=device, dtype=dtype)
    model.rebuild_buffers()
    return finish_loading(model, gradient_checkpointing)
