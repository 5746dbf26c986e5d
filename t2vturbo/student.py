"""The student: the teacher's own UNet + a peft LoRA adapter + a guidance projection (``time_cond_proj``).

The teacher is the same module with the adapter disabled and no ``timestep_cond`` (so no guidance embedding):
there is never a second copy of the UNet in memory.

A saved student is a folder (or a single ``.safetensors`` with a ``.json`` beside it) holding:
- ``student.safetensors``: peft LoRA keys (``<module>.lora_A.weight`` / ``<module>.lora_B.weight``, as
  ``peft.get_peft_model_state_dict`` names them) plus ``time_embedding.cond_proj.weight`` [C0, 256];
- ``student.json``: ``{"format": "t2vturbo-student", "version": 1, "base_model", "lora": {...},
  "guidance_embed_dim", "schedule": {...}, "default_guidance", "default_steps", "fps"}``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .safeio import atomic_path, load_weights

ADAPTER = "default"
#: key prefix of a v2-style student's motion projections (motion_cond_proj, combine_proj) in our student file
MOTION_PREFIX = "motion_condition."
STUDENT_FILE = "student.safetensors"
STUDENT_META = "student.json"
GUIDANCE_KEY = "time_embedding.cond_proj.weight"
FORMAT_NAME = "t2vturbo-student"


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (paper: rank 32 MS / 64 VC2, alpha = rank, dropout 0.1)."""

    rank: int = 32
    alpha: float | None = None  # None = rank (scale 1, as the official release)
    dropout: float = 0.0
    #: "all" = every nn.Linear / nn.Conv2d / nn.Conv3d of the UNet (the official release's choice),
    #: or a list of module names / name suffixes
    target_modules: str | list[str] = "all"
    rank_pattern: dict[str, int] = field(default_factory=dict)


#: where a Wan transformer's guidance projection sits (its time embedder is a diffusers TimestepEmbedding)
WAN_TIME_EMBEDDING = "condition_embedder.time_embedder"
#: the default LoRA targets of a Wan transformer: the attention and FFN linears of every block
WAN_LORA_PATTERN = r"^blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)$|^blocks\.\d+\.ffn\.net\.(0\.proj|2)$"


def is_transformer(net: nn.Module) -> bool:
    """A Wan-style video transformer (condition_embedder + blocks) rather than a UNet."""
    return hasattr(net, "condition_embedder") and hasattr(net, "blocks")


def time_embedding_path(net: nn.Module) -> str:
    return WAN_TIME_EMBEDDING if is_transformer(net) else "time_embedding"


def time_embedding_of(net: nn.Module) -> nn.Module:
    """The TimestepEmbedding that takes the guidance projection (``time_embedding`` of a UNet,
    ``condition_embedder.time_embedder`` of a Wan transformer); a DDP wrapper is looked through."""
    net = getattr(net, "module", net)
    return net.get_submodule(time_embedding_path(net))


def guidance_key(net: nn.Module) -> str:
    """The state-dict key of the guidance projection: ``time_embedding.cond_proj.weight`` on a UNet."""
    return f"{time_embedding_path(net)}.cond_proj.weight"


def lora_target_names(unet: nn.Module) -> list[str]:
    """Names of every module whose exact class is Linear, Conv2d or Conv3d (the official T2V-Turbo choice); on
    a Wan transformer, the attention and FFN linears of its blocks (WAN_LORA_PATTERN)."""
    import re

    names = []
    if is_transformer(unet):
        return [n for n, m in unet.named_modules() if type(m) is nn.Linear and re.match(WAN_LORA_PATTERN, n)]
    for name, mod in unet.named_modules():
        if type(mod) in (nn.Linear, nn.Conv2d, nn.Conv3d) and not name.endswith("cond_proj") \
                and not name.startswith("fps_embedding"):
            names.append(name)
    return names


def _module_dims(mod: nn.Module) -> tuple[int, int]:
    if isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features
    return mod.in_channels, mod.out_channels


def resolve_lora_config(unet: nn.Module, lora: LoraSettings):
    """A peft LoraConfig for ``unet``: explicit targets, rank min(r, in, out) per module as the official files."""
    from peft import LoraConfig

    modules = dict(unet.named_modules())
    if lora.target_modules == "all":
        targets = lora_target_names(unet)
    else:
        wanted = [lora.target_modules] if isinstance(lora.target_modules, str) else list(lora.target_modules)
        targets = [n for n in lora_target_names(unet) if any(n == w or n.endswith("." + w) for w in wanted)]
        if is_transformer(unet):  # any Linear of the transformer may be named explicitly
            targets = [n for n, m in modules.items() if type(m) is nn.Linear and not n.endswith("cond_proj")
                       and any(n == w or n.endswith("." + w) for w in wanted)]
        if not targets:
            raise CheckpointError(f"lora.target_modules {wanted} match no Linear/Conv module of the UNet")
    rank_pattern = dict(lora.rank_pattern)
    alpha = lora.alpha if lora.alpha is not None else lora.rank
    alpha_pattern = {}
    for name in targets:
        cin, cout = _module_dims(modules[name])
        r = min(rank_pattern.get(name, lora.rank), cin, cout)
        if r != lora.rank:
            rank_pattern[name] = r
            if lora.alpha is None:
                alpha_pattern[name] = r
    # Anchor names so that "conv_in" never also matches "...resnets.0.conv_in".
    return LoraConfig(
        r=lora.rank, lora_alpha=alpha, lora_dropout=lora.dropout, init_lora_weights=True,
        target_modules=targets,
        rank_pattern={f"^{k}$": v for k, v in rank_pattern.items()},
        alpha_pattern={f"^{k}$": v for k, v in alpha_pattern.items()},
    )


def add_guidance_projection(unet: nn.Module, embed_dim: int = 256, init: str = "zeros", seed: int = 0) -> nn.Linear:
    """Give ``unet.time_embedding`` a ``cond_proj`` Linear(embed_dim -> C0, no bias) (diffusers' ``time_cond_proj``).

    ``init="zeros"`` makes the fresh student equal the teacher; ``"kaiming"`` reproduces nn.Linear's default
    init from ``seed`` (the official release's never-trained projection).
    """
    te = time_embedding_of(unet)
    c0 = te.linear_1.in_features
    param = next(unet.parameters())
    proj = nn.Linear(embed_dim, c0, bias=False)
    if init == "zeros":
        nn.init.zeros_(proj.weight)
    else:
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / embed_dim**0.5  # nn.Linear default: kaiming_uniform(a=sqrt(5)) -> U(-1/sqrt(in), 1/sqrt(in))
        with torch.no_grad():
            proj.weight.copy_(torch.rand(proj.weight.shape, generator=gen) * 2 * bound - bound)
    te.cond_proj = proj.to(device=param.device, dtype=param.dtype)
    te.cond_proj.requires_grad_(True)
    return te.cond_proj


def make_student(unet: nn.Module, lora: LoraSettings, guidance_embed_dim: int = 256) -> nn.Module:
    """Turn the teacher UNet into the student in place: LoRA adapter + guidance projection (both trainable)."""
    from peft import inject_adapter_in_model

    unet.requires_grad_(False)
    inject_adapter_in_model(resolve_lora_config(unet, lora), unet, adapter_name=ADAPTER)
    if getattr(time_embedding_of(unet), "cond_proj", None) is None:
        add_guidance_projection(unet, guidance_embed_dim)
    key = guidance_key(unet)
    for name, p in unet.named_parameters():
        p.requires_grad_("lora_" in name or name == key)
    unet._t2vturbo_lora = asdict(lora)
    return unet


def trainable_parameters(unet: nn.Module) -> list[nn.Parameter]:
    return [p for p in unet.parameters() if p.requires_grad]


def set_adapter_enabled(unet: nn.Module, enabled: bool) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for mod in unet.modules():
        if isinstance(mod, BaseTunerLayer):
            mod.enable_adapters(enabled)


@contextlib.contextmanager
def teacher_mode(unet: nn.Module) -> Iterator[nn.Module]:
    """Within the block the UNet is the teacher: adapters off (call it with ``timestep_cond=None``)."""
    set_adapter_enabled(unet, False)
    try:
        yield unet
    finally:
        set_adapter_enabled(unet, True)


def split_dropouts(unet: nn.Module) -> tuple[list[nn.Dropout], list[nn.Dropout]]:
    """(the base model's dropout modules, the LoRA adapter's dropout modules) of a student UNet."""
    base: list[nn.Dropout] = []
    lora: list[nn.Dropout] = []
    for name, module in unet.named_modules():
        if isinstance(module, nn.Dropout):
            (lora if "lora_dropout" in name.split(".") else base).append(module)
    return base, lora


@contextlib.contextmanager
def dropout_off(modules: list[nn.Dropout]) -> Iterator[None]:
    """Within the block the given dropout modules are identities (their train/eval flag is restored after)."""
    saved = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        yield
    finally:
        for m, flag in zip(modules, saved, strict=True):
            m.training = flag


def student_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA weights (peft names, adapter name stripped) plus the guidance projection."""
    from peft import get_peft_model_state_dict

    sd = dict(get_peft_model_state_dict(unet, adapter_name=ADAPTER))
    sd[guidance_key(unet)] = time_embedding_of(unet).cond_proj.weight
    motion = getattr(unet, "motion_condition", None)  # a v2-style student (distill.motion): its projections
    if motion is not None:
        sd.update({f"{MOTION_PREFIX}{k}": v for k, v in motion.state_dict().items()})
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_student(unet: nn.Module, folder: str | Path, meta: dict[str, Any]) -> Path:
    """Atomically write ``folder`` with student.safetensors + student.json."""
    from safetensors.torch import save_file

    folder = Path(folder)
    info = {"format": FORMAT_NAME, "version": 1, "lora": getattr(unet, "_t2vturbo_lora", None), **meta}
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(student_state_dict(unet), str(tmp / STUDENT_FILE), metadata={"format": FORMAT_NAME})
        (tmp / STUDENT_META).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return folder


def student_meta_path(path: str | Path) -> Path:
    """Where our student records itself: ``FOLDER/student.json``, or ``NAME.json`` beside ``NAME.safetensors``."""
    path = Path(path)
    return path / STUDENT_META if path.is_dir() else path.with_suffix(".json")


def read_student(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a saved student (folder, or .safetensors with an optional .json beside it)."""
    path = Path(path)
    wfile, mfile = (path / STUDENT_FILE if path.is_dir() else path), student_meta_path(path)
    if not wfile.is_file():
        raise CheckpointError(f"no student weights at {wfile}; pass a folder written by `t2vturbo distill`")
    meta = json.loads(mfile.read_text()) if mfile.is_file() else {}
    return load_weights(wfile), meta


def load_student_weights(unet: nn.Module, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> nn.Module:
    """Make ``unet`` a student shaped by ``meta['lora']`` and load ``state`` into it (strict on LoRA keys)."""
    from peft import set_peft_model_state_dict

    lora_meta = dict(meta.get("lora") or {})
    ranks = {k.rsplit(".lora_A", 1)[0]: v.shape[0] for k, v in state.items() if ".lora_A." in k}
    if not ranks:
        raise CheckpointError("student file has no LoRA weights (no '*.lora_A.weight' keys)")
    base_rank = lora_meta.get("rank") or max(ranks.values())
    lora = LoraSettings(
        rank=int(base_rank), alpha=lora_meta.get("alpha"), dropout=0.0, target_modules=sorted(ranks),
        rank_pattern={k: r for k, r in ranks.items() if r != base_rank},
    )
    key = guidance_key(unet)
    gdim = state[key].shape[1] if key in state else int(meta.get("guidance_embed_dim", 256))
    make_student(unet, lora, gdim)
    lora_state = {k: v for k, v in state.items() if "lora_" in k}
    result = set_peft_model_state_dict(unet, lora_state, adapter_name=ADAPTER)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise CheckpointError(f"student file does not fit this UNet: unexpected key {unexpected[0]}")
    if key in state:
        with torch.no_grad():
            time_embedding_of(unet).cond_proj.weight.copy_(state[key])
    motion = {k[len(MOTION_PREFIX):]: v for k, v in state.items() if k.startswith(MOTION_PREFIX)}
    if motion:
        from .teachers.motion import attach_motion_condition

        attach_motion_condition(unet, motion)
    unet.requires_grad_(False)
    return unet


def enable_block_checkpointing(unet: nn.Module) -> int:
    """Activation checkpointing of every down/mid/up block (diffusers' UNet3DConditionModel does not support
    ``enable_gradient_checkpointing``). Only active while grad is enabled in training mode; returns the count.
    """
    from torch.utils.checkpoint import checkpoint

    if is_transformer(unet):  # diffusers' transformers checkpoint their own blocks
        unet.enable_gradient_checkpointing()
        return len(unet.blocks)
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    for block in blocks:
        if block is None or getattr(block, "_t2vturbo_checkpointed", False):
            continue
        inner = block.forward

        def forward(*args, _inner=inner, _block=block, **kwargs):
            if _block.training and torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        block.forward = forward
        block._t2vturbo_checkpointed = True
    return len([b for b in blocks if b is not None])


def lora_layers(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer)]


def merge_lora(unet: nn.Module) -> nn.Module:
    """Merge the student's LoRA into the base weights (peft ``merge``) and drop the adapter modules, in place."""
    layers = lora_layers(unet)
    if not layers:
        raise CheckpointError("this UNet has no LoRA adapter to merge")
    with torch.no_grad():
        for name, layer in layers:
            layer.merge(adapter_names=[ADAPTER])
            parent_name, _, child = name.rpartition(".")
            parent = unet.get_submodule(parent_name) if parent_name else unet
            setattr(parent, child, layer.get_base_layer())
    for attr in ("peft_config", "_t2vturbo_lora"):
        if attr in unet.__dict__:
            delattr(unet, attr)
    return unet
