"""The student: the teacher's own network + a peft LoRA adapter + a guidance projection (``cond_proj`` of the
family's guidance module, :attr:`Teacher.guidance_module`).

The teacher is the same module with the adapter disabled and no guidance embedding: there is never a second copy
of the network in memory. Which modules get the adapter and where the projection sits are the family's answers
(:meth:`Teacher.lora_targets`, :meth:`Teacher.guidance_embedder`); nothing here knows a family.

A saved student is a folder (or a single ``.safetensors`` with a ``.json`` beside it) holding:
- ``student.safetensors``: peft LoRA keys (``<module>.lora_A.weight`` / ``<module>.lora_B.weight``, as
  ``peft.get_peft_model_state_dict`` names them) plus the guidance projection's weight
  (``time_embedding.cond_proj.weight`` [C0, 256] on a UNet; one per denoiser where the family has several, e.g.
  under ``transformer.`` and ``transformer_2.`` on Wan2.2-A14B, :attr:`Teacher.guidance_keys`);
- ``student.json``: ``{"format": "t2vturbo-student", "version": 1, "base_model", "lora": {...},
  "guidance_embed_dim", "schedule": {...}, "default_guidance", "default_steps", "fps"}``.

A fully fine-tuned student (``train.full_finetune``, :func:`make_full_student`) has no adapter: the whole network
trains, and the teacher's passes run a frozen copy of the original network (:func:`frozen_copy`). Its
``student.safetensors`` is the network's whole state dict (the guidance projection and motion projections under
their module names, the same keys as above), and its ``student.json`` says ``"full_finetune": true`` with
``"lora": null``; it loads onto the base model it names.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .config import LoraConfig
from .errors import CheckpointError
from .safeio import atomic_path, load_weights

if TYPE_CHECKING:
    from .teachers.base import Teacher

ADAPTER = "default"
#: key prefix of a v2-style student's motion projections (motion_cond_proj, combine_proj) in our student file
MOTION_PREFIX = "motion_condition."
STUDENT_FILE = "student.safetensors"
STUDENT_META = "student.json"
FORMAT_NAME = "t2vturbo-student"


#: the LoRA settings are the recipe's ``lora`` section, one dataclass (paper: rank 32 MS / 64 VC2, alpha = rank)
LoraSettings = LoraConfig


def match_module_names(names: list[str], wanted: str | list[str]) -> list[str]:
    """The ``names`` that ``wanted`` (a module name or list of them) names exactly or by a dotted suffix."""
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    found = [n for n in names if any(n == w or n.endswith("." + w) for w in wanted)]
    if not found:
        raise CheckpointError(f"lora.target_modules {wanted} match no module the adapter can wrap")
    return found


def _module_dims(mod: nn.Module) -> tuple[int, int]:
    if isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features
    return mod.in_channels, mod.out_channels


def resolve_lora_config(teacher: Teacher, lora: LoraSettings):
    """A peft LoraConfig for the teacher's network: its targets (``teacher.lora_targets``), rank min(r, in, out)
    per module as the official files."""
    from peft import LoraConfig

    modules = dict(teacher.network.named_modules())
    targets = teacher.lora_targets(lora.target_modules)
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


def add_guidance_projection(teacher: Teacher, embed_dim: int = 256, init: str = "zeros", seed: int = 0) -> nn.Linear:
    """Give the teacher's guidance module (a TimestepEmbedding) a ``cond_proj`` Linear(embed_dim -> C0, no bias)
    (diffusers' ``time_cond_proj``); every one of :attr:`Teacher.guidance_modules` gets its own. Returns the
    first.

    ``init="zeros"`` makes the fresh student equal the teacher; ``"kaiming"`` reproduces nn.Linear's default
    init from ``seed`` (the official release's never-trained projection).
    """
    made = []
    for te in teacher.guidance_embedders():
        c0 = te.linear_1.in_features
        param = next(te.parameters())
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
        made.append(te.cond_proj)
    return made[0]


def guidance_projection(teacher: Teacher) -> nn.Linear | None:
    """A student's guidance projection; None on a plain teacher (or an exported student, guidance folded)."""
    return getattr(teacher.guidance_embedder(), "cond_proj", None)


def make_student(teacher: Teacher, lora: LoraSettings, guidance_embed_dim: int = 256) -> nn.Module:
    """Turn the teacher's network into the student in place: LoRA adapter + guidance projection (both
    trainable)."""
    from peft import inject_adapter_in_model

    net = teacher.network
    net.requires_grad_(False)
    inject_adapter_in_model(resolve_lora_config(teacher, lora), net, adapter_name=ADAPTER)
    net.train(net.training)  # peft makes its modules (LoRA dropout) in training mode: follow the network's mode
    if guidance_projection(teacher) is None:
        add_guidance_projection(teacher, guidance_embed_dim)
    keys = set(teacher.guidance_keys)
    for name, p in net.named_parameters():
        p.requires_grad_("lora_" in name or name in keys)
    net._t2vturbo_lora = asdict(lora)
    return net


FULL_MARK = "_t2vturbo_full_finetune"


def frozen_copy(net: nn.Module) -> nn.Module:
    """A frozen deep copy of the teacher's network, made before the student's surgery: what the teacher's passes
    run when the student is the whole network (eval mode, no gradients, the network's dtype)."""
    import copy

    frozen = copy.deepcopy(net)
    frozen.requires_grad_(False).eval()
    return frozen


def make_full_student(teacher: Teacher, guidance_embed_dim: int = 256) -> nn.Module:
    """Turn the teacher's network into a fully fine-tuned student in place: a guidance projection is added and
    every parameter of the network trains (no adapter). The teacher is then a :func:`frozen_copy` made before."""
    net = teacher.network
    if lora_layers(net):
        raise CheckpointError("this network already carries a LoRA adapter; a full fine-tune starts from the base")
    if guidance_projection(teacher) is None:
        add_guidance_projection(teacher, guidance_embed_dim)
    net.requires_grad_(True)
    setattr(net, FULL_MARK, True)
    return net


def student_for_recipe(teacher: Teacher, recipe) -> nn.Module:
    """The recipe's student surgery on ``teacher``'s network, in place: a LoRA adapter (its init drawn from
    ``train.seed``, the same on every rank) or, with ``train.full_finetune``, the whole network; a guidance
    projection either way, and T2V-Turbo-v2's motion projections when ``distill.motion`` is on. The trainable
    tensors stay in the network's dtype (:func:`train_in_fp32` makes them fp32)."""
    r = recipe
    if r.train.full_finetune:
        make_full_student(teacher, r.distill.guidance_embed_dim)
    else:
        torch.manual_seed(r.train.seed)
        make_student(teacher, r.lora, r.distill.guidance_embed_dim)
    if r.distill.motion.scale > 0:  # a family that cannot learn it refuses here: no shape fixes that
        teacher.add_motion_condition()
    return teacher.network


def train_in_fp32(net: nn.Module) -> None:
    """The trainable tensors in fp32, even over a bf16 / fp16 base (their updates would round away otherwise)."""
    for p in trainable_parameters(net):
        p.data = p.data.float()


def is_full_student(net: nn.Module) -> bool:
    """Whether ``net`` is a fully fine-tuned student (:func:`make_full_student`), its DDP wrapper looked through."""
    return bool(getattr(getattr(net, "module", net), FULL_MARK, False))


def trainable_parameters(net: nn.Module) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


def set_adapter_enabled(net: nn.Module, enabled: bool) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for mod in net.modules():
        if isinstance(mod, BaseTunerLayer):
            mod.enable_adapters(enabled)


@contextlib.contextmanager
def teacher_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Within the block the network is the teacher: adapters off (call it with no guidance embedding)."""
    set_adapter_enabled(net, False)
    try:
        yield net
    finally:
        set_adapter_enabled(net, True)


def split_dropouts(net: nn.Module) -> tuple[list[nn.Dropout], list[nn.Dropout]]:
    """(the base model's dropout modules, the LoRA adapter's dropout modules) of a student network."""
    base: list[nn.Dropout] = []
    lora: list[nn.Dropout] = []
    for name, module in net.named_modules():
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


def student_state_dict(teacher: Teacher) -> dict[str, torch.Tensor]:
    """LoRA weights (peft names, adapter name stripped), the guidance projection, and a v2-style student's motion
    projections; a fully fine-tuned student's whole network state dict (the same keys for those projections)."""
    from peft import get_peft_model_state_dict

    if is_full_student(teacher.network):
        return {k: v.detach().cpu().contiguous() for k, v in teacher.network.state_dict().items()}
    sd = dict(get_peft_model_state_dict(teacher.network, adapter_name=ADAPTER))
    for key, embedder in zip(teacher.guidance_keys, teacher.guidance_embedders(), strict=True):
        sd[key] = embedder.cond_proj.weight
    sd.update({f"{MOTION_PREFIX}{k}": v for k, v in teacher.motion_condition_state().items()})
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_student(teacher: Teacher, folder: str | Path, meta: dict[str, Any]) -> Path:
    """Atomically write ``folder`` with student.safetensors + student.json."""
    from safetensors.torch import save_file

    folder = Path(folder)
    info = {"format": FORMAT_NAME, "version": 1, "lora": getattr(teacher.network, "_t2vturbo_lora", None),
            **({"full_finetune": True} if is_full_student(teacher.network) else {}), **meta}
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(student_state_dict(teacher), str(tmp / STUDENT_FILE), metadata={"format": FORMAT_NAME})
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


def load_student_weights(teacher: Teacher, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> nn.Module:
    """Make the teacher's network a student shaped by ``meta['lora']`` and load ``state`` into it (strict on LoRA
    keys)."""
    from peft import set_peft_model_state_dict

    lora_meta = dict(meta.get("lora") or {})
    ranks = {k.rsplit(".lora_A", 1)[0]: v.shape[0] for k, v in state.items() if ".lora_A." in k}
    if meta.get("full_finetune") or (not ranks and _whole_network(teacher, state)):
        return load_full_student(teacher, state)
    if not ranks:
        raise CheckpointError("student file has no LoRA weights (no '*.lora_A.weight' keys)")
    base_rank = lora_meta.get("rank") or max(ranks.values())
    lora = LoraSettings(
        rank=int(base_rank), alpha=lora_meta.get("alpha"), dropout=0.0, target_modules=sorted(ranks),
        rank_pattern={k: r for k, r in ranks.items() if r != base_rank},
    )
    keys = teacher.guidance_keys
    key = next((k for k in keys if k in state), None)
    gdim = state[key].shape[1] if key is not None else int(meta.get("guidance_embed_dim", 256))
    net = make_student(teacher, lora, gdim)
    lora_state = {k: v for k, v in state.items() if "lora_" in k}
    result = set_peft_model_state_dict(net, lora_state, adapter_name=ADAPTER)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise CheckpointError(f"student file does not fit this model: unexpected key {unexpected[0]}")
    with torch.no_grad():
        for k, embedder in zip(keys, teacher.guidance_embedders(), strict=True):
            if k in state:
                embedder.cond_proj.weight.copy_(state[k])
    motion = {k[len(MOTION_PREFIX):]: v for k, v in state.items() if k.startswith(MOTION_PREFIX)}
    if motion:
        teacher.attach_motion_condition(motion)
    net.requires_grad_(False)
    return net


def _whole_network(teacher: Teacher, state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` holds the network's own weights (a fully fine-tuned student without its student.json)."""
    own = set(teacher.network.state_dict())
    return any(k in own for k in state)


def load_full_student(teacher: Teacher, state: dict[str, torch.Tensor]) -> nn.Module:
    """Make the teacher's network the fully fine-tuned student ``state`` holds (its whole state dict, with the
    guidance projection and any motion projections), strictly: a key this base model lacks or misses is refused
    in one line. The network ends frozen (a student to sample with)."""
    keys = teacher.guidance_keys
    key = next((k for k in keys if k in state), None)
    if key is None:
        raise CheckpointError(f"fully fine-tuned student file has no guidance projection ({keys[0]})")
    net = make_full_student(teacher, int(state[key].shape[1]))
    motion = {k[len(MOTION_PREFIX):]: v for k, v in state.items() if k.startswith(MOTION_PREFIX)}
    if motion:
        teacher.attach_motion_condition(motion)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = next((k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)), None)
    if missing or unexpected or bad:
        what = (f"{missing[0]} is missing" if missing else f"unexpected key {unexpected[0]}" if unexpected
                else f"{bad} is {tuple(state[bad].shape)} there, {tuple(own[bad].shape)} here")
        raise CheckpointError(f"fully fine-tuned student does not fit this base model ({what}); load it onto the "
                              "base model its student.json names")
    net.load_state_dict(state, strict=True)
    net.requires_grad_(False)
    return net


def lora_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in net.named_modules() if isinstance(m, BaseTunerLayer)]


def merge_lora(net: nn.Module) -> nn.Module:
    """Merge the student's LoRA into the base weights (peft ``merge``) and drop the adapter modules, in place."""
    layers = lora_layers(net)
    if not layers:
        raise CheckpointError("this model has no LoRA adapter to merge")
    with torch.no_grad():
        for name, layer in layers:
            layer.merge(adapter_names=[ADAPTER])
            parent_name, _, child = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            setattr(parent, child, layer.get_base_layer())
    for attr in ("peft_config", "_t2vturbo_lora"):
        if attr in net.__dict__:
            delattr(net, attr)
    return net


def fold_guidance(embedder: nn.Module, guidance: float) -> nn.Module:
    """Fold a fixed guidance scale into the guidance module's ``linear_1.bias`` and remove its projection.

    Exact in real arithmetic: linear_1(t + cond_proj(embed(w))) = W1 t + (b1 + W1 cond_proj(embed(w))).
    """
    from .consistency import guidance_embedding

    proj = getattr(embedder, "cond_proj", None)
    if proj is None:
        raise CheckpointError("this model has no guidance projection (cond_proj) to fold")
    lin = embedder.linear_1
    with torch.no_grad():
        emb = guidance_embedding(torch.tensor([float(guidance)]), proj.in_features, dtype=torch.float64)
        c = emb[0] @ proj.weight.double().T  # the constant added to the timestep embedding
        shift = lin.weight.double() @ c
        if lin.bias is None:
            lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device))
        lin.bias.copy_((lin.bias.double() + shift).to(lin.bias.dtype))
    embedder.cond_proj = None
    return embedder
