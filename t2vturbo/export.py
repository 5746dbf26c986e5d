"""Export a student so that it runs without t2vturbo.

- ``diffusers``: a complete ``TextToVideoSDPipeline`` folder. The LoRA is merged into the UNet weights and the
  chosen guidance scale w is folded into the time embedding: the student adds c = cond_proj(embed(w)) to the
  sinusoidal timestep embedding before ``time_embedding.linear_1``, so for a fixed w
  ``linear_1(t + c) = W1 t + (b1 + W1 c)`` and ``linear_1.bias += W1 c`` replaces the projection. The result is a
  plain UNet3DConditionModel (no ``time_cond_proj_dim``) run with ``guidance_scale=1`` (no CFG batch) and an
  ``LCMScheduler`` (the multistep consistency sampler).
- ``lora``: the adapter alone in peft's own layout (``adapter_model.safetensors`` with ``base_model.model.*`` keys
  + ``adapter_config.json``); the guidance projection is a ``modules_to_save`` entry, so
  ``peft.PeftModel.from_pretrained(unet, DIR)`` loads it into a base UNet built with ``time_cond_proj_dim=256``.

Both are written atomically: a failed export leaves no folder behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .names import torch_dtype
from .safeio import atomic_path
from .schedules import VPSchedule
from .student import ADAPTER, GUIDANCE_KEY, lora_layers, merge_lora

FORMATS = ("diffusers", "lora")
GUIDANCE_MODULE = "time_embedding.cond_proj"
EXPORT_META = "t2vturbo.json"


# --------------------------------------------------------------------------------------------- UNet surgery
def fold_guidance(unet: nn.Module, guidance: float) -> nn.Module:
    """Fold a fixed guidance scale into ``time_embedding.linear_1.bias`` and remove the guidance projection.

    Exact in real arithmetic: linear_1(t + cond_proj(embed(w))) = W1 t + (b1 + W1 cond_proj(embed(w))).
    """
    from .consistency import guidance_embedding
    from .student import is_transformer, time_embedding_of

    te = time_embedding_of(unet)
    proj = getattr(te, "cond_proj", None)
    if proj is None:
        raise CheckpointError("this model has no guidance projection (time_embedding.cond_proj) to fold")
    lin = te.linear_1
    with torch.no_grad():
        emb = guidance_embedding(torch.tensor([float(guidance)]), proj.in_features, dtype=torch.float64)
        c = emb[0] @ proj.weight.double().T  # the constant added to the timestep embedding
        shift = lin.weight.double() @ c
        if lin.bias is None:
            lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device))
        lin.bias.copy_((lin.bias.double() + shift).to(lin.bias.dtype))
    te.cond_proj = None
    if not is_transformer(unet):  # a Wan transformer's config never named the projection
        unet.register_to_config(time_cond_proj_dim=None)
    return unet


def fold_fps(unet: nn.Module, fps: int | None = None) -> nn.Module:
    """VideoCrafter2: fold the fps embedding at a fixed ``fps`` into ``time_embedding.linear_2.bias``, remove it.

    The fps embedding adds fps_embedding(fps) to the time-MLP output (no activation after linear_2 in
    UNet3DConditionModel), so for a fixed fps it is a constant bias.
    """
    fps_module = getattr(unet, "fps_embedding", None)
    if fps_module is None:
        return unet
    value = int(fps if fps is not None else fps_module.default_fps)
    lin = unet.time_embedding.linear_2
    if unet.time_embedding.post_act is not None:
        raise CheckpointError("cannot fold the fps embedding: the time embedding has an activation after linear_2")
    with torch.no_grad():
        shift = fps_module(torch.tensor([value], device=lin.weight.device))[0]
        lin.bias.copy_((lin.bias.double() + shift.double()).to(lin.bias.dtype))
    del unet.fps_embedding
    return unet


# --------------------------------------------------------------------------------------------- writers
def lcm_scheduler_config(schedule: VPSchedule, base_spec: str, origin_steps: int) -> dict[str, Any]:
    """An LCMScheduler config with the teacher's noise schedule (and a diffusers folder's own betas)."""
    sched = Path(base_spec) / "scheduler" / "scheduler_config.json" if base_spec != "tiny" else None
    base = json.loads(sched.read_text()) if sched is not None and sched.is_file() else None
    return schedule.lcm_scheduler_config(origin_steps, base)


def write_diffusers_pipeline(parts: Any, folder: Path, guidance: float, origin_steps: int, base_spec: str,
                             dtype: torch.dtype = torch.float32, fps: int | None = None) -> None:
    """Merge + fold the student in ``parts.unet`` and save a TextToVideoSDPipeline into ``folder`` (must not exist)."""
    if getattr(parts, "family", None) == "wan":
        return write_wan_pipeline(parts, folder, guidance, dtype)
    from diffusers import LCMScheduler, TextToVideoSDPipeline

    unet = parts.unet
    if lora_layers(unet):  # a released T2V-Turbo-v2 UNet has whole weights: nothing to merge
        merge_lora(unet)
    if hasattr(unet, "motion_condition"):
        # a stock pipeline has no input for v2's motion condition (given on the first steps only): the export is
        # the motion-free variant, exactly the student run without a motion condition
        del unet.motion_condition
    fold_guidance(unet, guidance)
    fold_fps(unet, fps)
    scheduler = LCMScheduler.from_config(lcm_scheduler_config(parts.schedule, base_spec, origin_steps))
    if not torch.allclose(scheduler.alphas_cumprod, parts.alphas_cumprod.cpu().float(), atol=1e-6):
        raise CheckpointError(f"cannot express the noise schedule of {base_spec} as an LCMScheduler config")
    parts.vae.register_to_config(scaling_factor=float(parts.vae_scale))
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # "TextToVideoSDPipeline is deprecated": it still loads and runs
    try:
        pipe = TextToVideoSDPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                     unet=unet, scheduler=scheduler)
    finally:
        diffusers_logging.set_verbosity(level)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.save_pretrained(folder, safe_serialization=True)


def write_wan_pipeline(parts: Any, folder: Path, guidance: float, dtype: torch.dtype = torch.float32) -> None:
    """Merge + fold the Wan student and save a stock ``WanPipeline`` with ``FlowMatchLCMScheduler``: run it with
    ``num_inference_steps=4, guidance_scale=1.0``."""
    from diffusers import FlowMatchLCMScheduler, WanPipeline

    transformer = parts.transformer
    merge_lora(transformer)
    fold_guidance(transformer, guidance)
    scheduler = FlowMatchLCMScheduler.from_config(parts.schedule.lcm_scheduler_config())
    pipe = WanPipeline(tokenizer=parts.tokenizer, text_encoder=parts.text_encoder, transformer=transformer,
                       vae=parts.vae, scheduler=scheduler)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.save_pretrained(folder, safe_serialization=True)
    from .teachers import DEFAULTS_FILE

    (Path(folder) / DEFAULTS_FILE).write_text(json.dumps(parts.stored_defaults, indent=1))


WAN_LORA_FILE = "pytorch_lora_weights.safetensors"


def write_wan_lora(transformer: nn.Module, folder: Path, guidance: float) -> None:
    """The Wan student's adapter in the layout ``WanPipeline.load_lora_weights(folder)`` reads: diffusers' peft keys
    ``transformer.{module}.lora_A.weight`` / ``lora_B.weight`` (scalings folded into B, so alpha = rank), and the
    guidance folded for a fixed w as the bias of a rank-1 LoRA on ``condition_embedder.time_embedder.linear_1``
    (A and B zero, ``lora_B.bias`` = W1 cond_proj(embed(w))): a stock transformer has no guidance projection.
    Every module carries an explicit ``lora_B.bias`` (zero elsewhere): diffusers then turns on peft's lora_bias."""
    from safetensors.torch import save_file

    from .consistency import guidance_embedding
    from .student import time_embedding_of

    state: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(transformer):
        a = layer.lora_A[ADAPTER].weight
        b = layer.lora_B[ADAPTER].weight * layer.scaling[ADAPTER]
        state[f"transformer.{name}.lora_A.weight"] = a
        state[f"transformer.{name}.lora_B.weight"] = b
        state[f"transformer.{name}.lora_B.bias"] = torch.zeros(b.shape[0], dtype=b.dtype, device=b.device)
    if not state:
        raise CheckpointError("this transformer has no LoRA adapter to export")
    te = time_embedding_of(transformer)
    proj = getattr(te, "cond_proj", None)
    if proj is None:
        raise CheckpointError("this transformer has no guidance projection to fold into the LoRA file")
    lin = te.linear_1
    base = getattr(lin, "base_layer", lin)
    with torch.no_grad():
        emb = guidance_embedding(torch.tensor([float(guidance)]), proj.in_features, dtype=torch.float64)
        shift = base.weight.double() @ (emb[0] @ proj.weight.double().T)
    key = "transformer.condition_embedder.time_embedder.linear_1"
    state[f"{key}.lora_A.weight"] = torch.zeros(1, base.in_features, dtype=base.weight.dtype)
    state[f"{key}.lora_B.weight"] = torch.zeros(base.out_features, 1, dtype=base.weight.dtype)
    state[f"{key}.lora_B.bias"] = shift.to(base.weight.dtype)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / WAN_LORA_FILE))


def write_lora_adapter(unet: nn.Module, folder: Path, base_spec: str | None) -> None:
    """Save the adapter in peft's layout; LoRA scalings are folded into ``lora_B`` so every module has scale 1."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for name, layer in lora_layers(unet):
        a = layer.lora_A[ADAPTER].weight
        b = layer.lora_B[ADAPTER].weight * layer.scaling[ADAPTER]
        state[f"base_model.model.{name}.lora_A.weight"] = a
        state[f"base_model.model.{name}.lora_B.weight"] = b
        ranks[name] = a.shape[0]
    if not ranks:
        raise CheckpointError("this UNet has no LoRA adapter to export")
    proj = getattr(unet.time_embedding, "cond_proj", None)
    if proj is not None:
        state[f"base_model.model.{GUIDANCE_KEY}"] = proj.weight
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    pattern = {f"^{n}$": r for n, r in ranks.items() if r != rank}
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=sorted(ranks), rank_pattern=pattern,
                        alpha_pattern=dict(pattern), lora_dropout=0.0,
                        modules_to_save=[GUIDANCE_MODULE] if proj is not None else None,
                        base_model_name_or_path=base_spec, inference_mode=True)
    folder.mkdir()
    save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()},
              str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps(config.to_dict(), indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


def pipeline_timesteps(model_spec: str | Path, steps: int) -> list[int] | None:
    """The timesteps stock diffusers runs an exported folder with (its LCMScheduler, ``set_timesteps(steps)``).

    ``None`` when ``model_spec`` is not a folder with an LCMScheduler config. For 4 of 50 steps this is
    [999, 759, 499, 259] (the reference sampler's own choice is [999, 759, 519, 279]); sampling an exported
    model with these is what makes t2vturbo and diffusers agree.
    """
    cfg_file = Path(model_spec) / "scheduler" / "scheduler_config.json"
    if not cfg_file.is_file():
        return None
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("_class_name") != "LCMScheduler":
        return None
    from diffusers import LCMScheduler

    scheduler = LCMScheduler.from_config(cfg)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


# --------------------------------------------------------------------------------------------- entry point
def export_student(
    student_path: str | Path,
    base_model_spec: str | None = None,
    format: str = "diffusers",  # noqa: A002 - the CLI option's name
    out_dir: str | Path = "exported",
    guidance: float = 7.5,
    dtype: str = "float32",
    fps: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``student_path`` (any student format) as a diffusers pipeline or a peft adapter folder.

    Args:
        student_path: our student folder / .safetensors, a peft LoRA, or an official ``unet_lora.pt``.
        base_model_spec: the teacher (``tiny``, diffusers folder or cached hub id); default: the one the student
            records (student.json ``base_model``).
        format: ``"diffusers"`` (merged, guidance folded, LCMScheduler) or ``"lora"`` (adapter alone).
        out_dir: the folder to write; it appears complete or not at all.
        guidance: diffusers only: the guidance scale w folded into the UNet.
        dtype: diffusers only: weight dtype of the written pipeline (float32, float16, bfloat16).
        fps: diffusers only, fps-conditioned models (VideoCrafter2): the frame rate folded into the UNet
            (default: the model's).
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        ``out_dir``.
    """
    from .formats import base_model_of, load_any_student, recorded_student_meta
    from .teachers import load_teacher

    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    torch_dtype(dtype, "--dtype")  # fail before any work
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
    # read once: the base model, and (our students only: a peft config has none of these keys) the schedule,
    # steps, guidance and fps
    meta = recorded_student_meta(student_path)
    base = base_model_spec or base_model_of(meta)
    if not base:
        raise ConfigError(f"{student_path} does not record its base model; pass it with --model")
    parts = load_teacher(base)
    load_any_student(student_path, parts)
    origin = int((meta.get("schedule") or {}).get("num_ddim_timesteps")
                 or (meta.get("schedule") or {}).get("origin_steps") or 50)
    info = {"format": f"t2vturbo-export-{format}", "source": str(student_path), "base_model": base,
            "origin_steps": origin, "default_steps": meta.get("default_steps", 4)}
    with atomic_path(out) as tmp:
        if format == "lora" and getattr(parts, "family", None) == "wan":
            tmp.mkdir(parents=True, exist_ok=True)
            write_wan_lora(parts.transformer, tmp, guidance)
            info.update(guidance_folded=float(guidance), run_with={
                "guidance_scale": 1.0, "scheduler": parts.schedule.lcm_scheduler_config(),
                "load": "pipe.load_lora_weights(DIR); pipe.scheduler = FlowMatchLCMScheduler(shift=...)"})
        elif format == "lora":
            write_lora_adapter(parts.unet, tmp, base)
            info.update(guidance_embedding="sin/cos of w*1000, 256-d (t2vturbo.consistency.guidance_embedding)",
                        default_guidance=meta.get("default_guidance", 7.5), fps=meta.get("fps"))
            if parts.extra.get("v2_motion"):
                info.update(motion_guidance="dropped: a peft adapter holds the LoRA and the guidance projection "
                                            "only; the motion projections stay in the t2vturbo student file")
        else:
            if "v2_motion" in parts.extra:
                info.update(motion_guidance=("dropped: a stock pipeline cannot give the motion condition on the first "
                                             "steps only; this folder is the student without it" if
                                             parts.extra["v2_motion"] else "none in this student"))
            folded_fps = fps if fps is not None else parts.default_fps
            write_diffusers_pipeline(parts, tmp, guidance, origin, base, torch_dtype(dtype), fps)
            info.update(guidance_folded=float(guidance), fps_folded=folded_fps, run_with={"guidance_scale": 1.0})
        (tmp / EXPORT_META).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return out
