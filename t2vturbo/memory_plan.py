"""How much memory a distillation run needs per process, before it starts (``t2vturbo distill RECIPE --dry-run``).

Everything is counted, not guessed: the teacher is built on the meta device from its real configuration (its
folder's ``config.json`` files, or, for the hub ids below when they are not downloaded, the configuration those
repositories publish), turned into the recipe's student by the same :func:`make_student` a run uses, and one
student forward at the recipe's clip shape runs on the meta device with a saved-tensor hook that adds up what
autograd keeps for the backward (each storage once). Nothing is allocated and nothing is downloaded.

Per process and per parallelism:

- DDP: every rank holds the whole network, the adapter's gradients and AdamW's two states, and a gradient
  bucket as large as the gradients;
- FSDP over ``world`` ranks: the network, gradients and optimiser states divided by ``world``, plus the gathered
  full weights of the largest unit (a block) twice (the one running and the one prefetched);
- FSDP + CPU offload: the shards, gradients and optimiser states in CPU memory; the GPU holds the gathered units.

A full fine-tune (``train.full_finetune``) trains every parameter of the network (fp32 weights, gradients and
AdamW states for all of it) and holds a frozen copy of the original network (model.dtype) for the teacher's
passes, sharded by FSDP like the rest.

The VAE, the text encoder (none with ``train.cache_text`` or prepared latents) and the rewards (frozen, whole on
every rank) come on top, with the activations of one student forward (attention counted as a fused GPU kernel
keeps it: q, k, v, output, log-sum-exp). Not counted: the reward branch's decode and
reward forward (with ``train.reward_checkpointing`` it keeps only the decoded frames), the teacher's no-grad
passes (freed layer by layer), the CUDA context and the allocator's slack: a GPU "fits" when the total is at most
90% of its memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, MissingWeightError

GIB = 2**30
#: GPUs by memory (GiB as sold), for "smallest GPU that fits"
GPUS = [(24, "24 GB (L4, RTX 4090)"), (40, "40 GB (A100-40G)"), (48, "48 GB (L40S, A6000)"),
        (80, "80 GB (A100-80G, H100)"), (141, "141 GB (H200)"), (192, "192 GB (B200)")]
USABLE = 0.9

#: the frozen reward models' parameter counts (built from their architectures: open_clip ViT-H-14 for the
#: HPS/CLIP/PickScore family, t2vturbo.rewards.viclip / internvideo2 at their default, full-size configs;
#: tests/test_memory_plan.py rebuilds the ones that build on the meta device)
REWARD_PARAMS = {"hpsv2": 986_109_441, "hpsv2.1": 986_109_441, "clip": 986_109_441, "pickscore": 986_109_441,
                 "viclip": 427_590_145, "internvideo2": 1_292_738_304,
                 # Qwen2-VL-2B and -7B with their reward heads (t2vturbo.rewards.videoreward / hpsv3, full-size
                 # configs built on the meta device: tests/test_videoreward.py)
                 "videoreward": 2_208_563_200, "hpsv3": 7_748_610_610}

_SD_VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
           "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
           "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32, "sample_size": 512}
_OPENCLIP_H_TEXT = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                    "num_attention_heads": 16, "max_position_embeddings": 77, "vocab_size": 49408,
                    "hidden_act": "gelu"}
_UMT5_XXL = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
             "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
             "relative_attention_max_distance": 128, "tie_word_embeddings": False}
_WAN_13B = {"patch_size": [1, 2, 2], "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
            "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
            "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024}
_WAN_14B = {**_WAN_13B, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
#: the published configurations of the models users distil, for planning before they are downloaded
#: (ModelScope's is diffusers' default UNet3DConditionModel; VideoCrafter2 as `t2vturbo convert vc2` writes it)
KNOWN = {
    "ali-vilab/text-to-video-ms-1.7b": {"family": "unet3d", "unet": {}, "vae": _SD_VAE, "text": _OPENCLIP_H_TEXT},
    "videocrafter2": {"family": "unet3d", "unet": {"time_cond_proj_dim": 256}, "vae": _SD_VAE,
                      "text": _OPENCLIP_H_TEXT, "fps": True},
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": {"family": "wan", "transformer": _WAN_13B, "vae": {}, "text": _UMT5_XXL},
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": {"family": "wan", "vae": {}, "text": _UMT5_XXL, "transformer": {
        **_WAN_13B, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}},
    # Wan2.2 (teachers/wan22.py): two 14 B experts with the 2.1 VAE; the TI2V-5B with the 48-channel Wan2.2 VAE
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers": {"family": "wan2.2", "vae": {}, "text": _UMT5_XXL, "boundary_ratio": 0.875,
                                         "transformer": _WAN_14B, "transformer_2": _WAN_14B},
    "Wan-AI/Wan2.2-TI2V-5B-Diffusers": {"family": "wan2.2", "text": _UMT5_XXL, "expand_timesteps": True,
                                        "transformer": {**_WAN_13B, "num_attention_heads": 24, "in_channels": 48,
                                                        "out_channels": 48, "ffn_dim": 14336},
                                        "vae": {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48,
                                                "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "in_channels": 12,
                                                "out_channels": 12, "is_residual": True, "patch_size": 2,
                                                "scale_factor_spatial": 16, "scale_factor_temporal": 4,
                                                "temperal_downsample": [False, True, True],
                                                # (its statistics play no part in the count)
                                                "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48}},
}


def _numel(module: nn.Module | None, trainable: bool | None = None) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def _bytes(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() * p.element_size() for p in module.parameters())


def _folder_config(root: Path, sub: str) -> dict:
    return json.loads((root / sub / "config.json").read_text())


def meta_teacher(spec: str, dtype: torch.dtype = torch.float32):
    """The teacher ``spec`` names, on the meta device (no weights read): tiny models are loaded and moved; a
    folder or cached hub id is built from its config files; a known hub id from its published configuration."""
    from diffusers import AutoencoderKL, AutoencoderKLWan, UNet3DConditionModel, WanTransformer3DModel

    from .schedules import FlowSchedule, VPSchedule
    from .teachers import UNet3DTeacher
    from .teachers.loading import family_of
    from .teachers.wan import WanTeacher, is_wan_spec

    if spec in ("tiny", "tiny-wan", "tiny-wan22", "tiny-wan22-5b"):
        from .teachers import load_teacher

        return load_teacher(spec).to(device="meta", dtype=dtype)
    known = KNOWN.get(spec)
    root = None
    if known is None:
        from .hub import resolve_pretrained_dir

        try:
            root = Path(resolve_pretrained_dir(spec, "config.json files", "model.teacher"))
        except MissingWeightError:
            raise ConfigError(f"the memory plan needs {spec}'s configuration: download its config files (hf "
                              f"download {spec} --include '*.json') or plan with one of {', '.join(KNOWN)}") from None
    wan22 = (known or {}).get("family") == "wan2.2" if known else family_of(spec).name == "wan2.2"
    wan = (known or {}).get("family") == "wan" if known else is_wan_spec(spec)
    if known is None and family_of(spec).name not in ("wan", "wan2.2", "unet3d"):
        raise ConfigError(f"the memory plan cannot build {spec} on the meta device (family {family_of(spec).name})")
    with torch.device("meta"):
        if wan22:  # both experts (A14B) or one transformer with per-token timesteps (TI2V-5B)
            from transformers import UMT5Config, UMT5EncoderModel

            from .teachers.wan22 import Wan22Teacher, read_model_index

            index = known or read_model_index(root)

            def config(sub: str) -> dict:
                return known[sub] if known else _folder_config(root, "text_encoder" if sub == "text" else sub)

            two = "transformer_2" in known if known else (root / "transformer_2").is_dir()
            teacher = Wan22Teacher(transformer=WanTransformer3DModel.from_config(config("transformer")),
                                   transformer_2=WanTransformer3DModel.from_config(config("transformer_2"))
                                   if two else None, boundary_ratio=index.get("boundary_ratio"),
                                   expand_timesteps=bool(index.get("expand_timesteps")),
                                   vae=AutoencoderKLWan.from_config(config("vae")),
                                   text_encoder=UMT5EncoderModel(UMT5Config(**config("text"))), tokenizer=None,
                                   schedule=FlowSchedule(), name=spec)
        elif wan:
            from transformers import UMT5Config, UMT5EncoderModel

            tcfg = known["transformer"] if known else _folder_config(root, "transformer")
            vcfg = known["vae"] if known else _folder_config(root, "vae")
            text = UMT5EncoderModel(UMT5Config(**(known["text"] if known else _folder_config(root, "text_encoder"))))
            teacher = WanTeacher(transformer=WanTransformer3DModel.from_config(tcfg),
                                 vae=AutoencoderKLWan.from_config(vcfg), text_encoder=text, tokenizer=None,
                                 schedule=FlowSchedule(), name=spec)
        else:
            from transformers import CLIPTextConfig, CLIPTextModel

            ucfg = known["unet"] if known else _folder_config(root, "unet")
            unet = UNet3DConditionModel.from_config(ucfg)
            default_fps = None
            if (known or {}).get("fps") or (root is not None and (root / "unet" / "fps_embedding.json").is_file()):
                from .teachers.fps import FPSEmbedding, attach_fps_embedding

                channels = int(unet.config.block_out_channels[0])
                attach_fps_embedding(unet, FPSEmbedding(channels, channels * 4))
                default_fps = 8
            text = CLIPTextModel(CLIPTextConfig(**(known["text"] if known else _folder_config(root, "text_encoder"))))
            teacher = UNet3DTeacher(unet=unet, vae=AutoencoderKL.from_config(known["vae"] if known else
                                                                             _folder_config(root, "vae")),
                                    text_encoder=text, tokenizer=None, schedule=VPSchedule.standard(), name=spec,
                                    default_fps=default_fps)
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # (its notice on casting modules it keeps in float32: counted as cast)
    try:
        return teacher.to(dtype=dtype)
    finally:
        diffusers_logging.set_verbosity(level)


@dataclass
class Counted:
    """What the plan counts of a recipe (bytes unless named otherwise)."""

    frozen: int  # the network's frozen weights
    frozen_params: int
    trainable_params: int
    trainable: int  # their bytes (fp32)
    optimiser: int
    ema: int
    vae: int
    text: int
    rewards: int
    largest_unit: int  # the largest FSDP unit's weights, gathered
    activations: int  # what one student forward keeps for its backward (per process)
    notes: list[str] = field(default_factory=list)
    teacher_copy: int = 0  # a full fine-tune's frozen copy of the network (the teacher's passes)


class _FusedAttention(torch.autograd.Function):
    """Stands in for ``scaled_dot_product_attention`` while counting: it keeps what a fused GPU kernel (flash /
    memory-efficient attention) keeps for its backward, q, k, v, the output and the log-sum-exp, not the
    attention matrix that the meta device's reference path would (tokens x tokens per head)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - the count never runs a backward
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


def _fused_attention(query, key, value, *args, **kwargs):
    return _FusedAttention.apply(query, key, value)


def _activations(teacher, recipe) -> tuple[int, dict[int, int], int]:
    """One student forward at the recipe's shape on the meta device: the bytes autograd keeps (each storage
    once), those kept inside each block, and the bytes of the blocks' inputs."""
    from .consistency import guidance_embedding

    v, b = recipe.video, recipe.train.batch_size
    dtype = next((p.dtype for p in teacher.network.parameters() if not p.requires_grad),
                 next(teacher.network.parameters()).dtype)  # a full fine-tune counted before its fp32 cast
    c, f, h, w = teacher.latent_shape(v.frames, v.height, v.width)
    x = torch.empty((b, c, f, h, w), device="meta", dtype=dtype)
    t = torch.full((b,), 500, device="meta", dtype=torch.long)
    length, dim = teacher.text_states_shape()
    text = torch.empty((b, length, dim), device="meta", dtype=dtype)
    w_emb = guidance_embedding(torch.full((b,), 7.5), recipe.distill.guidance_embed_dim).to("meta", dtype)
    fps = torch.full((b,), float(v.fps), device="meta") if teacher.supports_fps else None
    params = {p.untyped_storage()._cdata for p in teacher.network.parameters()}
    seen: dict[int, int] = {}
    per_block: dict[int, int] = {}
    inputs: dict[int, int] = {}
    current = [None]

    def pack(tensor):
        s = tensor.untyped_storage()
        if s._cdata not in params and s._cdata not in seen:
            seen[s._cdata] = s.nbytes()
            if current[0] is not None:
                per_block[current[0]] = per_block.get(current[0], 0) + s.nbytes()
        return tensor

    def enter(i, args, kwargs):
        current[0] = i
        for a in [*args, *kwargs.values()]:
            if isinstance(a, torch.Tensor) and a.requires_grad:
                inputs[a.untyped_storage()._cdata] = a.untyped_storage().nbytes()

    hooks = []
    for i, block in enumerate(teacher.network_blocks()):
        hooks.append(block.register_forward_pre_hook(lambda m, a, k, i=i: enter(i, a, k), with_kwargs=True))
        hooks.append(block.register_forward_hook(lambda m, a, o: current.__setitem__(0, None)))
    teacher.network.train()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _fused_attention
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            teacher.denoise(x, t, text, guidance_cond=w_emb, fps=fps)
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
        for hk in hooks:
            hk.remove()
    return sum(seen.values()), per_block, sum(inputs.values())


def count(recipe) -> Counted:
    """Build the recipe's teacher and student on the meta device and count (:class:`Counted`)."""
    from .names import torch_dtype
    from .student import student_for_recipe, train_in_fp32

    r = recipe
    dtype = torch_dtype(r.model.dtype, "model.dtype")
    teacher = meta_teacher(r.model.teacher, dtype)
    full = r.train.full_finetune
    copy = _bytes(teacher.network) if full else 0  # the frozen teacher: the original network, as loaded
    net = student_for_recipe(teacher, r)  # what a run builds (distill.Distiller.build_student)
    if full:  # the forward runs under autocast in model.dtype: its activations are counted at that precision
        measured = _activations(teacher, r)
    train_in_fp32(net)
    trainable = _numel(net, True)
    frozen = sum(p.numel() * p.element_size() for p in net.parameters() if not p.requires_grad)
    notes = []
    latents = r.data.source == "latents"
    vae = _bytes(teacher.vae)
    if latents:
        vae -= sum(_bytes(getattr(teacher.vae, n, None)) for n in ("encoder", "quant_conv"))
    text = 0 if (r.train.cache_text or latents) else _bytes(teacher.text_encoder)
    rewards = 0
    for rc in r.rewards:
        n = REWARD_PARAMS.get(rc.name)
        if n is None:
            try:
                from .rewards import load_reward

                n = _numel(load_reward(rc.name, checkpoint=rc.checkpoint, **rc.options))
            except Exception:  # noqa: BLE001 - a reward that needs weights we do not have: say so
                notes.append(f"reward {rc.name}: size unknown without its weights (not counted)")
                continue
        rewards += n * torch_dtype(rc.dtype, f"rewards[{rc.name}].dtype").itemsize
    blocks = teacher.network_blocks()
    unit_bytes = [_bytes(blk) for blk in blocks]
    root = _bytes(net) - sum(unit_bytes)
    kept, per_block, block_inputs = measured if full else _activations(teacher, r)
    if r.train.gradient_checkpointing and per_block:
        # a checkpointed block keeps its inputs; the largest one is recomputed, whole, in the backward
        kept = kept - sum(per_block.values()) + block_inputs + max(per_block.values())
        notes.append("activations with train.gradient_checkpointing: what the network keeps outside its blocks, "
                     "each block's inputs, and the largest block recomputed in the backward")
    return Counted(frozen=frozen, frozen_params=_numel(net, False), trainable_params=trainable,
                   trainable=trainable * 4, optimiser=trainable * (2 if r.train.optimizer == "adamw8bit" else 8),
                   ema=trainable * 4 if r.distill.target == "ema" else 0, vae=vae, text=text, rewards=rewards,
                   largest_unit=max([root, *unit_bytes]), activations=kept, notes=notes, teacher_copy=copy)


def per_rank(c: Counted, world: int, mode: str) -> dict[str, float]:
    """GiB per process under ``mode`` (ddp, fsdp, fsdp+offload) over ``world`` processes."""
    shard = max(1, world) if mode != "ddp" else 1
    gpu = {
        "network (frozen)": c.frozen / shard,
        "teacher copy (frozen)": c.teacher_copy / shard,
        "adapter + guidance (fp32)": c.trainable / shard,
        "gradients": c.trainable / shard,
        "optimiser states": c.optimiser / shard,
        "EMA target": c.ema / shard,
        "DDP gradient buckets": c.trainable if mode == "ddp" and world > 1 else 0,
        "FSDP gathered units": 2 * c.largest_unit if mode == "fsdp+offload" or (mode == "fsdp" and world > 1) else 0,
        "VAE": c.vae,
        "text encoder": c.text,
        "rewards": c.rewards,
        "activations": c.activations,
    }
    cpu = 0.0
    if mode == "fsdp+offload":
        for k in ("network (frozen)", "teacher copy (frozen)", "adapter + guidance (fp32)", "gradients",
                  "optimiser states", "EMA target"):
            cpu += gpu[k]
            gpu[k] = 0.0
    out = {k: v / GIB for k, v in gpu.items()}
    out["total"] = sum(gpu.values()) / GIB
    out["CPU (offloaded)"] = cpu / GIB
    return out


def smallest_gpu(total_gib: float) -> str:
    for size, name in GPUS:
        if total_gib <= USABLE * size * 1e9 / GIB:
            return name
    return "none of one GPU's size: shard more (FSDP over more GPUs, offload) or lower the clip shape"


def describe_memory(recipe, world: int) -> list[str]:
    """The dry run's memory table: per process, DDP / FSDP / FSDP + offload at ``world`` processes."""
    c = count(recipe)
    v = recipe.video
    modes = ["ddp", "fsdp", "fsdp+offload"]
    cols = {m: per_rank(c, world, m) for m in modes}
    head = f"{'per process (GiB)':<28}" + "".join(f"{m + f' x{world}':>18}" for m in modes)
    lines = [f"memory plan: {c.trainable_params / 1e6:.1f} M trainable of {(c.frozen_params + c.trainable_params) / 1e9:.2f} B "
             f"network parameters (counted on the meta device), batch {recipe.train.batch_size} of {v.frames}x{v.height}x{v.width} "
             "per process", head]
    for key in cols["ddp"]:
        if all(abs(cols[m][key]) < 5e-4 for m in modes) and key not in ("total",):
            continue
        label = "whole network (fp32)" if key == "adapter + guidance (fp32)" and c.teacher_copy else key
        lines.append(f"{label:<28}" + "".join(f"{cols[m][key]:>18.2f}" for m in modes))
    lines.append(f"{'smallest GPU that fits':<28}" + "  ".join(f"{smallest_gpu(cols[m]['total'])}" for m in modes))
    lines += [f"note: {n}" for n in c.notes]
    return lines
