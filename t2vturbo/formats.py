"""Every student format in one place (docs/formats.md §3): detect, read and load ours, a peft LoRA, or the official
T2V-Turbo ``unet_lora.pt`` list, and what a student records about itself (its base model, recipe, defaults).
Writing: our format is :func:`t2vturbo.student.save_student`; peft's is :func:`t2vturbo.export.write_lora_adapter`.

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
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .safeio import load_torch_file, load_weights
from .student import (
    ADAPTER,
    FORMAT_NAME,
    GUIDANCE_KEY,
    STUDENT_FILE,
    STUDENT_META,
    LoraSettings,
    add_guidance_projection,
    lora_target_names,
    make_student,
    student_meta_path,
)

#: seed of the re-created guidance projection of official students (arXiv 2405.18750)
GUIDANCE_PROJECTION_SEED = 2405_18750
GUIDANCE_MODULE = "time_embedding.cond_proj"
LORA_TYPES = (nn.Linear, nn.Conv2d, nn.Conv3d)
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


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


def convert_official_lora(pairs: Sequence[tuple[str, torch.Tensor, torch.Tensor]], unet: nn.Module,
                          guidance_embed_dim: int = 256,
                          guidance_seed: int = GUIDANCE_PROJECTION_SEED) -> nn.Module:
    """Make ``unet`` a student holding the validated ``pairs`` (see :func:`validate_official_lora`)."""
    recreated = getattr(unet.time_embedding, "cond_proj", None) is None
    if recreated:
        add_guidance_projection(unet, guidance_embed_dim, init="kaiming", seed=guidance_seed)
    peft_names = set(lora_target_names(unet))
    adapted = [(n, up, down) for n, up, down in pairs if n in peft_names]
    merged = [(n, up, down) for n, up, down in pairs if n not in peft_names]
    if not adapted:
        raise CheckpointError("the official LoRA list adapts no Linear/Conv module of this UNet")
    ranks = {n: down.shape[0] for n, _, down in adapted}
    base_rank = Counter(ranks.values()).most_common(1)[0][0]
    lora = LoraSettings(rank=base_rank, alpha=None, dropout=0.0, target_modules=sorted(ranks),
                        rank_pattern={n: r for n, r in ranks.items() if r != base_rank})
    make_student(unet, lora, guidance_embed_dim)
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


def load_official_lora(path: str | Path, unet: nn.Module, module_names: Sequence[str] | None = None,
                       guidance_embed_dim: int = 256, guidance_seed: int = GUIDANCE_PROJECTION_SEED) -> nn.Module:
    """Load an official T2V-Turbo ``unet_lora.pt`` into ``unet`` (made a student in place).

    Args:
        path: the list file [up0, down0, up1, down1, ...] (read with ``weights_only=True``).
        unet: a plain teacher UNet (no adapter yet), with or without ``time_embedding.cond_proj``.
        module_names: the module of each pair, in file order; default :func:`ms_official_module_names`
            (ModelScope). VideoCrafter2 passes its own (lvdm order mapped to our names).
        guidance_embed_dim: input width of the guidance projection.
        guidance_seed: seed of the re-created guidance projection when the UNet has none (module docstring).

    Raises:
        CheckpointError: not a list, wrong length, or a pair whose shapes do not fit; the message names the
            first bad pair index and its module.
    """
    if any("lora_A" in n for n, _ in unet.named_modules()):
        raise CheckpointError("this UNet already carries a LoRA adapter; load the official LoRA into a fresh teacher")
    names = list(module_names) if module_names is not None else ms_official_module_names(unet)
    pairs = validate_official_lora(load_torch_file(path), unet, names, guidance_embed_dim)
    return convert_official_lora(pairs, unet, guidance_embed_dim, guidance_seed)


# --------------------------------------------------------------------------------------------- peft files
def _strip_peft_key(key: str) -> str:
    for prefix in ("base_model.model.", "unet."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key.replace(f".{ADAPTER}.weight", ".weight")


def read_peft_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """LoRA weights (scale folded into ``lora_B``, names without peft/diffusers prefixes) + the guidance weight.

    ``path`` is a peft folder (adapter_model.safetensors + adapter_config.json) or a single .safetensors
    (with an optional adapter_config.json beside it; without one, scale 1 = alpha equal to rank).
    """
    path = Path(path)
    wfile = path / PEFT_WEIGHTS if path.is_dir() else path
    cfile = (path if path.is_dir() else path.parent) / PEFT_CONFIG
    config = json.loads(cfile.read_text()) if cfile.is_file() else {}
    state = {_strip_peft_key(k): v for k, v in load_weights(wfile).items()}
    guidance = state.pop(GUIDANCE_KEY, None)
    lora = {k: v for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}
    if not lora:
        raise CheckpointError(f"{wfile} has no LoRA weights (no '*.lora_A.weight' / '*.lora_B.weight' keys)")
    # peft: scaling = alpha / r (alpha / sqrt(r) with rsLoRA), alpha from alpha_pattern or lora_alpha
    alpha0, rs = config.get("lora_alpha"), bool(config.get("use_rslora"))
    for key in [k for k in lora if ".lora_B." in k]:
        r = lora[key].shape[1]
        alpha = _pattern_value(config.get("alpha_pattern") or {}, key.rsplit(".lora_B.", 1)[0])
        alpha = float(alpha if alpha is not None else alpha0 if alpha0 is not None else r)
        scale = alpha / r**0.5 if rs else alpha / r
        if scale != 1.0:
            lora[key] = lora[key] * scale
    if guidance is not None:
        lora[GUIDANCE_KEY] = guidance
    meta = {"format": "peft", "base_model": config.get("base_model_name_or_path")}
    return lora, meta


def _pattern_value(patterns: dict[str, Any], name: str) -> Any:
    """peft's rank/alpha pattern lookup: a key matches a module name or a dotted suffix of it (regex allowed)."""
    import re

    for pat, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?(?:{pat})", name):
            return value
    return None


# --------------------------------------------------------------------------------------------- any format
def detect_student_format(path: str | Path) -> str:
    """``"t2vturbo"`` (our student folder / .safetensors), ``"peft"`` (peft/diffusers LoRA), ``"official"`` (a
    T2V-Turbo v1 ``unet_lora.pt`` list) or ``"v2"`` (a released T2V-Turbo-v2 whole UNet, ``unet_mg.pt`` /
    ``unet_no_mg.pt``: an lvdm state dict with ``time_cond_proj.weight``; motion-guided when it also holds
    ``motion_cond_proj`` / ``combine_proj``, decided from the keys, not the file name).

    Raises:
        CheckpointError: the path is missing or holds none of these.
    """
    path = Path(path)
    if path.is_dir():
        if (path / STUDENT_META).is_file() or (path / STUDENT_FILE).is_file():
            return "t2vturbo"
        if (path / PEFT_WEIGHTS).is_file():
            return "peft"
        if (path / "unet_lora.pt").is_file():
            return "official"
        raise CheckpointError(f"{path} holds no student: expected student.json (t2vturbo distill), "
                              f"{PEFT_WEIGHTS} (peft) or unet_lora.pt (official T2V-Turbo)")
    if not path.is_file():
        raise CheckpointError(f"student not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                keys, metadata = list(fh.keys()), fh.metadata() or {}
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for broken files
            raise CheckpointError(f"cannot read {path} ({err}); write it again") from None
        side = student_meta_path(path)
        side_format = json.loads(side.read_text()).get("format") if side.is_file() else None
        if metadata.get("format") == FORMAT_NAME or side_format == FORMAT_NAME:
            return "t2vturbo"
        if any(".lora_A." in k or ".lora_B." in k for k in keys):
            return "peft"
        raise CheckpointError(f"{path} has no LoRA weights (no '*.lora_A.weight' keys); not a student file")
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        obj = load_torch_file(path)
        if isinstance(obj, (list, tuple)):
            return "official"
        if isinstance(obj, dict) and "time_cond_proj.weight" in obj and any(k.startswith("input_blocks.") for k in obj):
            return "v2"
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, but an official T2V-Turbo unet_lora.pt is a "
                              "list of tensors and a T2V-Turbo-v2 unet_mg.pt an lvdm UNet state dict with "
                              "time_cond_proj; pass our student folder or a peft .safetensors instead")
    raise CheckpointError(f"unknown student file type {path.suffix!r} for {path}: pass a student folder, "
                          "a .safetensors LoRA or an official unet_lora.pt")


def _default_module_names(unet: nn.Module) -> list[str]:
    """The release order for this UNet: VideoCrafter2's (fps-conditioned, :mod:`t2vturbo.convert`) or ModelScope's."""
    if getattr(unet, "fps_embedding", None) is not None:
        from .convert import layout_of, vc2_lora_module_names

        return vc2_lora_module_names(layout_of(unet))
    return ms_official_module_names(unet)


def load_any_student(path: str | Path, parts: Any, module_names: Sequence[str] | None = None) -> nn.Module:
    """Make ``parts.unet`` the student stored at ``path`` (any of :func:`detect_student_format`'s formats).

    Args:
        path: our student folder / .safetensors, a peft LoRA folder or file, or an official ``unet_lora.pt``.
        parts: the teacher parts (:class:`t2vturbo.teachers.TeacherParts`) the student was distilled from.
        module_names: official list files only: the module of each pair (default: the model's release order).

    Returns:
        ``parts.unet``, now a student (peft adapter + guidance projection), in eval mode.
    """
    from .student import load_student_weights, read_student

    path = Path(path)
    kind = detect_student_format(path)
    unet = parts.unet
    if kind == "v2":
        unet = load_v2_student(path, parts)
    elif kind == "t2vturbo":
        state, meta = read_student(path)
        load_student_weights(unet, state, meta)
        if hasattr(unet, "motion_condition"):  # distilled with distill.motion: a v2-style motion-guided student
            parts.extra["v2_motion"] = True
    elif kind == "peft":
        state, meta = read_peft_lora(path)
        load_student_weights(unet, state, meta)
    else:
        file = path / "unet_lora.pt" if path.is_dir() else path
        names = module_names if module_names is not None else _default_module_names(unet)
        load_official_lora(file, unet, names)
    unet._t2vturbo_source = {"path": str(path), "format": kind}
    return unet.eval()


def load_v2_student(path: str | Path, parts: Any) -> nn.Module:
    """Replace ``parts.unet`` by a released T2V-Turbo-v2 UNet (whole weights, not an adapter), checked key by key
    against the VideoCrafter2 conversion the parts hold; a model that is not a VC2 conversion is refused."""
    from .convert import build_vc2_v2_unet

    if getattr(parts.unet, "fps_embedding", None) is None:
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
    parts.extra["v2_motion"] = hasattr(unet, "motion_condition")
    return parts.unet


def load_merged_student(path: str | Path, parts: Any) -> nn.Module:
    """:func:`load_any_student`, then the LoRA merged into the weights: the form to sample with (an unmerged
    adapter costs ~50% more per UNet call)."""
    from .student import lora_layers, merge_lora

    load_any_student(path, parts)
    return merge_lora(parts.unet) if lora_layers(parts.unet) else parts.unet  # a v2 UNet has whole weights


# --------------------------------------------------------------------------------------------- what a student records
def recorded_student_meta(student_path: str | Path) -> dict:
    """What a student records about itself (our student.json, or a peft adapter config); {} if nothing."""
    path = Path(student_path)
    kind = detect_student_format(path)
    if kind == "t2vturbo":
        meta = student_meta_path(path)
    elif kind == "peft":
        meta = (path if path.is_dir() else path.parent) / PEFT_CONFIG
    else:
        return {}
    return json.loads(meta.read_text()) if meta.is_file() else {}


def base_model_of(meta: dict) -> str | None:
    """The base model in what a student records: student.json ``base_model`` or a peft config's base model."""
    return meta.get("base_model") or meta.get("base_model_name_or_path")
