"""Architecture of the tiny teacher (ModelScope family at small width) and its offline word-level tokenizer."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from ..schedules import DDIM_SCHEDULER_CONFIG, VPSchedule

TINY_WEIGHTS_DIR = Path(__file__).parent / "weights"
TEACHER_DIR = TINY_WEIGHTS_DIR / "teacher"

FRAMES, HEIGHT, WIDTH, FPS = 8, 24, 24, 8

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
#: every word a caption of the tiny world uses; other words fall back to characters
WORDS = ("a", "moving", *COLOURS, *SHAPES, *DIRECTIONS)

UNET_CONFIG = dict(
    sample_size=12,
    in_channels=4,
    out_channels=4,
    # three levels (12, 6, 3 latent pixels): the 3x3 level sees the whole frame, and every level's temporal
    # convolutions widen the temporal receptive field, which is what motion needs
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(32, 64, 128),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=64,
    attention_head_dim=8,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 64),
    layers_per_block=1,
    latent_channels=4,
    # few, wide groups: with the default narrow groups GroupNorm erases the absolute colour of flat frames
    norm_num_groups=4,
    sample_size=24,
)
TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
    projection_dim=64,
)
#: the classifier-free guidance scale the tiny teacher samples best at (``t2vturbo sample --teacher`` default)
TEACHER_GUIDANCE = 7.5
#: what t2vturbo_defaults.json of the shipped teacher folder holds
STORED_DEFAULTS = {"frames": FRAMES, "fps": FPS, "guidance": TEACHER_GUIDANCE}
#: the random-init tiny teacher (``build_tiny_teacher``) uses the same DDIM schedule as ModelScope and VideoCrafter2
SCHEDULER_CONFIG = DDIM_SCHEDULER_CONFIG
#: the zero-terminal-SNR, v-prediction variant (``scripts/train_tiny_teacher.py --zero-snr``): the schedule of the
#: shipped trained teacher (t2vturbo/tiny/weights/teacher/scheduler). Under the standard schedule the last
#: timestep keeps sqrt(alpha_bar) = 0.068 of the clip, enough to locate the object in every frame, so a teacher
#: reads the motion from its input and never from the caption; at zero terminal SNR only the caption can say it
#: (docs/tiny-world.md, "Why the first tiny teacher was weak").
ZERO_SNR_SCHEDULER_CONFIG = {**DDIM_SCHEDULER_CONFIG, "prediction_type": "v_prediction",
                             "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}


def write_tiny_tokenizer(folder: Path) -> None:
    """Write a CLIP BPE tokenizer (vocab.json + merges.txt) whose merges make each tiny-world word one token.

    Letters are in the vocabulary too, so any lower-case prompt tokenizes (unknown words become characters).
    """
    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab: list[str] = ["!"]  # pad token, as in the laion tokenizers
    vocab += letters + [ch + "</w>" for ch in letters]
    merges: list[str] = []
    # BPE applies the lowest-ranked merge first, so a short word's merges can break a longer one apart ("r e" of
    # "red" split "green" into four tokens when "red" came first): the longest words get the first ranks
    for word in sorted(WORDS, key=len, reverse=True):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        cur = pieces[0]
        for nxt in pieces[1:]:
            merged = cur + nxt
            if f"{cur} {nxt}" not in merges:
                merges.append(f"{cur} {nxt}")
            if merged not in vocab:
                vocab.append(merged)
            cur = merged
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": TEXT_CONFIG["max_position_embeddings"], "pad_token": "!",
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "do_lower_case": True, "tokenizer_class": "CLIPTokenizer",
    }))


def load_tiny_tokenizer():
    from transformers import CLIPTokenizer

    if (TEACHER_DIR / "tokenizer" / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(TEACHER_DIR / "tokenizer")
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_tokenizer(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp)


def build_tiny_teacher(seed: int = 0):
    """The tiny teacher's architecture with random weights from ``seed`` (no files read)."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..teachers.unet3d import UNet3DTeacher

    tokenizer = load_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet3DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
        text_cfg = CLIPTextConfig(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, **TEXT_CONFIG,
        )
        text_encoder = CLIPTextModel(text_cfg)
    return UNet3DTeacher(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                         schedule=VPSchedule.from_scheduler_config(SCHEDULER_CONFIG), name="tiny", vae_scale=1.0,
                         stored_defaults=dict(STORED_DEFAULTS))


def load_tiny_teacher():
    """The shipped trained tiny teacher if its weights are in the package, else the random-init one."""
    if (TEACHER_DIR / "unet" / "config.json").is_file():
        from ..teachers.unet3d import load_diffusers_teacher

        parts = load_diffusers_teacher(str(TEACHER_DIR))
        parts.name = "tiny"
        return parts
    return build_tiny_teacher()
