"""Recipes: YAML mapped onto typed dataclasses, with ``a.b=value`` overrides from the command line.

Unknown keys, wrong types, values out of range (:mod:`t2vturbo.recipe_checks`, run whenever a Recipe is made) and
missing files are rejected with one line naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .recipe_checks import check_values, looks_like_path, missing_files


@dataclass
class ModelConfig:
    #: "tiny" (embedded), a diffusers-layout folder, or a hub id in the local HF cache
    teacher: str = "tiny"
    #: compute dtype of the frozen base weights: float32, bfloat16, float16
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    #: "auto" = cuda if available else cpu; or "cpu", "cuda", "mps" (recipe_checks.DEVICES)
    device: str = "auto"


@dataclass
class VideoConfig:
    frames: int = 16
    height: int = 256
    width: int = 256
    #: frame rate; also fed to fps-conditioned teachers (VideoCrafter2)
    fps: int = 8


@dataclass
class LoraConfig:
    rank: int = 32
    #: None = rank (scale 1, as the official release)
    alpha: float | None = None
    dropout: float = 0.1
    #: "all" = the family's default targets (every Linear/Conv2d/Conv3d of a UNet, the attention and FFN linears
    #: of a transformer), or a list of module names / name suffixes
    target_modules: str | list[str] = "all"
    #: per-module ranks (module name -> rank) where they differ from ``rank`` (peft's rank_pattern)
    rank_pattern: dict[str, int] = field(default_factory=dict)


@dataclass
class MotionConfig:
    """T2V-Turbo-v2's motion guidance (off at scale 0): the teacher's ODE step is pushed towards the motion of
    the training clip (MotionClone's temporal-attention prior, the clip DDIM-inverted to the step's timestep) and
    the student learns the motion guidance scale as an input (``motion_cond_proj`` / ``combine_proj``)."""

    #: motion_gs: the guidance scale (the reference's 0.05); 0 = off, a v1 student
    scale: float = 0.0
    #: solver indices >= (1 - percentage) N get the guidance; the others get the embedding of 0 (reference: 0.5)
    percentage: float = 0.5
    #: the energy's weight before its gradient is taken (the reference's temp_loss_scale)
    loss_scale: float = 100.0


@dataclass
class DistillConfig:
    #: N: DDIM solver grid size
    num_ddim_timesteps: int = 50
    #: k: the solver skips this many training timesteps per step
    skip: int = 20
    w_min: float = 5.0
    w_max: float = 15.0
    loss: Literal["huber", "l2"] = "huber"
    huber_c: float = 0.001
    #: "online": target from the student under no_grad (the reference); "ema": an EMA copy of the LoRA weights
    target: Literal["online", "ema"] = "online"
    ema_decay: float = 0.95
    guidance_embed_dim: int = 256
    num_train_timesteps: int = 1000
    #: T2V-Turbo-v2's motion guidance and the student's motion projections (off unless motion.scale > 0)
    motion: MotionConfig = field(default_factory=MotionConfig)


@dataclass
class RewardConfig:
    #: registry name (hpsv2.1, viclip, internvideo2, tiny-image, ...) or module.path:factory
    name: str = ""
    #: beta: the loss subtracts weight * reward
    weight: float = 1.0
    #: explicit weight file (else the HF cache, else a clear error)
    checkpoint: str | None = None
    #: image rewards: M random frames decoded; video rewards: frames evenly strided (None = the reward's own)
    frames: int | None = None
    #: precision of the frozen reward model's weights (float32, bfloat16, float16); the reward's gradient flows
    #: back into the float32 frames either way. bfloat16 halves the reward's weight memory.
    dtype: str = "float32"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    #: "tiny-world" (procedural, embedded), "folder" (videos + captions CSV/JSONL), "webdataset" (tar shards of
    #: mp4 + txt/json, as video2dataset writes) or "latents" (a dataset written by ``t2vturbo prepare``)
    source: Literal["tiny-world", "folder", "webdataset", "latents"] = "tiny-world"
    #: folder of videos (folder), shard pattern "shards/{00000..00099}.tar" (webdataset), prepared folder (latents)
    path: str | None = None
    #: CSV or JSONL with columns path, caption (relative to data.path); default: data.path/captions.{csv,jsonl}
    captions: str | None = None
    #: processes that read and decode clips ahead of the step (None: on a GPU one per core beyond the first, at
    #: most 4; on the CPU none, since decoding would take cores from the model)
    num_workers: int | None = None
    #: frames are taken at this rate, true speed, from a random window of each clip (None: video.fps), as the
    #: paper's loader does; a clip shorter than the window is taken whole at the rate that fits it
    sample_fps: float | None = None
    #: where a window starts: "random" (any time, as the paper's loader) or "keyframe" (the keyframe at or before
    #: a random time: nothing before the window is decoded, about half the decoding; the starts are the clip's
    #: keyframes, every ~2 s in web video)
    window_start: Literal["random", "keyframe"] = "random"


@dataclass
class FsdpConfig:
    """``train.parallel: fsdp``: what a user tunes of FSDP2 (torch's ``fully_shard``; one unit per block of the
    family's network, then the network)."""

    #: free each unit's gathered weights after its forward (less memory, one more all-gather in the backward)
    reshard_after_forward: bool = True
    #: keep the sharded parameters, gradients and optimiser states in CPU memory (CUDA only)
    cpu_offload: bool = False


@dataclass
class TrainConfig:
    max_steps: int = 10000
    seed: int = 0
    #: several processes: "ddp" (every rank holds the whole network) or "fsdp" (FSDP2: parameters, gradients and
    #: optimiser states sharded across ranks; the frozen rewards are replicated)
    parallel: Literal["ddp", "fsdp"] = "ddp"
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)
    batch_size: int = 1
    learning_rate: float = 1e-5
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    #: "adamw" or "adamw8bit" (needs bitsandbytes on CUDA)
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    #: a non-finite loss skips the step; this many in a row stop the run (with a checkpoint)
    max_nonfinite: int = 10
    #: VAE-decode at most this many frames at once (0 = all; with reward_checkpointing 2) in the reward branch
    decode_chunk: int = 0
    #: keep no VAE-decoder or reward-model activations for the rewards' backward: each chunk of frames is
    #: decoded again there, and each reward model runs again, one at a time
    reward_checkpointing: bool = True
    #: with reward_checkpointing off: still decode the reward frames again in the backward (chunks of
    #: decode_chunk), keeping no decoder activations; the reward models keep theirs (one more decode per step)
    decode_checkpointing: bool = False
    #: the rewards' gradient first, on a student prediction made without a graph: the reward branch and the
    #: student's graph are never alive together (one more student forward without grad)
    split_reward_backward: bool = False
    #: torch CPU threads (0 = torch's default)
    num_threads: int = 0
    #: train the whole network instead of a LoRA adapter (the ``lora`` section is then unused): every parameter
    #: of the teacher's network, its guidance projection (and v2's motion projections) trains in fp32, and the
    #: teacher's passes (the ODE step, the motion prior) run a frozen copy of the original network, made before
    #: training in model.dtype (under FSDP both are sharded). Costs the network's weights once more, and fp32
    #: weights + gradients + AdamW states for all of it (t2vturbo distill --dry-run counts it). The student is
    #: saved whole (student.json ``full_finetune: true``) and exports to a stock pipeline (--format diffusers)
    full_finetune: bool = False
    #: encode every caption of the data (and sample.prompts) once at setup, then free the text encoders: the
    #: teacher's and each reward's text tower (their weights are never needed again). Costs the teacher's text
    #: states per caption (L x D, e.g. 77 x 1024 in the model dtype for ModelScope): for caption sets that fit
    cache_text: bool = False


@dataclass
class SampleConfig:
    """Videos written at the end of a run (and the defaults of `t2vturbo sample` for this student)."""

    prompts: list[str] = field(default_factory=list)
    steps: int = 4
    guidance: float = 7.5
    seed: int = 0


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    rewards: list[RewardConfig] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    #: where metrics, checkpoints and the student go (the CLI's --output-dir wins)
    output_dir: str = "runs/distill"

    def __post_init__(self):
        check_values(self)  # every value before anything loads (the dry run too)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- building dataclasses from plain data
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value is False and "no" in typing.get_args(tp):  # YAML 1.1 reads a bare `no` as false
            return "no"
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {_type_name(tp)}")
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types by dotted key."""
    where = prefix or "recipe"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            dotted = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"unknown key '{dotted}' (known under {where}: {', '.join(sorted(names))})")
    kwargs = {}
    for k, v in data.items():
        dotted = f"{prefix}.{k}" if prefix else k
        kwargs[k] = _convert(v, hints[k], dotted)
    return cls(**kwargs)  # Recipe.__post_init__ checks the values (recipe_checks), each error naming its key


# ---------------------------------------------------------------- YAML + overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.max_steps=20`` -> (["train", "max_steps"], 20); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            idx = _list_index(node, part, path[: i + 1])
            node = node[idx]
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list):
        node[_list_index(node, last, path)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[:-1])} is not a mapping")


def _list_index(node: list, part: str, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {'.'.join(path)}: index {part} is out of range (list has {len(node)} items)")
    return int(part)


def load_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), check: bool = True) -> Recipe:
    """Read a YAML recipe (or start from defaults when ``path`` is None), apply overrides, validate.

    Args:
        check: also require the files the recipe names to exist (off for --dry-run, which lists them).
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError(f"recipe {path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {path} must be a YAML mapping at the top level")
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    recipe = build(Recipe, data)
    if check:
        check_files(recipe)
    return recipe


#: what each built-in reward reads when its checkpoint is not given (hub repo, file; file None = whole repo)
REWARD_DOWNLOADS = {
    "hpsv2": [("xswu/HPSv2", "HPS_v2_compressed.pt")],
    "hpsv2.1": [("xswu/HPSv2", "HPS_v2.1_compressed.pt")],
    "clip": [("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "open_clip_model.safetensors")],
    "pickscore": [("yuvalkirstain/PickScore_v1", None), ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", None)],
    "viclip": [("OpenGVLab/ViCLIP", "ViClip-InternVid-10M-FLT.pth")],
    "internvideo2": [("OpenGVLab/InternVideo2-Stage2_1B-224p-f4", "InternVideo2-stage2_1b-224p-f4.pt"),
                     ("google-bert/bert-large-uncased", "vocab.txt")],
}
BUILT_IN_TEACHERS = ("tiny", "tiny-wan", "tiny-wan22", "tiny-wan22-5b")


def downloads(recipe: Recipe) -> list[tuple[str, bool]]:
    """The ``hf download`` commands a recipe's weights need (teacher hub id, reward files without an explicit
    checkpoint), each with whether it is already in the local Hugging Face cache; the built-in tiny models and
    local paths need none."""
    from .hub import cached_hub_file

    cmds: list[tuple[str, bool]] = []
    teacher = recipe.model.teacher
    if teacher not in BUILT_IN_TEACHERS and not looks_like_path(teacher) and not Path(teacher).expanduser().exists():
        cmds.append((f"hf download {teacher}", _cached_repo(teacher)))
    for r in recipe.rewards:
        if r.checkpoint:
            continue
        for repo, file in REWARD_DOWNLOADS.get(r.name, []):
            cmd = f"hf download {repo}" + (f" {file}" if file else "")
            if all(c != cmd for c, _ in cmds):
                cmds.append((cmd, cached_hub_file(repo, file) is not None if file else _cached_repo(repo)))
    return cmds


def _cached_repo(repo: str) -> bool:
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo, local_files_only=True)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable offline"
        return False


def missing_packages(recipe: Recipe) -> list[str]:
    """Optional packages the recipe asks for that are not installed (one line each, with the pip command)."""
    import importlib.util

    out = []
    if recipe.train.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        out.append("train.optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes (CUDA), or set "
                   "train.optimizer=adamw")
    return out


def check_files(recipe: Recipe) -> None:
    """Files a recipe names must exist (checked before any weights are loaded)."""
    problems = missing_files(recipe)
    if problems:
        raise ConfigError(problems[0])


#: keys a resumed run may change: how long it goes on and how it runs, not what it trains
RESUMABLE_CHANGES = ("train.max_steps", "train.num_threads", "train.checkpoint_every", "train.keep_checkpoints",
                     "train.decode_chunk", "train.reward_checkpointing", "train.split_reward_backward",
                     "output_dir", "model.device", "sample.prompts", "sample.steps", "sample.guidance", "sample.seed")


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def recipe_changes(saved: dict, recipe: Recipe, explicit: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The dotted keys where ``recipe`` differs from a run's saved ``config.yaml`` (as loaded by yaml), except
    those a resume may change (RESUMABLE_CHANGES). ``train.max_steps`` may change only when given ``explicit``ly
    (an override on this command line): resuming without the run's own overrides must not quietly retarget it."""
    old, new = _flatten(saved), _flatten(json.loads(json.dumps(recipe.to_dict(), default=str)))
    default = _flatten(json.loads(json.dumps(Recipe().to_dict(), default=str)))
    keys = sorted(set(old) | set(new))
    # a key the saved run predates counts as unchanged while it keeps its default
    changed = [k for k in keys if old.get(k) != new.get(k) and not (k not in old and new.get(k) == default.get(k))]
    return [k for k in changed if not k.startswith(RESUMABLE_CHANGES)
            or (k == "train.max_steps" and k not in explicit)]


def dump_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe as YAML (atomically)."""
    from .safeio import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
