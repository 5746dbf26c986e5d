"""The UNet3D family's own files: the official T2V-Turbo v1 ``unet_lora.pt`` list, the released T2V-Turbo-v2
whole UNets, and the stock diffusers folders an exported student becomes (docs/formats.md §3).

The official release is a ``torch.save`` of a plain Python list ``[up0, down0, up1, down1, ...]``, no names:
one pair per module whose exact class is nn.Linear / nn.Conv2d / nn.Conv3d, in ``named_modules()`` order of
the UNet *with* its guidance projection (``time_embedding.cond_proj``). Each pair maps exactly onto peft
(down -> ``lora_A``, up -> ``lora_B``, scale 1), so the result is an ordinary student
(:func:`t2vturbo.student.make_student`).

Two modules fall outside our peft adapter and are merged into their weights instead (W += up @ down):
``time_embedding.cond_proj`` (our students store that projection as a plain weight) and, for VideoCrafter2,
``fps_embedding.*``.

The guidance projection: the released students never trained or saved the base weight of ``cond_proj`` (it
was a random nn.Linear init; only its LoRA pair is in the file). If the UNet has no ``cond_proj``, we re-create
it as nn.Linear's default init drawn from a ``torch.Generator`` seeded :data:`GUIDANCE_PROJECTION_SEED`, then add
the file's LoRA pair for it. The authors' random draw is unknowable, so the guidance input of a converted
official student is not bit-identical to theirs; everything else is.

Why one file of this length: it is the family's whole outside world (two foreign student formats and two export
layouts); each part is short and they share the module-order and LoRA helpers.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..safeio import load_torch_file
from ..student import (
    ADAPTER,
    LoraSettings,
    add_guidance_projection,
    fold_guidance,
    lora_layers,
    make_student,
    merge_lora,
)

#: seed of the re-created guidance projection of official students (arXiv 2405.18750)
GUIDANCE_PROJECTION_SEED = 2405_18750
GUIDANCE_MODULE = "time_embedding.cond_proj"
GUIDANCE_KEY = f"{GUIDANCE_MODULE}.weight"
LORA_TYPES = (nn.Linear, nn.Conv2d, nn.Conv3d)


# --------------------------------------------------------------------------------------------- module order
def ms_official_module_names(unet: nn.Module) -> list[str]:
    """The ModelScope release order: exact Linear/Conv2d/Conv3d modules in ``named_modules()`` order.

    ``time_embedding.cond_proj`` sits right after ``time_embedding.linear_1`` (where diffusers registers it
    when the UNet is built with ``time_cond_proj_dim``), whether or not this UNet has it yet.
    """
    names = [n for n, m in unet.named_modules() if type(m) in LORA_TYPES and n != GUIDANCE_MODULE]
    if "time_embedding.linear_1" not in names:
        raise CheckpointError("this UNet has no time_embedding.linear_1; it is not a diffusers UNet3DConditionModel")
    names.insert(names.index("time_embedding.linear_1") + 1, GUIDANCE_MODULE)
    return names


def _expected_weight_shape(unet: nn.Module, name: str, guidance_embed_dim: int) -> tuple[str, tuple[int, ...]]:
    """(class name, weight shape) of module ``name``; the guidance projection may not exist yet."""
    if name == GUIDANCE_MODULE and getattr(unet.time_embedding, "cond_proj", None) is None:
        return "Linear", (unet.time_embedding.linear_1.in_features, guidance_embed_dim)
    try:
        mod = unet.get_submodule(name)
    except AttributeError:
        raise CheckpointError(f"module {name} of the official LoRA order is not in this UNet; pass the module "
                              "names of the model the file was made for") from None
    if type(mod) not in LORA_TYPES:
        raise CheckpointError(f"module {name} is a {type(mod).__name__}, not a Linear/Conv2d/Conv3d")
    return type(mod).__name__, tuple(mod.weight.shape)


def _check_pair(i: int, name: str, kind: str, wshape: tuple[int, ...], up: Any, down: Any) -> int:
    """Validate one (up, down) pair against the module weight shape; return its rank."""
    where = f"pair {i} ({name}, {kind} weight {list(wshape)})"
    if not isinstance(up, torch.Tensor) or not isinstance(down, torch.Tensor):
        raise CheckpointError(f"official LoRA {where}: list items {2 * i} and {2 * i + 1} must be tensors, got "
                              f"{type(up).__name__} and {type(down).__name__}")
    out, cin, kernel = wshape[0], wshape[1], tuple(wshape[2:])
    r = down.shape[0] if down.ndim == len(wshape) else -1
    want_down = (r, cin, *kernel)
    want_up = (out, r, *([1] * len(kernel)))
    if r < 1 or tuple(down.shape) != want_down or tuple(up.shape) != want_up:
        shown_r = "r" if r < 1 else str(r)
        raise CheckpointError(
            f"official LoRA {where} does not fit: got up {list(up.shape)}, down {list(down.shape)}, expected up "
            f"{[out, shown_r, *want_up[2:]]}, down {[shown_r, cin, *kernel]}; the file was made for another model "
            "or module order")
    if r > min(out, cin):
        raise CheckpointError(f"official LoRA {where}: rank {r} exceeds min(in, out) = {min(out, cin)}")
    return r


def validate_official_lora(tensors: Any, unet: nn.Module, module_names: Sequence[str],
                           guidance_embed_dim: int = 256) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Pair the list [up0, down0, ...] with ``module_names``, checking shapes pair by pair.

    Returns:
        [(module name, up, down), ...] in file order.

    Raises:
        CheckpointError: naming the first bad pair (index and module), or the first missing/extra pair.
    """
    if not isinstance(tensors, (list, tuple)):
        raise CheckpointError(f"an official T2V-Turbo unet_lora.pt is a list of tensors, this file holds a "
                              f"{type(tensors).__name__}; pass our student folder or a peft LoRA file instead")
    n_mod = len(module_names)
    pairs = []
    for i in range(min(len(tensors) // 2, n_mod)):
        name = module_names[i]
        kind, wshape = _expected_weight_shape(unet, name, guidance_embed_dim)
        up, down = tensors[2 * i], tensors[2 * i + 1]
        _check_pair(i, name, kind, wshape, up, down)
        pairs.append((name, up, down))
    if len(tensors) != 2 * n_mod:
        if len(tensors) < 2 * n_mod:
            i = len(tensors) // 2
            what = f"pair {i} ({module_names[i]}) is {'incomplete' if len(tensors) % 2 else 'missing'}"
        else:
            what = f"there are extra tensors after pair {n_mod - 1} ({module_names[-1]})"
        raise CheckpointError(f"official LoRA list has {len(tensors)} tensors but this UNet needs {2 * n_mod} "
                              f"({n_mod} up/down pairs): {what}; the file was made for another model")
    return pairs


# --------------------------------------------------------------------------------------------- loading
def _merge_into_weight(mod: nn.Module, up: torch.Tensor, down: torch.Tensor) -> None:
    """W += up @ down (flattened, float32), the reference ``collapse_lora``."""
    w = mod.weight
    delta = (up.float().flatten(1) @ down.float().flatten(1)).reshape(w.shape)
    with torch.no_grad():
        w.copy_((w.float() + delta.to(w.device)).to(w.dtype))


def convert_official_lora(pairs: Sequence[tuple[str, torch.Tensor, torch.Tensor]], teacher: Any,
                          guidance_embed_dim: int = 256,
                          guidance_seed: int = GUIDANCE_PROJECTION_SEED) -> nn.Module:
    """Make ``teacher.unet`` a student holding the validated ``pairs`` (see :func:`validate_official_lora`)."""
    unet = teacher.unet
    recreated = getattr(unet.time_embedding, "cond_proj", None) is None
    if recreated:
        add_guidance_projection(teacher, guidance_embed_dim, init="kaiming", seed=guidance_seed)
    peft_names = set(teacher.lora_targets())
    adapted = [(n, up, down) for n, up, down in pairs if n in peft_names]
    merged = [(n, up, down) for n, up, down in pairs if n not in peft_names]
    if not adapted:
        raise CheckpointError("the official LoRA list adapts no Linear/Conv module of this UNet")
    ranks = {n: down.shape[0] for n, _, down in adapted}
    base_rank = Counter(ranks.values()).most_common(1)[0][0]
    lora = LoraSettings(rank=base_rank, alpha=None, dropout=0.0, target_modules=sorted(ranks),
                        rank_pattern={n: r for n, r in ranks.items() if r != base_rank})
    make_student(teacher, lora, guidance_embed_dim)
    modules = dict(unet.named_modules())
    with torch.no_grad():
        for name, up, down in adapted:
            layer = modules[name]
            layer.lora_A[ADAPTER].weight.copy_(down)
            layer.lora_B[ADAPTER].weight.copy_(up)
        for name, up, down in merged:
            _merge_into_weight(modules[name], up, down)
    unet.requires_grad_(False)
    unet._t2vturbo_official = {
        "pairs": len(pairs), "merged_into_weights": [n for n, _, _ in merged],
        "guidance_projection": f"re-created, nn.Linear default init, seed {guidance_seed}" if recreated
        else "kept from the base UNet",
    }
    return unet


def load_official_lora(path: str | Path, teacher: Any, module_names: Sequence[str] | None = None,
                       guidance_embed_dim: int = 256, guidance_seed: int = GUIDANCE_PROJECTION_SEED) -> nn.Module:
    """Load an official T2V-Turbo ``unet_lora.pt`` into ``teacher.unet`` (made a student in place).

    Args:
        path: the list file [up0, down0, up1, down1, ...] (read with ``weights_only=True``).
        teacher: a UNet3D teacher whose UNet has no adapter yet, with or without ``time_embedding.cond_proj``.
        module_names: the module of each pair, in file order; default :func:`ms_official_module_names`
            (ModelScope). VideoCrafter2 passes its own (lvdm order mapped to our names).
        guidance_embed_dim: input width of the guidance projection.
        guidance_seed: seed of the re-created guidance projection when the UNet has none (module docstring).

    Raises:
        CheckpointError: not a list, wrong length, or a pair whose shapes do not fit; the message names the
            first bad pair index and its module.
    """
    unet = teacher.unet
    if lora_layers(unet):
        raise CheckpointError("this UNet already carries a LoRA adapter; load the official LoRA into a fresh teacher")
    names = list(module_names) if module_names is not None else default_module_names(teacher)
    pairs = validate_official_lora(load_torch_file(path), unet, names, guidance_embed_dim)
    return convert_official_lora(pairs, teacher, guidance_embed_dim, guidance_seed)


def default_module_names(teacher: Any) -> list[str]:
    """The release order for this UNet: VideoCrafter2's (fps-conditioned, :mod:`t2vturbo.convert`) or ModelScope's."""
    if teacher.supports_fps:
        from ..convert.lvdm_unet import layout_of
        from ..convert.official_order import vc2_lora_module_names

        return vc2_lora_module_names(layout_of(teacher.unet))
    return ms_official_module_names(teacher.unet)


def load_official_student(path: Path, teacher: Any) -> dict:
    """An official v1 student (a ``unet_lora.pt`` file, or a folder holding one) loaded into ``teacher``; it
    implies no sampling defaults of its own."""
    load_official_lora(path / "unet_lora.pt" if path.is_dir() else path, teacher)
    return {}


#: T2V-Turbo-v2's demo defaults: lcm_origin_steps 200 for any v2 UNet, motion guidance 0.05 on the first 30%
V2_DEFAULTS = {"origin_steps": 200}
V2_MOTION_DEFAULTS = {"motion_guidance": 0.05, "motion_percentage": 0.3}


def load_v2_student(path: str | Path, parts: Any) -> dict:
    """Replace ``parts.unet`` by a released T2V-Turbo-v2 UNet (whole weights, not an adapter), checked key by key
    against the VideoCrafter2 conversion the parts hold; a model that is not a VC2 conversion is refused. Returns
    the v2 demo's sampling defaults."""
    from ..convert.lvdm_unet import build_vc2_v2_unet

    if not parts.supports_fps:
        raise CheckpointError(f"{path} is a T2V-Turbo-v2 student of VideoCrafter2; give it a VideoCrafter2 folder "
                              "converted with `t2vturbo convert vc2 model.ckpt --out DIR` as --model")
    state = load_torch_file(path)
    param = next(parts.unet.parameters())
    unet = build_vc2_v2_unet({k: v for k, v in state.items()}, dtype=param.dtype,
                             default_fps=int(parts.unet.fps_embedding.default_fps))
    want = {k: tuple(v.shape) for k, v in parts.unet.state_dict().items() if "lora_" not in k and "cond_proj" not in k}
    got = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    bad = next((k for k, s in want.items() if got.get(k) != s), None)
    if bad is not None:
        raise CheckpointError(f"{path} does not fit the base model: {bad} is {got.get(bad)} there, {want[bad]} in the "
                              "base; pass the VideoCrafter2 conversion it was trained from")
    parts.unet = unet.to(device=param.device).eval().requires_grad_(False)
    return {**V2_DEFAULTS, **(V2_MOTION_DEFAULTS if parts.supports_motion else {})}


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
def lcm_scheduler_config(schedule: Any, base_spec: str, origin_steps: int) -> dict[str, Any]:
    """An LCMScheduler config with the teacher's noise schedule (and a diffusers folder's own betas)."""
    sched = Path(base_spec) / "scheduler" / "scheduler_config.json" if base_spec != "tiny" else None
    base = json.loads(sched.read_text()) if sched is not None and sched.is_file() else None
    return schedule.lcm_scheduler_config(origin_steps, base)


def write_diffusers_pipeline(parts: Any, folder: Path, guidance: float, origin_steps: int, base_spec: str,
                             dtype: torch.dtype = torch.float32, fps: int | None = None) -> dict:
    """Merge + fold the student in ``parts.unet`` and save a TextToVideoSDPipeline into ``folder`` (must not
    exist); returns what the export records."""
    from diffusers import LCMScheduler, TextToVideoSDPipeline

    unet = parts.unet
    info: dict = {"fps_folded": fps if fps is not None else parts.default_fps,
                  "how_to_run": "run it with: TextToVideoSDPipeline.from_pretrained(DIR)(prompt, "
                                "num_inference_steps=4, guidance_scale=1.0)"}
    if parts.supports_motion:
        # a stock pipeline has no input for v2's motion condition (given on the first steps only): the export is
        # the motion-free variant, exactly the student run without a motion condition
        info["motion_guidance"] = ("dropped: a stock pipeline cannot give the motion condition on the first steps "
                                   "only; this folder is the student without it")
        parts.drop_motion_condition()
    if lora_layers(unet):  # a released T2V-Turbo-v2 UNet has whole weights: nothing to merge
        merge_lora(unet)
    fold_guidance(parts.guidance_embedder(), guidance)
    unet.register_to_config(time_cond_proj_dim=None)
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
    return info


def write_lora_adapter(parts: Any, folder: Path, base_spec: str | None, meta: dict | None = None) -> dict:
    """Save the adapter in peft's layout; LoRA scalings are folded into ``lora_B`` so every module has scale 1.
    Returns what the export records (how to feed the guidance, the student's default guidance and fps)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    from ..defaults import FALLBACK_GUIDANCE

    meta = meta or {}
    unet = parts.unet

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
    info = {"guidance_embedding": "sin/cos of w*1000, 256-d (t2vturbo.consistency.guidance_embedding)",
            "default_guidance": meta.get("default_guidance", FALLBACK_GUIDANCE), "fps": meta.get("fps"),
            "how_to_run": ("load it with `t2vturbo sample --student DIR`, or peft.PeftModel.from_pretrained(unet, DIR) "
                           "on UNet3DConditionModel.from_pretrained(BASE, subfolder='unet', time_cond_proj_dim=256, "
                           "low_cpu_mem_usage=False)")}
    if parts.supports_motion:
        info["motion_guidance"] = ("dropped: a peft adapter holds the LoRA and the guidance projection only; the "
                                   "motion projections stay in the t2vturbo student file")
    return info


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


