"""The Wan2.1 family: a flow-matching video transformer (``WanTransformer3DModel``), the causal video VAE
(``AutoencoderKLWan``, per-channel latent mean / std) and the UMT5 text encoder (docs/formats.md §6).

:class:`WanTeacher` implements the Teacher protocol (teachers/base.py) over a diffusers-layout folder
(``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``) or the tiny Wan that :func:`build_tiny_wan` makes in code (``tiny-wan``:
real classes and key names at small width, random weights, the tiny world's offline tokenizer). Its prediction is
the velocity ``v = eps - x0`` of :class:`t2vturbo.schedules.FlowSchedule`.

The student is the SAME transformer with a LoRA adapter; nothing here copies it.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..schedules import FlowSchedule
from .base import Teacher
from .common import DEFAULTS_FILE, OneCallHook, load_folder

WAN_HUB_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
#: the model card's defaults (480p, 81 frames at 16 fps, guidance 5.0 in the form uncond + g (cond - uncond))
WAN_DEFAULTS = {"frames": 81, "height": 480, "width": 832, "fps": 16, "guidance": 5.0}
#: WanPipeline pads every prompt's embeddings with zeros to this many tokens
MAX_SEQUENCE_LENGTH = 512

#: the tiny Wan: diffusers' own test sizes for the transformer and VAE, a 2-layer UMT5 over the tiny tokenizer
TINY_WAN_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                            out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
                            cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
TINY_WAN_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                    temperal_downsample=[False, True, True])
TINY_WAN_TEXT = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                     relative_attention_max_distance=16, dropout_rate=0.0, feed_forward_proj="gated-gelu")
TINY_WAN_SHIFT = 3.0
TINY_WAN_DEFAULTS = {"frames": 9, "height": 32, "width": 32, "fps": 16, "guidance": 5.0}
#: the default LoRA targets of a Wan transformer: the attention and FFN linears of every block
WAN_LORA_PATTERN = r"^blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)$|^blocks\.\d+\.ffn\.net\.(0\.proj|2)$"
#: the file ``WanPipeline.load_lora_weights(folder)`` reads
WAN_LORA_FILE = "pytorch_lora_weights.safetensors"


def clean_prompt(text: str) -> str:
    """What WanPipeline does to a prompt before tokenizing: unescape HTML twice, collapse whitespace, strip
    (it also runs ftfy when installed, which leaves plain ASCII prompts as they are)."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()


@dataclass
class WanTeacher(Teacher):
    """A Wan2.1 teacher: the transformer, the causal video VAE, UMT5 (and, with an adapter, its student)."""

    transformer: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    schedule: FlowSchedule
    name: str = "wan"
    max_sequence_length: int = MAX_SEQUENCE_LENGTH
    stored_defaults: dict = field(default_factory=lambda: dict(WAN_DEFAULTS))
    #: Wan has no fps input
    default_fps: int | None = None
    #: diffusers' Wan pipelines draw every noise tensor as (1, C, F, h, w) per video
    noise_frame_major = False
    #: the VAE is causal in time: pixel frame j depends on latent frames 0 .. ceil(j / 4) and nothing after
    causal_vae = True
    #: Wan's time embedder is diffusers' TimestepEmbedding: its ``cond_proj`` takes the guidance embedding
    guidance_module = "condition_embedder.time_embedder"
    plan = {"lora_targets": "every block's attention and FFN linears",
            "solver": "Euler on the flow velocity (docs/method.md §7), N={n} shifted sigmas"}

    @property
    def network(self) -> nn.Module:
        return self.transformer

    @property
    def temporal_factor(self) -> int:
        cfg = self.vae.config  # the pipeline's vae_scale_factor_temporal (Wan2.2's VAE records it)
        return int(getattr(cfg, "scale_factor_temporal", None) or 2 ** sum(cfg.temperal_downsample))

    @property
    def spatial_factor(self) -> int:
        cfg = self.vae.config  # 8 for Wan2.1's VAE; 16 for Wan2.2's (8 in its convolutions x its 2x2 patchify)
        return int(getattr(cfg, "scale_factor_spatial", None) or 2 ** len(cfg.temperal_downsample))

    def native_video(self) -> dict[str, int]:
        d = {**WAN_DEFAULTS, **self.stored_defaults}
        return {k: int(d[k]) for k in ("frames", "height", "width", "fps")}

    def lora_targets(self, wanted: str | list[str] = "all") -> list[str]:
        """The attention and FFN linears of every block (``"all"``), or any Linear named in ``wanted``."""
        from ..student import match_module_names

        linears = [n for n, m in self.transformer.named_modules() if type(m) is nn.Linear
                   and not n.endswith("cond_proj")]
        if wanted == "all":
            return [n for n in linears if re.match(WAN_LORA_PATTERN, n)]
        return match_module_names(linears, wanted)

    def text_states_shape(self) -> tuple[int, int]:
        return (self.max_sequence_length, int(self.transformer.config.text_dim))

    def network_blocks(self) -> list[nn.Module]:
        return list(self.transformer.blocks)

    def enable_block_checkpointing(self) -> int:
        """diffusers' transformers checkpoint their own blocks."""
        self.transformer.enable_gradient_checkpointing()
        return len(self.transformer.blocks)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, F', h, w) of a clip; WanPipeline's constraints are checked here with a one-line error."""
        tf, sf = self.temporal_factor, self.spatial_factor
        patch = self.transformer.config.patch_size
        step = sf * int(patch[-1])
        if (frames - 1) % tf:
            raise ConfigError(f"Wan needs frames = 1 + {tf} k (got {frames}); pick e.g. {(frames - 1) // tf * tf + 1}")
        if height % step or width % step:
            raise ConfigError(f"Wan needs height and width divisible by {step} (got {height}x{width}); pick e.g. "
                              f"{max(step, height // step * step)}x{max(step, width // step * step)}")
        return (int(self.transformer.config.in_channels), (frames - 1) // tf + 1, height // sf, width // sf)

    # ------------------------------------------------------------------ the Teacher protocol
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """UMT5 states (B, L, D), each prompt's own tokens then zeros up to ``max_sequence_length`` (WanPipeline)."""
        tok = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length",
                             max_length=self.max_sequence_length, truncation=True, add_special_tokens=True,
                             return_attention_mask=True, return_tensors="pt")
        mask = tok.attention_mask.to(self.text_encoder.device)
        states = self.text_encoder(tok.input_ids.to(self.text_encoder.device), mask).last_hidden_state
        states = states * mask[..., None].to(states.dtype)  # the padding positions become zeros
        return states.to(self.device, self.dtype)

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = int(self.vae.config.z_dim)
        mean = torch.tensor(self.vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1)
        std = torch.tensor(self.vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1)
        return mean.to(like.device, like.dtype), std.to(like.device, like.dtype)

    def encode_video(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels (B, F, 3, H, W) in [0, 1] -> normalised latents (B, C, F', h, w): (z - mean) / std per channel."""
        x = (pixels.permute(0, 2, 1, 3, 4) * 2.0 - 1.0).to(self.vae.dtype)
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator=generator)
        mean, std = self._latent_stats(z)
        return ((z - mean) / std).to(self.dtype)

    def encode_moments(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels.permute(0, 2, 1, 3, 4) * 2.0 - 1.0).to(self.vae.dtype)
        dist = self.vae.encode(x).latent_dist
        mean, std = self._latent_stats(dist.mean)
        return ((dist.mean - mean) / std).to(self.dtype), (dist.std / std).to(self.dtype)

    def decode_video(self, latents: torch.Tensor, frames: list[int] | None = None, chunk: int = 0) -> torch.Tensor:
        """Normalised latents -> pixels (B, F, 3, H, W) in [0, 1], ``(x / 2 + 0.5).clamp(0, 1)`` (differentiable).

        ``frames`` (pixel frame indices) decodes only the latent frames up to the last one they need: the VAE is
        causal in time, so pixel frame j depends on latent frames 0 .. ceil(j / 4) and nothing after.
        ``chunk`` is accepted for the protocol; the causal decoder already runs one latent frame at a time.
        """
        if frames is not None:
            last = -(-max(frames) // self.temporal_factor)
            latents = latents[:, :, : last + 1]
        z = latents.to(self.vae.dtype)
        mean, std = self._latent_stats(z)
        pix = self.vae.decode(z * std + mean).sample
        pix = (pix.float() / 2.0 + 0.5).clamp(0.0, 1.0).permute(0, 2, 1, 3, 4)
        return pix[:, frames] if frames is not None else pix

    def denoise(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, guidance_cond: torch.Tensor | None = None,
                fps: torch.Tensor | int | None = None, network: nn.Module | None = None,
                motion_cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) of the transformer's velocity at latents ``x`` (B, C, F', h, w) and float timesteps ``t`` (B,)
        (sigma x 1000). ``guidance_cond`` is a student's guidance embedding (its projection must be attached).
        ``motion_cond`` (T2V-Turbo-v2's motion condition) has no input here: anything but None is refused."""
        if motion_cond is not None:
            raise ConfigError("a Wan2.1 transformer has no motion condition (T2V-Turbo-v2 motion guidance is for "
                              "VideoCrafter2 / UNet3D students); leave out --motion-guidance")
        net = network if network is not None else self.transformer
        with guidance_input(self.guidance_embedder(), guidance_cond):
            v = net(hidden_states=x, timestep=torch.as_tensor(t, device=x.device), encoder_hidden_states=text,
                    return_dict=False)[0]
        return self.schedule.to_x0_eps(v, x, t)

    # ------------------------------------------------------------------ export
    def write_pipeline(self, folder: Path, *, guidance: float, origin_steps: int, dtype: torch.dtype,
                       fps: int | None, base_spec: str) -> dict:
        """Merge + fold the student and save a stock ``WanPipeline`` with ``FlowMatchLCMScheduler``: run it with
        ``num_inference_steps=4, guidance_scale=1.0``."""
        from diffusers import FlowMatchLCMScheduler, WanPipeline

        from ..student import fold_guidance, lora_layers, merge_lora

        if lora_layers(self.transformer):  # a fully fine-tuned student has whole weights: nothing to merge
            merge_lora(self.transformer)
        fold_guidance(self.guidance_embedder(), guidance)
        scheduler = FlowMatchLCMScheduler.from_config(self.schedule.lcm_scheduler_config())
        pipe = WanPipeline(tokenizer=self.tokenizer, text_encoder=self.text_encoder, transformer=self.transformer,
                           vae=self.vae, scheduler=scheduler)
        if dtype != torch.float32:
            pipe.to(dtype=dtype)
        pipe.save_pretrained(folder, safe_serialization=True)
        (Path(folder) / DEFAULTS_FILE).write_text(json.dumps(self.stored_defaults, indent=1))
        return {"fps_folded": None, "how_to_run": (
            "run it with: torch.manual_seed(SEED); WanPipeline.from_pretrained(DIR)(prompt, num_inference_steps=4, "
            "guidance_scale=1.0)  (its FlowMatchLCMScheduler re-noises from torch's global generator)")}

    def write_adapter(self, folder: Path, *, guidance: float, base_spec: str, meta: dict) -> dict:
        """The student's adapter in the layout ``WanPipeline.load_lora_weights(folder)`` reads: diffusers' peft keys
        ``transformer.{module}.lora_A.weight`` / ``lora_B.weight`` (scalings folded into B, so alpha = rank), and the
        guidance folded for a fixed w as the bias of a rank-1 LoRA on ``condition_embedder.time_embedder.linear_1``
        (A and B zero, ``lora_B.bias`` = W1 cond_proj(embed(w))): a stock transformer has no guidance projection.
        Every module carries an explicit ``lora_B.bias`` (zero elsewhere): diffusers then turns on peft's lora_bias."""
        from safetensors.torch import save_file

        state = wan_lora_state(self.transformer, self.guidance_module, guidance)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / WAN_LORA_FILE))
        shift = self.schedule.lcm_scheduler_config().get("shift")
        return {"guidance_folded": float(guidance), "run_with": {
            "guidance_scale": 1.0, "scheduler": self.schedule.lcm_scheduler_config(),
            "load": "pipe.load_lora_weights(DIR); pipe.scheduler = FlowMatchLCMScheduler(shift=...)"},
            "how_to_run": (f"load it with: pipe.load_lora_weights(DIR); pipe.scheduler = FlowMatchLCMScheduler("
                           f"shift={shift}); then num_inference_steps=4, guidance_scale=1.0")}


# ---------------------------------------------------------------------------------------------- guidance input
class guidance_input(OneCallHook):  # noqa: N801 - used as a context manager, like torch.no_grad
    """Within the block, every call of the transformer's time embedder gets ``condition=w_emb``.

    Wan's transformer has no ``timestep_cond`` argument, but its time embedder is diffusers' ``TimestepEmbedding``,
    whose optional ``cond_proj`` adds ``cond_proj(condition)`` to the sinusoidal input: exactly where LCM's
    guidance embedding enters a UNet. The hook lives for one call and is removed on exit.
    """

    def __init__(self, embedder: nn.Module, w_emb: torch.Tensor | None):
        self.embedder = embedder
        self.w_emb = w_emb
        if w_emb is not None and getattr(self.embedder, "cond_proj", None) is None:
            raise ConfigError("a guidance embedding was given but this Wan transformer has no guidance projection "
                              "(condition_embedder.time_embedder.cond_proj); load it as a student")

    def _hook(self, module, args, kwargs):
        w = self.w_emb.to(args[0].device, module.cond_proj.weight.dtype)
        if args[0].ndim == 3 and w.ndim == 2:  # per-token timesteps (Wan2.2 TI2V): (B, L, C) + (B, 1, C)
            w = w[:, None]
        return args, {**kwargs, "condition": w}

    def register(self):
        return (self.embedder.register_forward_pre_hook(self._hook, with_kwargs=True) if self.w_emb is not None
                else None)


def wan_lora_state(transformer: nn.Module, guidance_module: str, guidance: float) -> dict[str, torch.Tensor]:
    """One transformer's student adapter as ``WanPipeline.load_lora_weights`` reads it (keys under
    ``transformer.``): diffusers' peft keys ``lora_A.weight`` / ``lora_B.weight`` (scalings folded into B, so alpha =
    rank), and the guidance folded for a fixed w as the bias of a rank-1 LoRA on ``{guidance_module}.linear_1`` (A
    and B zero, ``lora_B.bias`` = W1 cond_proj(embed(w))). Every module carries an explicit ``lora_B.bias`` (zero
    elsewhere): diffusers then turns on peft's lora_bias."""
    from ..consistency import guidance_embedding
    from ..student import ADAPTER, lora_layers

    state: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(transformer):
        a = layer.lora_A[ADAPTER].weight
        b = layer.lora_B[ADAPTER].weight * layer.scaling[ADAPTER]
        state[f"transformer.{name}.lora_A.weight"] = a
        state[f"transformer.{name}.lora_B.weight"] = b
        state[f"transformer.{name}.lora_B.bias"] = torch.zeros(b.shape[0], dtype=b.dtype, device=b.device)
    if not state:
        raise CheckpointError("this transformer has no LoRA adapter to export")
    embedder = transformer.get_submodule(guidance_module)
    proj = getattr(embedder, "cond_proj", None)
    if proj is None:
        raise CheckpointError("this transformer has no guidance projection to fold into the LoRA file")
    lin = embedder.linear_1
    base = getattr(lin, "base_layer", lin)
    with torch.no_grad():
        emb = guidance_embedding(torch.tensor([float(guidance)]), proj.in_features, dtype=torch.float64)
        shift = base.weight.double() @ (emb[0] @ proj.weight.double().T)
    key = f"transformer.{guidance_module}.linear_1"
    state[f"{key}.lora_A.weight"] = torch.zeros(1, base.in_features, dtype=base.weight.dtype)
    state[f"{key}.lora_B.weight"] = torch.zeros(base.out_features, 1, dtype=base.weight.dtype)
    state[f"{key}.lora_B.bias"] = shift.to(base.weight.dtype)
    return state


# ---------------------------------------------------------------------------------------------- building / loading
def build_tiny_wan(seed: int = 0) -> WanTeacher:
    """The tiny Wan, built in code from a seed: real classes at diffusers' test sizes, random weights."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from ..tiny.teacher import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**TINY_WAN_TRANSFORMER)
        vae = AutoencoderKLWan(**TINY_WAN_VAE)
        text_cfg = UMT5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                              **TINY_WAN_TEXT)
        text_encoder = UMT5EncoderModel(text_cfg)
    for m in (transformer, vae, text_encoder):
        m.eval().requires_grad_(False)
    return WanTeacher(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                      schedule=FlowSchedule(shift=TINY_WAN_SHIFT), name="tiny-wan",
                      stored_defaults=dict(TINY_WAN_DEFAULTS))


def is_wan_folder(root: Path) -> bool:
    """Whether a diffusers folder holds a Wan pipeline (model_index.json, else transformer/config.json)."""
    index = root / "model_index.json"
    if index.is_file():
        try:
            return "Wan" in str(json.loads(index.read_text()).get("_class_name", ""))
        except (OSError, json.JSONDecodeError):
            return False
    cfg = root / "transformer" / "config.json"
    return cfg.is_file() and "Wan" in cfg.read_text()


def is_wan_spec(spec: str) -> bool:
    """Whether a teacher spec names the Wan family: ``tiny-wan``, a Wan folder, or a hub id with "wan" in it."""
    p = Path(spec).expanduser()
    if spec == "tiny-wan":
        return True
    if p.is_dir():
        return is_wan_folder(p)
    return not p.exists() and "/" in spec and "wan" in spec.lower()


def load_wan_teacher(spec: str, text_encoder: bool = True) -> WanTeacher:
    """Load a Wan2.1 diffusers folder or a hub id in the local cache (transformer/ vae/ text_encoder/ tokenizer/
    scheduler/)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    how = f"model.teacher (distill) or --model (sample, export), e.g. {WAN_HUB_ID}"
    get = f"get it with `hf download {WAN_HUB_ID} --local-dir DIR`"
    folder = load_folder(spec, {"transformer": WanTransformer3DModel, "vae": AutoencoderKLWan,
                                "text_encoder": UMT5EncoderModel, "tokenizer": AutoTokenizer},
                         "a Wan folder", how, get, "cannot load the Wan model",
                         skip=() if text_encoder else ("text_encoder",))
    m = folder.modules
    return WanTeacher(transformer=m["transformer"], vae=m["vae"], text_encoder=m["text_encoder"],
                      tokenizer=m["tokenizer"], schedule=FlowSchedule.from_scheduler_config(folder.scheduler_config),
                      name=str(spec), stored_defaults={**WAN_DEFAULTS, **folder.stored_defaults})


def save_wan_teacher(teacher: WanTeacher, folder: Path) -> None:
    """Write ``teacher`` as a stock WanPipeline folder (with the Euler flow scheduler t2vturbo samples with)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    pipe = WanPipeline(tokenizer=teacher.tokenizer, text_encoder=teacher.text_encoder,
                       transformer=teacher.transformer, vae=teacher.vae,
                       scheduler=FlowMatchEulerDiscreteScheduler.from_config(teacher.schedule.scheduler_config()))
    pipe.save_pretrained(folder, safe_serialization=True)
    (Path(folder) / DEFAULTS_FILE).write_text(json.dumps(teacher.stored_defaults, indent=1))
