"""VideoCrafter2 (VC2) support: the fps embedding, and conversion of the original ``model.ckpt`` to our parts.

The VC2 UNet is diffusers' ``UNet3DConditionModel`` plus an fps embedding (FORMATS §4): Linear -> SiLU -> Linear on
the sinusoidal embedding of the frame rate, added to the time embedding. We keep the UNet a stock diffusers model and
attach the fps embedding as ``unet.fps_embedding`` with a forward hook on ``unet.time_embedding``; it therefore keeps
working when the student adds ``time_embedding.cond_proj`` or peft wraps the UNet's linears.

``convert_vc2_checkpoint(model.ckpt)`` reads the original checkpoint safely (weights only), maps every key by name
(lvdm -> diffusers / transformers), checks every key is used and every shape is right, and returns
:class:`~t2vturbo.models.TeacherParts`; :func:`save_converted` writes a diffusers-layout folder that
``models.load_teacher`` loads.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from .models import DDIM_SCHEDULER_CONFIG, TeacherParts, scaled_linear_alphas_cumprod
from .safeio import atomic_path, load_torch_file, load_weights

DEFAULT_FPS = 16
FPS_FILE = "fps_embedding.safetensors"
FPS_META = "fps_embedding.json"
FPS_FORMAT = "t2vturbo-fps-embedding"

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."

#: the VC2 training schedule (configs/inference_t2v_512_v2.0.yaml: linear_start / linear_end, "linear" = scaled)
SCHEDULER_CONFIG = DDIM_SCHEDULER_CONFIG


# --------------------------------------------------------------------------------------------------------------
# fps embedding


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos, sin] embedding of ``values`` (lvdm ``timestep_embedding``; diffusers flip_sin_to_cos, shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class FPSEmbedding(nn.Module):
    """VC2's frame-rate conditioning: MLP(sinusoid(fps)) added to the UNet's time embedding.

    ``current_fps`` is set by :func:`t2vturbo.models.call_unet` before each forward (an int, or a tensor with one
    value per batch item); ``None`` means ``default_fps``.
    """

    def __init__(self, channels: int, time_embed_dim: int, default_fps: int = DEFAULT_FPS):
        super().__init__()
        self.channels = channels
        self.linear_1 = nn.Linear(channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)
        self.default_fps = int(default_fps)
        self.current_fps: torch.Tensor | int | None = None
        self._hook = None

    def forward(self, fps: torch.Tensor) -> torch.Tensor:
        """fps (B,) -> (B, time_embed_dim)."""
        emb = sinusoidal_embedding(fps, self.channels).to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(emb)))

    def fps_for_batch(self, batch: int, device: torch.device) -> torch.Tensor:
        fps = self.default_fps if self.current_fps is None else self.current_fps
        fps = torch.as_tensor(fps, device=device).reshape(-1)
        if fps.numel() == 1:
            return fps.expand(batch)
        if fps.numel() != batch:
            raise ValueError(f"fps has {fps.numel()} values for a batch of {batch}")
        return fps

    def add_to_time_embedding(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on ``unet.time_embedding``: emb + fps_embedding(fps)."""
        return output + self(self.fps_for_batch(output.shape[0], output.device)).to(output.dtype)

    def config(self) -> dict:
        return {"format": FPS_FORMAT, "version": 1, "channels": self.channels,
                "time_embed_dim": self.linear_1.out_features, "default_fps": self.default_fps}


def attach_fps_embedding(unet: nn.Module, fps: FPSEmbedding) -> FPSEmbedding:
    """Attach ``fps`` as ``unet.fps_embedding`` and hook it onto ``unet.time_embedding`` (replacing an old one)."""
    old = getattr(unet, "fps_embedding", None)
    if isinstance(old, FPSEmbedding) and old._hook is not None:
        old._hook.remove()
        old._hook = None
    unet.fps_embedding = fps
    fps._hook = unet.time_embedding.register_forward_hook(fps.add_to_time_embedding)
    return fps


def save_fps_embedding(fps: FPSEmbedding, unet_dir: str | Path) -> None:
    """Write ``fps_embedding.safetensors`` + ``fps_embedding.json`` into ``unet_dir`` (beside the UNet)."""
    from safetensors.torch import save_file

    unet_dir = Path(unet_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in fps.state_dict().items()}
    save_file(state, str(unet_dir / FPS_FILE), metadata={"format": FPS_FORMAT})
    (unet_dir / FPS_META).write_text(json.dumps(fps.config(), indent=2) + "\n")


def load_fps_embedding(unet: nn.Module, unet_dir: str | Path) -> bool:
    """If ``unet_dir`` holds a saved fps embedding, attach it to ``unet`` and return True; else return False."""
    unet_dir = Path(unet_dir)
    wfile = unet_dir / FPS_FILE
    if not wfile.is_file():
        return False
    meta_file = unet_dir / FPS_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    state = load_weights(wfile)
    try:
        channels = int(meta.get("channels", state["linear_1.weight"].shape[1]))
        dim = int(meta.get("time_embed_dim", state["linear_1.weight"].shape[0]))
    except KeyError:
        raise CheckpointError(f"{wfile} is not an fps embedding (no linear_1.weight); convert the model again "
                              "with `t2vturbo convert vc2`") from None
    fps = FPSEmbedding(channels, dim, int(meta.get("default_fps", DEFAULT_FPS)))
    try:
        fps.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{wfile} does not fit the fps embedding: {str(err).splitlines()[0]}") from None
    param = next(unet.parameters())
    attach_fps_embedding(unet, fps.to(device=param.device, dtype=param.dtype))
    return True


# --------------------------------------------------------------------------------------------------------------
# UNet: lvdm names -> diffusers names


@dataclass(frozen=True)
class UNetLayout:
    """What the lvdm -> diffusers name mapping needs to know about the block structure."""

    levels: int = 4
    layers_per_block: int = 2
    #: spatial + temporal attention at each down level (VC2: all but the deepest)
    attention: tuple[bool, ...] = (True, True, True, False)
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)

    def up_attention(self, level: int) -> bool:
        return self.attention[self.levels - 1 - level]


VC2_LAYOUT = UNetLayout()

_RESNET_PARTS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
}
_EMBED_PARTS = {"0": "linear_1", "2": "linear_2"}


def _resnet_key(prefix: str, pos: int, rest: list[str]) -> str:
    if rest[0] == "temopral_conv":  # (sic) the lvdm spelling
        return f"{prefix}.temp_convs.{pos}." + ".".join(rest[1:])
    if rest[0] == "skip_connection":
        return f"{prefix}.resnets.{pos}.conv_shortcut." + ".".join(rest[1:])
    part = _RESNET_PARTS[".".join(rest[:2])]
    return f"{prefix}.resnets.{pos}.{part}." + ".".join(rest[2:])


def _block_key(prefix: str, pos: int, sub: int, rest: list[str], attention: bool) -> str:
    if sub == 0:
        return _resnet_key(prefix, pos, rest)
    if attention and sub == 1:
        return f"{prefix}.attentions.{pos}." + ".".join(rest)
    if attention and sub == 2:
        return f"{prefix}.temp_attentions.{pos}." + ".".join(rest)
    raise KeyError


def lvdm_to_diffusers_key(key: str, layout: UNetLayout = VC2_LAYOUT) -> str:
    """Map one lvdm UNet key (no ``model.diffusion_model.`` prefix) to its diffusers name (FORMATS §4).

    The fps embedding maps to ``fps_embedding.linear_{1,2}``; ``time_cond_proj`` to ``time_embedding.cond_proj``.

    Raises:
        KeyError: the key has no place in a VC2 UNet of this layout.
    """
    p = key.split(".")
    head, per = p[0], layout.layers_per_block + 1
    if head in ("time_embed", "fps_embedding"):
        return ("time_embedding." if head == "time_embed" else "fps_embedding.") + _EMBED_PARTS[p[1]] + "." + ".".join(p[2:])
    if head == "time_cond_proj":
        return "time_embedding.cond_proj." + ".".join(p[1:])
    if head == "init_attn" and p[1] == "0":
        return "transformer_in." + ".".join(p[2:])
    if head == "out":
        return {"0": "conv_norm_out", "2": "conv_out"}[p[1]] + "." + ".".join(p[2:])
    if head == "input_blocks":
        i, sub, rest = int(p[1]), int(p[2]), p[3:]
        if i == 0 and sub == 0:
            return "conv_in." + ".".join(rest)
        level, pos = divmod(i - 1, per)
        if level >= layout.levels:
            raise KeyError(key)
        prefix = f"down_blocks.{level}"
        if pos == layout.layers_per_block:
            if sub == 0 and rest[0] == "op" and level < layout.levels - 1:
                return f"{prefix}.downsamplers.0.conv." + ".".join(rest[1:])
            raise KeyError(key)
        return _block_key(prefix, pos, sub, rest, layout.attention[level])
    if head == "middle_block":
        sub, rest = int(p[1]), p[2:]
        if sub in (0, 3):
            return _resnet_key("mid_block", sub // 3, rest)
        return _block_key("mid_block", 0, sub, rest, True)
    if head == "output_blocks":
        i, sub, rest = int(p[1]), int(p[2]), p[3:]
        level, pos = divmod(i, per)
        if level >= layout.levels:
            raise KeyError(key)
        attention = layout.up_attention(level)
        upsampler_sub = 3 if attention else 1
        if sub == upsampler_sub and pos == layout.layers_per_block and level < layout.levels - 1 and rest[0] == "conv":
            return f"up_blocks.{level}.upsamplers.0.conv." + ".".join(rest[1:])
        return _block_key(f"up_blocks.{level}", pos, sub, rest, attention)
    raise KeyError(key)


def infer_unet_layout(state: dict[str, torch.Tensor]) -> tuple[UNetLayout, dict, int | None]:
    """Derive (layout, diffusers UNet3DConditionModel config, fps channels or None) from lvdm key shapes.

    Works for any width (e.g. the small test model, channel_mult [1,1,1,2], width 32) as for the real VC2.
    """
    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"not a VideoCrafter2 UNet: key {key} is missing; pass the original VC2 model.ckpt")
        return state[key]

    inputs = {int(k.split(".")[1]) for k in state if k.startswith("input_blocks.")}
    downs = sorted(i for i in inputs if f"input_blocks.{i}.0.op.weight" in state)
    levels = len(downs) + 1
    if not inputs or len(inputs) % levels:
        raise CheckpointError(f"not a VideoCrafter2 UNet: {len(inputs)} input blocks do not form {levels} levels")
    per = len(inputs) // levels
    nrb = per - 1
    attention = tuple(f"input_blocks.{1 + lv * per}.1.proj_in.weight" in state for lv in range(levels))
    widths = [int(need(f"input_blocks.{1 + lv * per}.0.out_layers.3.weight").shape[0]) for lv in range(levels)]
    conv_in = need("input_blocks.0.0.weight")
    head_dim = int(need("init_attn.0.proj_in.weight").shape[0]) // 8  # init_attn: 8 heads of num_head_channels
    cross_dim = int(need("middle_block.1.transformer_blocks.0.attn2.to_k.weight").shape[1])
    cond = state.get("time_cond_proj.weight")
    config = dict(
        sample_size=64,
        in_channels=int(conv_in.shape[1]),
        out_channels=int(need("out.2.weight").shape[0]),
        down_block_types=tuple("CrossAttnDownBlock3D" if a else "DownBlock3D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(attention)),
        block_out_channels=tuple(widths),
        layers_per_block=nrb,
        norm_num_groups=32,
        cross_attention_dim=cross_dim,
        attention_head_dim=head_dim,
        time_cond_proj_dim=int(cond.shape[1]) if cond is not None else None,
    )
    fps_w = state.get("fps_embedding.0.weight")
    return UNetLayout(levels, nrb, attention, tuple(widths)), config, (int(fps_w.shape[1]) if fps_w is not None else None)


def _adapt(key: str, value: torch.Tensor, target_shape: torch.Size) -> torch.Tensor:
    # init_attn's proj_in/proj_out are Conv1d (kernel 1) in lvdm, Linear in diffusers.
    if value.dim() == 3 and len(target_shape) == 2 and value.shape[-1] == 1:
        return value[..., 0]
    return value


def rename_checked(state: dict[str, torch.Tensor], target: dict[str, torch.Size], mapper, what: str,
                   ignore: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Rename every key of ``state`` with ``mapper`` and check it against ``target`` (name -> shape).

    Every source key must map to a target key of the same shape, and every target key must be produced.
    Keys in ``ignore`` are dropped. Raises CheckpointError naming the first bad key.
    """
    ignore = set(ignore)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in ignore:
            continue
        try:
            new = mapper(key)
        except (KeyError, ValueError, IndexError):
            raise CheckpointError(f"{what}: unexpected key {key} (no place in the converted model); "
                                  "is this the original VideoCrafter2 model.ckpt?") from None
        if new not in target:
            raise CheckpointError(f"{what}: key {key} maps to {new}, which the converted model does not have")
        value = _adapt(key, value, target[new])
        if tuple(value.shape) != tuple(target[new]):
            raise CheckpointError(f"{what}: key {key} has shape {tuple(value.shape)}, expected {tuple(target[new])} "
                                  f"(for {new})")
        if new in out:
            raise CheckpointError(f"{what}: key {key} maps onto {new} a second time")
        out[new] = value
    missing = [k for k in target if k not in out]
    if missing:
        raise CheckpointError(f"{what}: checkpoint lacks the weight for {missing[0]} ({len(missing)} missing)")
    return out


def _materialise(module: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """Load ``state`` strictly into a module built on the meta device (no random init of 1.4e9 params)."""
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in module.parameters()) or any(t.is_meta for t in module.buffers()):
        raise CheckpointError("internal error: converted model still has unloaded tensors")
    return module


def build_vc2_unet(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32, device: str = "cpu",
                   default_fps: int = DEFAULT_FPS) -> nn.Module:
    """Build the diffusers UNet (+ fps embedding) from an lvdm UNet state dict (keys without prefix).

    ``device="meta"`` checks names and shapes only (no data; for tests on the full-size key list).
    """
    from diffusers import UNet3DConditionModel

    layout, config, fps_channels = infer_unet_layout(state)
    with torch.device("meta"):
        unet = UNet3DConditionModel(**config)
        if fps_channels is not None:
            attach_fps_embedding(unet, FPSEmbedding(fps_channels, unet.time_embedding.linear_1.out_features,
                                                    default_fps))
    target = {k: v.shape for k, v in unet.state_dict().items()}
    renamed = rename_checked(state, target, lambda k: lvdm_to_diffusers_key(k, layout), "VideoCrafter2 UNet")
    if device == "meta":
        return unet
    return _materialise(unet, renamed, dtype)


# --------------------------------------------------------------------------------------------------------------
# VAE: LDM names -> diffusers AutoencoderKL


def _vae_resnet(prefix: str, rest: list[str]) -> str:
    part = {"nin_shortcut": "conv_shortcut"}.get(rest[0], rest[0])
    return f"{prefix}.{part}." + ".".join(rest[1:])


_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def ldm_vae_to_diffusers_key(key: str, levels: int) -> str:
    """Map one LDM VAE key (no ``first_stage_model.`` prefix) to its diffusers AutoencoderKL name."""
    p = key.split(".")
    if p[0] in ("quant_conv", "post_quant_conv"):
        return key
    side = p[0]
    if side not in ("encoder", "decoder"):
        raise KeyError(key)
    q = p[1:]
    if q[0] in ("conv_in", "conv_out"):
        return f"{side}.{q[0]}." + ".".join(q[1:])
    if q[0] == "norm_out":
        return f"{side}.conv_norm_out." + ".".join(q[1:])
    if q[0] == "mid":
        if q[1] in ("block_1", "block_2"):
            return _vae_resnet(f"{side}.mid_block.resnets.{int(q[1][-1]) - 1}", q[2:])
        if q[1] == "attn_1":
            return f"{side}.mid_block.attentions.0.{_VAE_ATTN[q[2]]}." + ".".join(q[3:])
        raise KeyError(key)
    if side == "encoder" and q[0] == "down":
        lv = int(q[1])
        if q[2] == "block":
            return _vae_resnet(f"encoder.down_blocks.{lv}.resnets.{int(q[3])}", q[4:])
        if q[2] == "downsample":
            return f"encoder.down_blocks.{lv}.downsamplers.0." + ".".join(q[3:])
    if side == "decoder" and q[0] == "up":
        lv = levels - 1 - int(q[1])  # diffusers orders decoder levels from the deepest
        if q[2] == "block":
            return _vae_resnet(f"decoder.up_blocks.{lv}.resnets.{int(q[3])}", q[4:])
        if q[2] == "upsample":
            return f"decoder.up_blocks.{lv}.upsamplers.0." + ".".join(q[3:])
    raise KeyError(key)


def build_vae(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> nn.Module:
    """diffusers AutoencoderKL from an LDM ``first_stage_model`` state dict (keys without prefix)."""
    from diffusers import AutoencoderKL

    if "encoder.conv_in.weight" not in state or "quant_conv.weight" not in state:
        raise CheckpointError("model.ckpt has no VAE (first_stage_model.encoder.conv_in / quant_conv); "
                              "pass the original VideoCrafter2 model.ckpt")
    levels = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down."))
    widths = [int(state[f"encoder.down.{lv}.block.0.conv2.weight"].shape[0]) for lv in range(levels)]
    nrb = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("encoder.down.0.block."))
    config = dict(
        in_channels=int(state["encoder.conv_in.weight"].shape[1]),
        out_channels=int(state["decoder.conv_out.weight"].shape[0]),
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(widths),
        layers_per_block=nrb,
        latent_channels=int(state["post_quant_conv.weight"].shape[0]),
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    target = {k: v.shape for k, v in vae.state_dict().items()}

    def adapt(key: str) -> str:
        return ldm_vae_to_diffusers_key(key, levels)

    # mid-block attention q/k/v/proj_out are 1x1 convs in LDM, Linear in diffusers
    squeezed = {k: (v[:, :, 0, 0] if v.dim() == 4 and ".attn_1." in k and not k.endswith("norm.weight") else v)
                for k, v in state.items()}
    renamed = rename_checked(squeezed, target, adapt, "VideoCrafter2 VAE")
    return _materialise(vae, renamed, dtype)


# --------------------------------------------------------------------------------------------------------------
# text encoder: open_clip ViT-H-14 text tower -> transformers CLIPTextModel (penultimate layer)

#: keys of the open_clip text tower that the "penultimate" encoder does not use
_TEXT_UNUSED = ("text_projection", "logit_scale", "attn_mask")


def open_clip_to_hf_text(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename an open_clip text tower (keys without prefix) to CLIPTextModel keys, first ``num_layers`` blocks."""
    out: dict[str, torch.Tensor] = {}
    simple = {
        "token_embedding.weight": "embeddings.token_embedding.weight",
        "positional_embedding": "embeddings.position_embedding.weight",
        "ln_final.weight": "final_layer_norm.weight",
        "ln_final.bias": "final_layer_norm.bias",
    }
    parts = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    for key, value in state.items():
        if key in simple:
            out[simple[key]] = value
            continue
        if key in _TEXT_UNUSED:
            continue
        p = key.split(".")
        if p[:2] != ["transformer", "resblocks"]:
            raise CheckpointError(f"VideoCrafter2 text encoder: unexpected key cond_stage_model.model.{key}")
        i, rest = int(p[2]), ".".join(p[3:])
        if i >= num_layers:
            continue  # the last block is not used ("penultimate" layer)
        pre = f"encoder.layers.{i}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[1]
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"{pre}self_attn.{name}.{kind}"] = chunk
            continue
        base, _, leaf = rest.rpartition(".")
        if base not in parts:
            raise CheckpointError(f"VideoCrafter2 text encoder: unexpected key cond_stage_model.model.{key}")
        out[f"{pre}{parts[base]}.{leaf}"] = value
    return out


def build_text_encoder(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                       num_heads: int | None = None, skip_last: int = 1) -> nn.Module:
    """CLIPTextModel equal to open_clip's text tower run up to its penultimate block, then ln_final.

    Args:
        state: the ``cond_stage_model.model.*`` keys without prefix.
        num_heads: attention heads (default width // 64, as ViT-H-14: 16).
        skip_last: blocks dropped at the end (VC2: 1, the "penultimate" layer).
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    if "token_embedding.weight" not in state:
        raise CheckpointError("model.ckpt has no text encoder (cond_stage_model.model.token_embedding); "
                              "pass the original VideoCrafter2 model.ckpt")
    vocab, width = state["token_embedding.weight"].shape
    blocks = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks."))
    layers = blocks - skip_last
    config = CLIPTextConfig(
        vocab_size=int(vocab), hidden_size=int(width), num_hidden_layers=layers,
        num_attention_heads=num_heads or max(1, int(width) // 64),
        intermediate_size=int(state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        max_position_embeddings=int(state["positional_embedding"].shape[0]),
        hidden_act="gelu", layer_norm_eps=1e-5,
        projection_dim=int(state["text_projection"].shape[1]) if "text_projection" in state else int(width),
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    )
    model = CLIPTextModel(config)  # small buffers (position_ids) are built here; weights come from the checkpoint
    target = {k: v.shape for k, v in model.state_dict().items()}
    renamed = open_clip_to_hf_text(state, layers)
    checked = rename_checked(renamed, target, lambda k: k, "VideoCrafter2 text encoder")
    model.load_state_dict({k: v.to(dtype) for k, v in checked.items()}, strict=True)
    return model.to(dtype)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (the BPE alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return {b: table[b] for b in keep + [b for b in range(256) if b not in keep]}


def open_clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of open_clip's tokenizer, read from open_clip's packaged BPE file."""
    import open_clip

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not bpe.is_file():
        raise CheckpointError(f"open_clip's BPE vocabulary is missing ({bpe}); reinstall open-clip-torch")
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_clip_tokenizer(max_length: int = 77):
    """transformers CLIPTokenizer equal to open_clip's: lower-case BPE, sot/eot, padded with 0 ("!") to 77."""
    from transformers import CLIPTokenizer

    vocab, merges = open_clip_bpe()
    return CLIPTokenizer(vocab=vocab, merges=list(merges), pad_token="!",
                         model_max_length=max_length)


# --------------------------------------------------------------------------------------------------------------
# whole checkpoint


def _split_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def convert_vc2_state(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                      default_fps: int = DEFAULT_FPS, text_heads: int | None = None) -> TeacherParts:
    """Convert a VideoCrafter2 ``state_dict`` (UNet, VAE, text tower, schedule buffers) to TeacherParts."""
    known = (UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)
    extra = [k for k in state if not k.startswith(known) and "." in k]
    if extra:
        raise CheckpointError(f"VideoCrafter2 checkpoint: unexpected key {extra[0]}; pass the original model.ckpt")
    unet = build_vc2_unet(_split_prefix(state, UNET_PREFIX), dtype=dtype, default_fps=default_fps)
    vae = build_vae(_split_prefix(state, VAE_PREFIX), dtype=dtype)
    text_encoder = build_text_encoder(_split_prefix(state, TEXT_PREFIX), dtype=dtype, num_heads=text_heads)
    tokenizer = build_clip_tokenizer(int(text_encoder.config.max_position_embeddings))
    if "alphas_cumprod" in state:  # the schedule buffers saved with the model (float64 maths, float32 storage)
        alphas_cumprod = state["alphas_cumprod"].float().clone()
    else:
        alphas_cumprod = scaled_linear_alphas_cumprod()
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    return TeacherParts(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        alphas_cumprod=alphas_cumprod, name="videocrafter2", vae_scale=0.18215,
                        default_fps=default_fps if hasattr(unet, "fps_embedding") else None)


def read_vc2_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an original VC2 ``model.ckpt`` (weights only: a pickle that runs code is refused)."""
    ckpt = load_torch_file(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not any(str(k).startswith(UNET_PREFIX) for k in state):
        raise CheckpointError(f"{path} is not a VideoCrafter2 model.ckpt (no state_dict with {UNET_PREFIX}* keys)")
    return state


def convert_vc2_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32, default_fps: int = DEFAULT_FPS,
                           text_heads: int | None = None) -> TeacherParts:
    """Read the original VideoCrafter2 ``model.ckpt`` and convert it to TeacherParts (checked key by key).

    Args:
        path: the original ``model.ckpt`` (``{"state_dict": ...}``, FORMATS §4).
        dtype: dtype of the converted weights.
        default_fps: fps used when the caller gives none (VC2: 16).
        text_heads: text-encoder heads (default width // 64; only small test models need it).
    """
    return convert_vc2_state(read_vc2_state(path), dtype, default_fps, text_heads)


def save_converted(parts: TeacherParts, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Atomically write a diffusers-layout folder (unet/ + fps embedding, vae/, text_encoder/, tokenizer/,
    scheduler/) that :func:`t2vturbo.models.load_teacher` loads.

    Args:
        dtype: save the weights in this dtype (default: as they are).
    """
    out_dir = Path(out_dir)
    unet = parts.unet
    fps = getattr(unet, "fps_embedding", None)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if dtype is not None:
            parts.to(dtype=dtype)
        if fps is not None:
            del unet._modules["fps_embedding"]  # saved on its own, beside the stock diffusers UNet
        try:
            unet.save_pretrained(tmp / "unet", safe_serialization=True)
        finally:
            if fps is not None:
                unet._modules["fps_embedding"] = fps
        if fps is not None:
            save_fps_embedding(fps, tmp / "unet")
        parts.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        parts.text_encoder.save_pretrained(tmp / "text_encoder")
        parts.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2) + "\n")
        (tmp / "model_index.json").write_text(json.dumps({
            "_class_name": "TextToVideoSDPipeline",
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet3DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "t2vturbo": {"source": "videocrafter2", "default_fps": parts.default_fps},
        }, indent=2) + "\n")
    return out_dir


# --------------------------------------------------------------------------------------------------------------
# official T2V-Turbo (VC2) LoRA: module order


def _lvdm_resblock(name: str, skip: bool) -> list[str]:
    mods = [f"{name}.in_layers.2", f"{name}.emb_layers.1", f"{name}.out_layers.3"]
    if skip:
        mods.append(f"{name}.skip_connection")
    return mods + [f"{name}.temopral_conv.conv1.2"] + [f"{name}.temopral_conv.conv{j}.3" for j in (2, 3, 4)]


def _lvdm_transformer(name: str, proj: bool = True) -> list[str]:
    block = f"{name}.transformer_blocks.0"
    attn = lambda a: [f"{block}.{a}.to_q", f"{block}.{a}.to_k", f"{block}.{a}.to_v", f"{block}.{a}.to_out.0"]  # noqa: E731
    inner = attn("attn1") + [f"{block}.ff.net.0.proj", f"{block}.ff.net.2"] + attn("attn2")
    return [f"{name}.proj_in", *inner, f"{name}.proj_out"] if proj else inner


def lvdm_lora_module_order(layout: UNetLayout = VC2_LAYOUT, fps: bool = True, time_cond_proj: bool = True) -> list[str]:
    """lvdm names of every Linear / Conv2d / Conv3d of the VC2 UNet in ``named_modules()`` order: the order of
    the official ``unet_lora.pt`` pairs (FORMATS §5). init_attn's proj_in/proj_out are Conv1d, so not included."""
    per, widths = layout.layers_per_block + 1, layout.block_out_channels
    mods = ["time_embed.0", "time_embed.2"]
    mods += ["fps_embedding.0", "fps_embedding.2"] if fps else []
    mods += ["time_cond_proj"] if time_cond_proj else []
    mods.append("input_blocks.0.0")
    for lv in range(layout.levels):
        for pos in range(layout.layers_per_block):
            i = 1 + lv * per + pos
            skip = pos == 0 and lv > 0 and widths[lv] != widths[lv - 1]
            mods += _lvdm_resblock(f"input_blocks.{i}.0", skip)
            if layout.attention[lv]:
                mods += _lvdm_transformer(f"input_blocks.{i}.1") + _lvdm_transformer(f"input_blocks.{i}.2")
        if lv < layout.levels - 1:
            mods.append(f"input_blocks.{1 + lv * per + layout.layers_per_block}.0.op")
    mods += _lvdm_transformer("init_attn.0", proj=False)
    mods += _lvdm_resblock("middle_block.0", False)
    mods += _lvdm_transformer("middle_block.1") + _lvdm_transformer("middle_block.2")
    mods += _lvdm_resblock("middle_block.3", False)
    for lv in range(layout.levels):
        attention = layout.up_attention(lv)
        for pos in range(per):
            i = lv * per + pos
            mods += _lvdm_resblock(f"output_blocks.{i}.0", True)
            if attention:
                mods += _lvdm_transformer(f"output_blocks.{i}.1") + _lvdm_transformer(f"output_blocks.{i}.2")
            if pos == layout.layers_per_block and lv < layout.levels - 1:
                mods.append(f"output_blocks.{i}.{3 if attention else 1}.conv")
    mods.append("out.2")
    return mods


def vc2_lora_module_names(layout: UNetLayout = VC2_LAYOUT, fps: bool = True, time_cond_proj: bool = True,
                          lvdm_names: Iterable[str] | None = None) -> list[str]:
    """Diffusers module names (of the converted UNet) in the order of the official VC2 ``unet_lora.pt``.

    ``fps_embedding.linear_{1,2}`` name our fps embedding and ``time_embedding.cond_proj`` the guidance
    projection; all other names are modules of the stock UNet3DConditionModel.

    Args:
        layout: the UNet's block layout (:func:`layout_of` for a converted UNet; default: full-size VC2).
        lvdm_names: an explicit lvdm order (default: :func:`lvdm_lora_module_order`).
    """
    names = list(lvdm_names) if lvdm_names is not None else lvdm_lora_module_order(layout, fps, time_cond_proj)
    out = []
    for name in names:
        try:
            out.append(lvdm_to_diffusers_key(name + ".weight", layout)[: -len(".weight")])
        except (KeyError, ValueError, IndexError):
            raise CheckpointError(f"official VC2 LoRA: module {name} has no place in the converted UNet") from None
    return out


def layout_of(unet: nn.Module) -> UNetLayout:
    """The :class:`UNetLayout` of a diffusers UNet3DConditionModel (from its config)."""
    cfg = unet.config
    return UNetLayout(len(cfg.block_out_channels), int(cfg.layers_per_block),
                      tuple("CrossAttn" in t for t in cfg.down_block_types), tuple(cfg.block_out_channels))
