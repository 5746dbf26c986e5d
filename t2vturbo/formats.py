"""Every student format in one place (docs/formats.md §3): detect any of them, read and load ours and a peft
LoRA, hand a family's own (the official T2V-Turbo ``unet_lora.pt`` list, a T2V-Turbo-v2 UNet) to the family
(:meth:`Teacher.load_student_file`), and read what a student records about itself (its base model, recipe,
defaults). Writing: ours is :func:`t2vturbo.student.save_student`; the export layouts are the family's
(:meth:`Teacher.write_adapter`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import CheckpointError
from .safeio import load_torch_file, load_weights
from .student import ADAPTER, FORMAT_NAME, STUDENT_FILE, STUDENT_META, student_meta_path

if TYPE_CHECKING:
    from .teachers import Teacher

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


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
    # the guidance projection travels as a modules_to_save weight under its own name (``*.cond_proj.weight``)
    guidance = {k: v for k, v in state.items() if k.endswith(".cond_proj.weight")}
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
    lora.update(guidance)
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


def load_any_student(path: str | Path, teacher: Teacher) -> dict:
    """Make the teacher's network the student stored at ``path`` (any of :func:`detect_student_format`'s
    formats), in eval mode; a family's own formats (official v1 list, v2 UNet) are the family's to load
    (:meth:`Teacher.load_student_file`).

    Returns:
        the sampling defaults the format implies ({} for ours and peft's: they record their own).
    """
    from .student import load_student_weights, read_student

    path = Path(path)
    kind = detect_student_format(path)
    implied: dict = {}
    if kind == "t2vturbo":
        state, meta = read_student(path)
        load_student_weights(teacher, state, meta)
    elif kind == "peft":
        state, meta = read_peft_lora(path)
        load_student_weights(teacher, state, meta)
    else:
        implied = teacher.load_student_file(path, kind)
    teacher.network.eval()
    return implied


def load_merged_student(path: str | Path, teacher: Teacher) -> dict:
    """:func:`load_any_student`, then the LoRA merged into the weights: the form to sample with (an unmerged
    adapter costs ~50% more per network call). Returns what :func:`load_any_student` returns."""
    from .student import lora_layers, merge_lora

    implied = load_any_student(path, teacher)
    if lora_layers(teacher.network):  # a v2 UNet has whole weights
        merge_lora(teacher.network)
    return implied


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
