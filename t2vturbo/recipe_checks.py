"""Every value of a recipe checked before anything loads: each number finite and in its range (one table,
:data:`BOUNDS`), the rules that tie two keys together, and the files a recipe names.

Each problem is one line naming the dotted recipe key and saying what to do (:class:`~t2vturbo.errors.ConfigError`).
The recipe's own dataclasses live in :mod:`t2vturbo.config`, which imports this module (never the reverse): the
functions here read any dataclass tree by its fields.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from .errors import ConfigError


class Bound(NamedTuple):
    """Where a number may lie: ``low``/``high`` (None = no end), each end in or out; ``hint`` says what to do."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    hint: str = ""


FINITE, NON_NEGATIVE, POSITIVE, AT_LEAST_1 = Bound(), Bound(0), Bound(0, low_open=True), Bound(1)
SEED = Bound(0, 2**32 - 1, hint="numpy's seeds are 32-bit")

#: every number of a recipe and where it may lie (a list's items as ``key[]``); tests/test_recipe_checks.py checks
#: that no numeric field of the recipe is left out
BOUNDS: dict[str, Bound] = {
    "video.frames": AT_LEAST_1, "video.height": AT_LEAST_1, "video.width": AT_LEAST_1, "video.fps": AT_LEAST_1,
    "lora.rank": AT_LEAST_1._replace(hint="to train the whole network instead set train.full_finetune=true"),
    "lora.alpha": POSITIVE._replace(hint="leave it out for alpha = rank"),
    "lora.dropout": Bound(0, 1, high_open=True),
    "distill.num_ddim_timesteps": AT_LEAST_1,
    "distill.skip": AT_LEAST_1,
    "distill.w_min": NON_NEGATIVE, "distill.w_max": NON_NEGATIVE,
    "distill.huber_c": POSITIVE,
    "distill.ema_decay": Bound(0, 1, low_open=True, high_open=True),
    # guidance_embedding divides by dim // 2 - 1 (an odd width is padded, so it need not be even)
    "distill.guidance_embed_dim": Bound(4),
    "distill.num_train_timesteps": AT_LEAST_1,
    "distill.motion.scale": NON_NEGATIVE._replace(hint="0 turns motion guidance off"),
    "distill.motion.percentage": Bound(0, 1, low_open=True),
    "distill.motion.loss_scale": POSITIVE,
    # the loss subtracts weight * reward: a negative weight makes the student lower that reward (a penalty)
    "rewards[].weight": FINITE,
    "rewards[].frames": AT_LEAST_1._replace(hint="leave it out for the reward's own"),
    "data.num_workers": NON_NEGATIVE,
    "data.sample_fps": POSITIVE._replace(hint="leave it out for video.fps"),
    "train.max_steps": AT_LEAST_1, "train.seed": SEED, "train.batch_size": AT_LEAST_1,
    "train.learning_rate": POSITIVE,
    "train.lr_warmup_steps": NON_NEGATIVE._replace(hint="0 = no warm-up"),
    "train.weight_decay": NON_NEGATIVE, "train.adam_eps": POSITIVE,
    "train.grad_clip": NON_NEGATIVE._replace(hint="0 turns clipping off"),
    "train.checkpoint_every": AT_LEAST_1, "train.keep_checkpoints": AT_LEAST_1, "train.max_nonfinite": AT_LEAST_1,
    "train.decode_chunk": NON_NEGATIVE._replace(hint="0 decodes all frames at once"),
    "train.num_threads": NON_NEGATIVE._replace(hint="0 = torch's default"),
    # 0 is no guidance in the LCM form (cond + w (cond - uncond)) the student is trained with; below 0 is not
    "sample.steps": AT_LEAST_1, "sample.guidance": NON_NEGATIVE, "sample.seed": SEED,
}

#: what ``model.device`` may be: the run asks accelerate for its device unless it is cpu (one GPU per process)
DEVICES = ("auto", "cpu", "cuda", "mps")
#: what a folder's captions file may be; without data.captions the first of these in data.path is read
CAPTION_FILES = ("captions.csv", "captions.jsonl", "captions.tsv")


def describe(bound: Bound, integer: bool) -> str:
    """``at least 1``, ``> 0``, ``in [0, 1)``, ... (floats also ``finite``)."""
    low, high = bound.low, bound.high
    if low is not None and high is not None:
        text = f"in {'(' if bound.low_open else '['}{low:g}, {high:g}{')' if bound.high_open else ']'}"
    elif low is not None:
        text = f"{'> ' if bound.low_open else 'at least '}{low:g}"
    elif high is not None:
        text = f"{'< ' if bound.high_open else 'at most '}{high:g}"
    else:
        text = ""
    if integer:
        return text or "an integer"
    return f"finite and {text}" if text else "finite"


def check_number(key: str, value: float | None, bound: Bound, default: Any = None) -> None:
    """``value`` finite and within ``bound`` (None passes: an optional number left out), else a ConfigError that
    names ``key`` and says what to do (the bound's hint, else the default)."""
    if value is None:
        return
    inside = (isinstance(value, int) or math.isfinite(value)) and not (
        (bound.low is not None and (value <= bound.low if bound.low_open else value < bound.low))
        or (bound.high is not None and (value >= bound.high if bound.high_open else value > bound.high)))
    if not inside:
        todo = bound.hint or (f"e.g. {default} (the default)" if default is not None else "")
        raise ConfigError(f"{key} must be {describe(bound, isinstance(value, int))} (got {value})"
                          + (f"; {todo}" if todo else ""))


def numbers(obj: Any, key: str = "", rule: str = "") -> Iterator[tuple[str, str, Any, Any]]:
    """(dotted key, :data:`BOUNDS` key, value, default) of every int / float field in the dataclass tree ``obj``;
    a list's items are ``key[i]`` (rule ``key[]``); an optional number left out (None) is skipped."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        k, r = f"{key}{f.name}", f"{rule}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from numbers(value, k + ".", r + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    yield from numbers(item, f"{k}[{i}].", f"{r}[].")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield k, r, value, None if f.default is dataclasses.MISSING else f.default


def check_values(recipe: Any) -> None:
    """Every value of a :class:`~t2vturbo.config.Recipe` that the run would refuse, before anything loads: the
    numbers (:data:`BOUNDS`), then the rules between keys. Raises a ConfigError for the first problem found."""
    for key, rule, value, default in numbers(recipe):
        check_number(key, value, BOUNDS.get(rule, FINITE), default)
    m, d, t, s = recipe.model, recipe.distill, recipe.train, recipe.sample
    if not m.teacher:
        raise ConfigError("model.teacher is empty; name a teacher: tiny, a model folder or a hub id")
    if m.device not in DEVICES:
        todo = (f"the run uses one GPU per process: pick it with CUDA_VISIBLE_DEVICES={m.device[5:]} and set "
                "model.device=cuda" if m.device.startswith("cuda:") else "auto picks cuda when there is one")
        raise ConfigError(f"model.device must be one of {', '.join(DEVICES)} (got {m.device!r}); {todo}")
    if m.dtype != "float32" and t.mixed_precision == "no":
        raise ConfigError(f"model.dtype {m.dtype} needs train.mixed_precision "
                          f"{'bf16' if m.dtype == 'bfloat16' else 'fp16'} (the LoRA weights train in fp32), or "
                          "set model.dtype=float32")
    if not recipe.lora.target_modules:
        raise ConfigError("lora.target_modules is empty; use all, or a list of module names")
    n, total = d.num_ddim_timesteps, d.num_train_timesteps
    if total % n:
        raise ConfigError(f"distill.num_ddim_timesteps ({n}) must divide distill.num_train_timesteps ({total}); "
                          f"pick e.g. {50 if total % 50 == 0 else 'a divisor of it'}")
    if d.skip >= total:
        raise ConfigError(f"distill.skip ({d.skip}) must be below distill.num_train_timesteps ({total}); "
                          f"one solver step is {total // n}")
    if d.w_min > d.w_max:
        raise ConfigError(f"distill.w_min ({d.w_min}) is above distill.w_max ({d.w_max}); swap them")
    grid = min(n, total // 2)  # multistep consistency sampling takes at most half the training timesteps
    if s.steps > grid:
        raise ConfigError(f"sample.steps must be in 1-{grid} (the solver grid, distill.num_ddim_timesteps); "
                          f"got {s.steps}")
    for i, r in enumerate(recipe.rewards):
        if not r.name:
            raise ConfigError(f"rewards[{i}].name is required: a reward name (hpsv2.1, viclip, tiny-image, ...) "
                              "or module.path:factory")
        from .names import torch_dtype  # (torch; only for a recipe with rewards)

        torch_dtype(r.dtype, f"rewards[{r.name}].dtype")  # named by the reward, as the run names it
    data = recipe.data
    if data.source == "tiny-world":
        return
    if not data.path:
        what = {"folder": f"FOLDER (its videos and a {' / '.join(CAPTION_FILES)}, or NAME.txt captions)",
                "webdataset": "'shards/{00000..00099}.tar' (tar shards of mp4 + txt/json)",
                "latents": "DIR (a dataset written by `t2vturbo prepare RECIPE --out DIR`)"}[data.source]
        raise ConfigError(f"data.path is required when data.source is '{data.source}': set data.path={what}")
    if data.captions is not None and Path(data.captions).suffix not in (".csv", ".tsv", ".jsonl"):
        raise ConfigError(f"data.captions {data.captions} must be a .csv, .tsv or .jsonl file (columns path, caption)")


def looks_like_path(spec: str) -> bool:
    """Whether a model / weight spec names a local file or folder rather than a hub id or a built-in name."""
    return spec.startswith(("/", "./", "../", "~")) or spec.endswith((".ckpt", ".pt", ".pth", ".safetensors"))


def missing_files(recipe: Any) -> list[str]:
    """Problems with the files a recipe names (each one line, naming the dotted key): the real run refuses each,
    the dry run lists them all."""
    problems = []
    if looks_like_path(recipe.model.teacher) and not Path(recipe.model.teacher).expanduser().exists():
        problems.append(f"model.teacher: {recipe.model.teacher} does not exist")
    for i, r in enumerate(recipe.rewards):
        if r.checkpoint and not Path(r.checkpoint).expanduser().exists():
            problems.append(f"rewards[{i}].checkpoint: file not found: {r.checkpoint}")
    data = recipe.data
    if data.source == "folder" and data.path:
        root = Path(data.path).expanduser()
        if not root.is_dir():
            problems.append(f"data.path: folder not found: {data.path}")
        if data.captions is not None:
            if not Path(data.captions).expanduser().is_file():
                problems.append(f"data.captions: file not found: {data.captions}")
        elif root.is_dir() and not any((root / name).is_file() for name in CAPTION_FILES):
            from .data import caption_sidecars

            if not any(side for _, side in caption_sidecars(root)):
                problems.append(f"data.path {data.path} has no {', '.join(CAPTION_FILES[:-1])} or "
                                f"{CAPTION_FILES[-1]} and no video with a caption beside it (NAME.txt next to "
                                "NAME.mp4); add a table (columns path, caption), set data.captions=FILE, or write "
                                "the sidecars")
    if data.source == "webdataset" and data.path:
        from .webdata import shard_problem

        try:
            problem = shard_problem(data.path)
        except ConfigError as err:
            problem = str(err)
        if problem:
            problems.append(problem)
    if data.source == "latents" and data.path:
        from .latents import INDEX_FILE

        if not (Path(data.path).expanduser() / INDEX_FILE).is_file():
            problems.append(f"data.path: {data.path} has no {INDEX_FILE}; write it with `t2vturbo prepare RECIPE "
                            f"--out {data.path}` (or finish an interrupted prepare by running it again)")
    return problems
